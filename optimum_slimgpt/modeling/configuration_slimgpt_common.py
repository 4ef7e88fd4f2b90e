# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Shared configuration logic of SlimGPT per-layer pruned models.

This file is *remote code*: ``save_pretrained`` copies it next to the weights (it is a single-dot
sibling import of every ``configuration_slimgpt_<family>.py``), and ``from_pretrained(...,
trust_remote_code=True)`` runs it where ``optimum_slimgpt`` is not installed. It must therefore import
nothing but the standard library, ``torch`` and ``transformers``.

A pruned checkpoint keeps the *original* (unpruned) global sizes (``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size``; upper bounds of every layer) and stores the sizes of
each layer with transformers' own ``per_layer_config`` schema (transformers >= 5.14), always written
for every layer and every key. ``head_dim`` is global and explicit (RoPE is built once per model).
Per-layer values are read with :meth:`SlimGPTConfigMixin.layer_config`; reading one of them on the
global config raises transformers' ``AmbiguousGlobalPerLayerAttributeError`` on purpose.
"""

from __future__ import annotations

import copy
from typing import Any

# The per-layer sizes, canonical names (those of the Llama family). A family whose config names them
# differently maps them with ``slimgpt_per_layer_keys`` (e.g. OPT: ``{"intermediate_size": "ffn_dim"}``).
CANONICAL_PER_LAYER_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def _has_native_per_layer_config(config_cls) -> bool:
    """transformers >= 5.14 (``HeterogeneousConfigMixin``): ``per_layer_config`` is a property."""
    return isinstance(getattr(config_cls, "per_layer_config", None), property)


class SlimGPTConfigMixin:
    """Mixed in *before* the family config class: ``class SlimGPTLlamaConfig(SlimGPTConfigMixin, LlamaConfig)``.

    Class attributes a family sets:
        model_type: ``"slimgpt_<family>"``.
        slimgpt_base_model_type: ``model_type`` of the unpruned family (``"llama"``).
        slimgpt_per_layer_keys: canonical key -> attribute of the family config (``None``: the family
            has no such size, e.g. no ``num_key_value_heads`` in OPT).

    Extra (non-field) attributes serialised in ``config.json``:
        pruning_config: provenance block written by the pruner (method, ratios, calibration, versions...).
        pruned_out_bias: the output projections listed by the model class (``o_proj``/``down_proj`` for
            the Llama layout) carry a bias in every layer even if the family has none (SlimLLM-style bias
            compensation). Layers that got no compensation store zeros.
    """

    # (no annotations here: the family config is a dataclass and these must not become fields)
    slimgpt_base_model_type = ""
    slimgpt_per_layer_keys = {k: k for k in CANONICAL_PER_LAYER_KEYS}
    pruning_config = None
    pruned_out_bias = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if _has_native_per_layer_config(type(self)):
            # transformers' default serialisation is sparse (overrides equal to the global value are dropped);
            # write every layer and every key so that readers without the native mechanism can rely on it.
            self.serialize_explicit_per_layer_config = True
        if self._raw_get("head_dim", None) is None:
            heads = self._raw_get("num_attention_heads", None)
            hidden = self._raw_get("hidden_size", None)
            if heads and hidden:
                self.head_dim = hidden // heads
        if self._raw_get("auto_map", None) is None:
            self.auto_map = self.default_auto_map()
        self.validate_per_layer()

    # ------------------------------------------------------------------ helpers
    @classmethod
    def default_auto_map(cls) -> dict:
        """``auto_map`` by convention: ``configuration_slimgpt_<fam>.SlimGPT<Fam>Config`` and
        ``modeling_slimgpt_<fam>.SlimGPT<Fam>{Model,ForCausalLM}``."""
        fam = cls.model_type[len("slimgpt_"):] if cls.model_type.startswith("slimgpt_") else cls.model_type
        prefix = cls.__name__[: -len("Config")] if cls.__name__.endswith("Config") else cls.__name__
        return {
            "AutoConfig": f"configuration_slimgpt_{fam}.{cls.__name__}",
            "AutoModel": f"modeling_slimgpt_{fam}.{prefix}Model",
            "AutoModelForCausalLM": f"modeling_slimgpt_{fam}.{prefix}ForCausalLM",
        }

    def _raw_get(self, key: str, default: Any = None) -> Any:
        """Read an attribute without the per-layer ambiguity guard (the global value)."""
        getter = getattr(self, "_getattr_without_heterogeneous_validation", None)
        if getter is not None:
            return getter(key, default)
        return getattr(self, key, default)

    def _raw_per_layer_overrides(self) -> dict[int, dict]:
        """Per-layer overrides as ``{layer: {attr: value}}`` (native spec or the raw dict of older transformers)."""
        spec = self.__dict__.get("_heterogeneity_spec")
        if spec is not None:
            return {int(k): dict(v) for k, v in spec.per_layer_overrides.items()}
        raw = self.__dict__.get("per_layer_config")
        if isinstance(raw, dict):
            return {int(k): dict(v) for k, v in raw.items()}
        return {}

    def _global_view(self):
        """A shallow copy that is homogeneous (global values readable), e.g. to run the family validators."""
        view = copy.copy(self)
        view.__dict__.pop("_heterogeneity_spec", None)
        view.__dict__.pop("per_layer_config", None)
        return view

    # ------------------------------------------------------------------ per-layer access
    def layer_config(self, layer_idx: int):
        """The configuration of decoder layer ``layer_idx`` (a shallow copy with that layer's sizes)."""
        n = self._raw_get("num_hidden_layers")
        if layer_idx < 0:
            layer_idx += n
        if not 0 <= layer_idx < n:
            raise IndexError(f"layer index {layer_idx} out of range for {n} layers")
        if _has_native_per_layer_config(type(self)):
            return self.per_layer_config[layer_idx]
        view = self._global_view()
        for attr, value in self._raw_per_layer_overrides().get(layer_idx, {}).items():
            if attr != "skip":
                setattr(view, attr, value)
        return view

    def layer_sizes(self) -> list[dict]:
        """``[{"num_attention_heads", "num_key_value_heads", "intermediate_size"}, ...]`` (canonical keys)."""
        out = []
        for i in range(self._raw_get("num_hidden_layers")):
            lc = self.layer_config(i)
            out.append({k: (getattr(lc, a, None) if a else None) for k, a in self.slimgpt_per_layer_keys.items()})
        return out

    # ------------------------------------------------------------------ validation
    def validate_per_layer(self) -> None:
        """Raise ``ValueError`` unless every layer has positive sizes and whole KV groups."""
        n = self._raw_get("num_hidden_layers")
        overrides = self._raw_per_layer_overrides()
        bad_idx = [i for i in overrides if not 0 <= i < (n or 0)]
        if bad_idx:
            raise ValueError(f"per_layer_config has layer indices {bad_idx} outside [0, {n})")
        head_dim = self._raw_get("head_dim", None)
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
            raise ValueError(f"{type(self).__name__} needs an explicit positive integer head_dim, got {head_dim!r}")
        keys = self.slimgpt_per_layer_keys
        for i, sizes in enumerate(self.layer_sizes()):
            for k, attr in keys.items():
                if attr is None:
                    continue
                v = sizes[k]
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"layer {i}: {attr} must be a positive integer, got {v!r}")
            h, kv = sizes.get("num_attention_heads"), sizes.get("num_key_value_heads")
            if keys.get("num_key_value_heads") and h % kv != 0:
                raise ValueError(
                    f"layer {i}: num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})"
                )

    def validate(self) -> None:
        """Run the family's own validators on the global (original, unpruned) sizes, then the per-layer checks.

        Overrides the ``validate`` that ``@strict`` installs on the family config: the family's
        ``validate_architecture`` would otherwise read an ambiguous per-layer global (and for Llama on
        transformers >= 5.4 reject per-layer head counts that do not divide ``hidden_size``, which is fine
        here since ``head_dim`` is explicit).
        """
        parent = getattr(super(), "validate", None)
        if parent is not None:
            view = self._global_view()
            getattr(super(SlimGPTConfigMixin, view), "validate")()
        self.validate_per_layer()
