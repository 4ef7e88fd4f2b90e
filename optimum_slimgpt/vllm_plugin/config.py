# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""The configs vLLM reads for ``slimgpt_<family>`` checkpoints (registered by the plugin, no remote code).

Each is the package's own per-layer config class (``SlimGPT<FamilyConfig>``) with two changes:

* reading it (``from_pretrained`` / ``from_dict``) runs :func:`~optimum_slimgpt.vllm_plugin.checks.check_config`, so a checkpoint of a
  family the plugin does not serve, or one without a pruning record, fails while vLLM reads its config, before
  any engine exists, with one clear error;
* a layer may have 0 query and KV heads, or 0 FFN channels (an attention or FFN removed whole): the plugin's
  model makes that part a no-op, where the transformers classes need at least one.

Imports transformers and the package, never vLLM.
"""

from __future__ import annotations

from .checks import check_config

_PLUGIN_CONFIGS: dict[str, type] = {}


def plugin_config_class(base_model_type: str) -> type:
    """The config class the plugin registers in vLLM for ``slimgpt_<base_model_type>`` (built once)."""
    cls = _PLUGIN_CONFIGS.get(base_model_type)
    if cls is not None:
        return cls
    from ..modeling import get_pruned_family

    family = get_pruned_family(base_model_type)
    if family is None:
        raise KeyError(f"optimum-slimgpt has no per-layer config for model_type {base_model_type!r}")
    base = family.config_class

    def from_dict(cls, config_dict, **kwargs):
        """Read a config (what ``from_pretrained`` calls), then check it for the plugin."""
        config = super(plugin, cls).from_dict(config_dict, **kwargs)
        check_config(config[0] if isinstance(config, tuple) else config)
        return config

    def validate_per_layer(self) -> None:
        """Sizes are checked by ``check_config`` (which also allows parts removed whole)."""

    plugin = type(base.__name__, (base,), {"__module__": __name__, "__qualname__": base.__name__,
                                           "from_dict": classmethod(from_dict), "validate_per_layer": validate_per_layer,
                                           "__doc__": f"{base.__name__} as the vLLM plugin reads it."})
    _PLUGIN_CONFIGS[base_model_type] = plugin
    return plugin


def __getattr__(name: str) -> type:
    """``SlimGPT<FamilyConfig>`` by name: how pickles of these configs (vLLM's engine processes) resolve."""
    import optimum_slimgpt  # noqa: F401  (registers the families)
    from ..modeling import get_pruned_family, pruned_model_types

    for base in pruned_model_types():
        if get_pruned_family(base).config_class.__name__ == name:
            return plugin_config_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
