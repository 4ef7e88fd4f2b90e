"""Per-layer pruned model classes that travel with checkpoints, and turning a pruned model into one.

After pruning, every decoder layer may have its own number of query heads, KV heads and FFN channels. The
family classes cannot express that, so :func:`to_pruned_model` turns the in-memory model into the family's
*pruned* classes, ``SlimGPT<FamilyConfig>`` / ``SlimGPT<FamilyModel>`` / ``SlimGPT<FamilyForCausalLM>``
(``model_type="slimgpt_<family>"``). They are not written per family: two self-contained files,
:mod:`.configuration_slimgpt` and :mod:`.modeling_slimgpt` (importing only ``torch``/``transformers``), build
them from the family's own classes, driven by the :class:`BlockLayout` that every checkpoint carries.
``save_pretrained`` copies both files next to the weights and writes ``auto_map``, so
``from_pretrained(path, trust_remote_code=True)`` works where ``optimum_slimgpt`` is not installed; importing
``optimum_slimgpt`` registers the classes of every registered family with ``AutoConfig``/``AutoModel``/
``AutoModelForCausalLM`` (no flag needed then).

Requirement on a family: its decoder layer builds every size from the config it receives (or, with
``layout.full_size_attention``, only the attention's from ``hidden_size / heads``), and its forward reads no
per-layer size from ``self.config`` except in the ``layout.config_view`` modules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .configuration_slimgpt import (
    CANONICAL_PER_LAYER_KEYS,
    KNOWN_LAYOUTS,
    BlockLayout,
    PruningRecord,
    SlimGPTConfigMixin,
    pruned_config_class,
)
from .modeling_slimgpt import (
    LayerConfigView,
    SlimGPTBaseModelMixin,
    SlimGPTCausalLMMixin,
    adopt_class,
    build_decoder_layer,
    get_submodule,
    point_layer_configs,
    pruned_model_class,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BlockLayout",
    "LayerConfigView",
    "PrunedFamily",
    "PruningRecord",
    "SlimGPTBaseModelMixin",
    "SlimGPTCausalLMMixin",
    "SlimGPTConfigMixin",
    "base_config_dict",
    "UnusableModelError",
    "get_pruned_family",
    "mark_unusable",
    "pruned_model_types",
    "register_pruned_family",
    "to_pruned_model",
    "unusable_reason",
]


@dataclass(frozen=True)
class PrunedFamily:
    """The three pruned classes of one base family."""

    base_model_type: str
    config_class: type
    model_class: type
    causal_lm_class: type

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


_PRUNED_FAMILIES: dict[str, PrunedFamily] = {}


def register_pruned_family(base_model_type: str, layout: Optional[BlockLayout] = None) -> Optional[PrunedFamily]:
    """Build and register the pruned classes of a transformers family (``None`` if transformers has no config,
    base model and causal LM for ``base_model_type``). Called by the family registry for every family."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    if layout is not None:
        KNOWN_LAYOUTS[base_model_type] = layout
    if base_model_type in _PRUNED_FAMILIES:
        return _PRUNED_FAMILIES[base_model_type]
    names = (MODEL_MAPPING_NAMES.get(base_model_type), MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(base_model_type))
    if base_model_type not in CONFIG_MAPPING or None in names:
        return None
    base_cls, lm_cls = (getattr(transformers, n) for n in names)
    fam = PrunedFamily(base_model_type, pruned_config_class(CONFIG_MAPPING[base_model_type]),
                       pruned_model_class(base_cls), pruned_model_class(lm_cls))
    AutoConfig.register(fam.model_type, fam.config_class, exist_ok=True)
    AutoModel.register(fam.config_class, fam.model_class, exist_ok=True)
    AutoModelForCausalLM.register(fam.config_class, fam.causal_lm_class, exist_ok=True)
    _PRUNED_FAMILIES[base_model_type] = fam
    return fam


def get_pruned_family(model_type: str) -> Optional[PrunedFamily]:
    """The pruned family of a base ``model_type`` (``"llama"``) or a pruned one (``"slimgpt_llama"``)."""
    return _PRUNED_FAMILIES.get(model_type.removeprefix("slimgpt_"))


def pruned_model_types() -> list[str]:
    return sorted(_PRUNED_FAMILIES)


# ---------------------------------------------------------------------------------------------- integrity
_UNUSABLE = "_slimgpt_unusable"


class UnusableModelError(RuntimeError):
    """The model was left half-pruned by a failed run: its blocks no longer match any consistent architecture."""


def mark_unusable(model: nn.Module, reason: str, blocks: Optional[nn.ModuleList] = None) -> None:
    """Mark ``model`` as left inconsistent by a failed prune: its forward (and that of each of ``blocks``) raises
    :class:`UnusableModelError`, and :func:`~optimum_slimgpt.saving.save_pruned_model` and
    :meth:`~optimum_slimgpt.SlimGPTPruner.prune_model` refuse it. Reload the model to start again."""
    if unusable_reason(model) is not None:
        return
    message = (f"this model was left partially pruned by a failed prune ({reason}); it cannot be run, saved or "
               "pruned again: reload it from its checkpoint")

    def refuse(module, args):
        raise UnusableModelError(message)

    object.__setattr__(model, _UNUSABLE, message)
    for module in [model, *(blocks or [])]:
        module.register_forward_pre_hook(refuse)


def unusable_reason(model: nn.Module) -> Optional[str]:
    """Why ``model`` may not be used (see :func:`mark_unusable`), or ``None``."""
    return getattr(model, _UNUSABLE, None)


# ---------------------------------------------------------------------------------------------- helpers
_DROP_KEYS = ("per_layer_config", "auto_map", "model_type", "transformers_version", "architectures",
              "pruning_config", "pruned_out_bias", "serialize_explicit_per_layer_config",
              "allow_global_per_layer_attribute_access", "_heterogeneity_spec")


def _global(config, key):
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    return getter(key, None) if getter is not None else getattr(config, key, None)


def base_config_dict(config) -> dict:
    """The config's attributes as keyword arguments for a (pruned or plain) family config, without the
    per-layer/pruning keys. Global sizes are the stored global values."""
    d = config.to_dict()
    for k in _DROP_KEYS:
        d.pop(k, None)
    for k in CANONICAL_PER_LAYER_KEYS + ("head_dim", "ffn_dim"):
        if _global(config, k) is not None:
            d[k] = _global(config, k)
    return d


def _forget_dequantized_gguf(model: nn.Module) -> None:
    """A model loaded from a GGUF file with dequantized weights (what CPU users get) still carries the GGUF
    quantizer, which makes ``save_pretrained`` refuse it. When every parameter is a plain floating-point
    tensor, the quantizer and ``quantization_config`` are dropped: the pruned model is an ordinary one."""
    q = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
    if q is None or getattr(method, "value", method) != "gguf" or not all(p.is_floating_point() for p in model.parameters()):
        return
    q.remove_quantization_config(model)
    logger.info("dropped the GGUF quantizer of the (dequantized) model: the pruned weights are plain tensors")


def _native_out_biases(layer_cls, config, layout: BlockLayout) -> set[str]:
    """Output projections that carry a bias in the family itself (layer 0 built on the meta device)."""
    saved, config.pruned_out_bias = config.pruned_out_bias, False
    try:
        with torch.device("meta"):
            layer = build_decoder_layer(layer_cls, config, 0, layout)
    finally:
        config.pruned_out_bias = saved
    return {p for p in layout.out_projections if get_submodule(layer, p).bias is not None}


# ---------------------------------------------------------------------------------------------- main entry
def to_pruned_model(model: nn.Module, adapter, record: PruningRecord) -> nn.Module:
    """Turn an in-memory pruned model into its family's per-layer class, in place, and return it.

    Builds ``SlimGPT<Fam>Config`` (original global sizes, explicit ``head_dim``, ``per_layer_config`` from
    ``record.layers``, the record as ``pruning_config``, ``pruned_out_bias``), swaps ``model.__class__`` and the
    inner base model's to the pruned classes (no weights move) and points every module's ``config`` at it.
    Families without pruned classes only get the record (they save as ``uniform``/``padded`` checkpoints).
    """
    from .modeling_slimgpt import _decoder_layer_class, add_zero_bias

    _forget_dequantized_gguf(model)
    old = model.config
    layout = record.block_layout()
    blocks = adapter.get_blocks(model)
    fam = None if layout.text_config else get_pruned_family(record.base_model_type)
    if fam is None or not issubclass(fam.causal_lm_class, type(model)):
        why = (f"no per-layer class for model_type {record.base_model_type!r}" if fam is None
               else f"{type(model).__name__} is not the base class of {fam.causal_lm_class.__name__}")
        logger.warning("%s: keeping %s (only the 'uniform'/'padded' exports can save it)", why, type(model).__name__)
        old.pruning_config = record.to_dict()
        return model
    inner = getattr(model, fam.causal_lm_class.base_model_prefix)
    if len(record.layers) != len(blocks):
        raise ValueError(f"the pruning record has {len(record.layers)} layers but the model has {len(blocks)} blocks")
    d = base_config_dict(old)
    d.update({attr: record.base_dims[k] for k, attr in layout.size_keys.items() if attr and record.base_dims.get(k)})
    d["head_dim"] = int(adapter.head_layout(blocks[0], old).head_dim)
    per_layer = {i: {attr: int(lay[k]) for k, attr in layout.size_keys.items() if attr} for i, lay in enumerate(record.layers)}
    new = fam.config_class(**d, per_layer_config=per_layer, pruning_config=record.to_dict())
    new.name_or_path = old.name_or_path
    if getattr(old, "_attn_implementation_internal", None) is not None:
        new._attn_implementation_internal = old._attn_implementation_internal

    extra = {p for p in layout.out_projections if any(get_submodule(b, p).bias is not None for b in blocks)}
    extra -= _native_out_biases(_decoder_layer_class(fam.model_class.slimgpt_family_class, layout), new, layout)
    if extra:  # a bias on some layers' output projections (SlimLLM): every layer gets one (zeros elsewhere)
        for b in blocks:
            for path in layout.out_projections:
                add_zero_bias(get_submodule(b, path))
        new.pruned_out_bias = True
        logger.info("output-projection biases found on %s: pruned_out_bias=True", ", ".join(sorted(extra)))

    sizes = new.layer_sizes()
    for i, (b, want) in enumerate(zip(blocks, sizes)):  # the module shapes match the record
        got = adapter.block_sizes(b, new)
        bad = [k for k, attr in layout.size_keys.items() if attr and got[k] != want[k]]
        if bad:
            raise ValueError(f"layer {i}: module has {bad[0]}={got[bad[0]]} but the pruning record says {want[bad[0]]}")

    adopt_class(model, fam.causal_lm_class)
    adopt_class(inner, fam.model_class)
    for i, b in enumerate(blocks):
        point_layer_configs(b, layout, new, sizes[i] if layout.config_view else {}, old=(old,))
    for module in model.modules():
        if module.__dict__.get("config") is not None and (module.__dict__["config"] is old or module in (model, inner)):
            module.config = new
    return model
