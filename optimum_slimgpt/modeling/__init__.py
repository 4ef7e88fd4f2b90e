"""Per-layer pruned model classes (config + modeling) that travel with checkpoints.

After pruning, every decoder layer may have its own number of query heads, KV heads and FFN channels.
The family classes cannot express that, so :func:`to_pruned_model` turns the in-memory model into the
family's *pruned* class:

- ``llama``: ``SlimGPTLlamaConfig``, ``SlimGPTLlamaModel``, ``SlimGPTLlamaForCausalLM``
- ``mistral``, ``qwen2``, ``qwen3``, ``phi3``, ``gemma2``: likewise (``SlimGPTMistral*``, ``SlimGPTQwen2*``, ...)
- ``gemma3_text``: ``SlimGPTGemma3TextConfig``, ``SlimGPTGemma3TextModel``, ``SlimGPTGemma3TextForCausalLM``
- ``opt``: ``SlimGPTOPTConfig``, ``SlimGPTOPTModel``, ``SlimGPTOPTForCausalLM`` (with ``SlimGPTOPTAttention``)

Each config is ``model_type="slimgpt_<family>"``, a subclass of the family config with the *original*
global sizes, an explicit global ``head_dim``, transformers' ``per_layer_config`` (every layer, every
key), ``pruning_config`` (provenance) and ``pruned_out_bias``. The classes live in self-contained files
(``configuration_slimgpt_<family>.py``, ``modeling_slimgpt_<family>.py`` and the two ``*_common.py``
siblings) that import only ``torch``/``transformers``; ``save_pretrained`` copies them next to the
weights and writes ``auto_map``, so ``from_pretrained(path, trust_remote_code=True)`` works where
``optimum_slimgpt`` is not installed. Importing ``optimum_slimgpt`` registers them with
``AutoConfig``/``AutoModel``/``AutoModelForCausalLM`` (no flag needed then).

Adding a family (e.g. ``phi3``)
--------------------------------
1. ``configuration_slimgpt_phi3.py``::

       from transformers.models.phi3.configuration_phi3 import Phi3Config
       from .configuration_slimgpt_common import SlimGPTConfigMixin

       class SlimGPTPhi3Config(SlimGPTConfigMixin, Phi3Config):
           model_type = "slimgpt_phi3"
           slimgpt_base_model_type = "phi3"
           # only if the config names the sizes differently (OPT: {"intermediate_size": "ffn_dim",
           # "num_key_value_heads": None, "num_attention_heads": "num_attention_heads"}):
           # slimgpt_per_layer_keys = {...}

       SlimGPTPhi3Config.register_for_auto_class()

2. ``modeling_slimgpt_phi3.py``::

       from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3ForCausalLM, Phi3Model
       from .configuration_slimgpt_phi3 import SlimGPTPhi3Config
       from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin, adopt_class

       class SlimGPTPhi3Model(SlimGPTBaseModelMixin, Phi3Model):
           config_class = SlimGPTPhi3Config
           _slimgpt_decoder_layer_class = Phi3DecoderLayer
           # _slimgpt_layers_path = "decoder.layers"           (OPT)
           # _slimgpt_out_bias_modules = ("self_attn.o_proj", "mlp.down_proj")   (default)

       class SlimGPTPhi3ForCausalLM(SlimGPTCausalLMMixin, Phi3ForCausalLM):
           config_class = SlimGPTPhi3Config
           _slimgpt_base_model_class = SlimGPTPhi3Model

       SlimGPTPhi3Model.register_for_auto_class("AutoModel")
       SlimGPTPhi3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

3. Add ``"phi3"`` to ``_BUILTIN_FAMILIES`` below (or call :func:`register_pruned_family` from anywhere).

Requirements on the family: its decoder layer builds every size from the config it receives, and its
forward reads no per-layer size from ``self.config`` (true for the Llama/Mistral/Qwen/Phi/Gemma/OPT
layouts in transformers 5.x). Families without a registered pruned class can still be exported as
``uniform`` or ``padded`` checkpoints (plain architecture) by :mod:`optimum_slimgpt.saving`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .configuration_slimgpt_common import CANONICAL_PER_LAYER_KEYS, SlimGPTConfigMixin
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin, adopt_class

logger = logging.getLogger(__name__)

__all__ = [
    "PrunedFamily",
    "SlimGPTConfigMixin",
    "SlimGPTBaseModelMixin",
    "SlimGPTCausalLMMixin",
    "get_pruned_family",
    "pruned_model_types",
    "register_pruned_family",
    "to_pruned_model",
    "out_bias_flags",
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
_BUILTIN_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "opt")


def register_pruned_family(config_class, model_class, causal_lm_class, *, override: bool = False,
                           register_auto_classes: bool = True) -> PrunedFamily:
    """Register the pruned classes of a family (keyed by ``config_class.slimgpt_base_model_type``).

    With ``register_auto_classes`` the classes are also registered with ``AutoConfig``, ``AutoModel`` and
    ``AutoModelForCausalLM`` so that ``AutoModelForCausalLM.from_pretrained(path)`` needs no
    ``trust_remote_code`` while this package is imported.
    """
    base = getattr(config_class, "slimgpt_base_model_type", "")
    if not base or not issubclass(config_class, SlimGPTConfigMixin):
        raise TypeError(f"{config_class.__name__} must mix in SlimGPTConfigMixin and set slimgpt_base_model_type")
    if not issubclass(model_class, SlimGPTBaseModelMixin) or not issubclass(causal_lm_class, SlimGPTCausalLMMixin):
        raise TypeError("model_class/causal_lm_class must mix in SlimGPTBaseModelMixin/SlimGPTCausalLMMixin")
    if base in _PRUNED_FAMILIES and not override and _PRUNED_FAMILIES[base].config_class is not config_class:
        raise ValueError(f"a pruned family is already registered for {base!r}; pass override=True")
    fam = PrunedFamily(base, config_class, model_class, causal_lm_class)
    _PRUNED_FAMILIES[base] = fam
    if register_auto_classes:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, causal_lm_class, exist_ok=True)
    # the files travel with save_pretrained (also set by the family files themselves)
    config_class.register_for_auto_class("AutoConfig")
    model_class.register_for_auto_class("AutoModel")
    causal_lm_class.register_for_auto_class("AutoModelForCausalLM")
    return fam


def _register_builtin() -> None:
    for fam in _BUILTIN_FAMILIES:
        cfg_mod = importlib.import_module(f"{__name__}.configuration_slimgpt_{fam}")
        mdl_mod = importlib.import_module(f"{__name__}.modeling_slimgpt_{fam}")
        cfg_cls = next(getattr(cfg_mod, n) for n in cfg_mod.__all__)
        base_cls, lm_cls = (getattr(mdl_mod, n) for n in mdl_mod.__all__)
        register_pruned_family(cfg_cls, base_cls, lm_cls, override=True)


def get_pruned_family(model_type: str) -> Optional[PrunedFamily]:
    """The pruned family of a base ``model_type`` (``"llama"``) or a pruned one (``"slimgpt_llama"``)."""
    if model_type in _PRUNED_FAMILIES:
        return _PRUNED_FAMILIES[model_type]
    for fam in _PRUNED_FAMILIES.values():
        if fam.model_type == model_type:
            return fam
    return None


def pruned_model_types() -> list[str]:
    return sorted(_PRUNED_FAMILIES)


# ---------------------------------------------------------------------------------------------- helpers
def _raw(config, key, default=None):
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    return getter(key, default) if getter is not None else getattr(config, key, default)


_DROP_KEYS = ("per_layer_config", "auto_map", "model_type", "transformers_version", "architectures",
              "pruning_config", "pruned_out_bias", "serialize_explicit_per_layer_config",
              "allow_global_per_layer_attribute_access", "_heterogeneity_spec")


def base_config_dict(config) -> dict:
    """The config's attributes as keyword arguments for a (pruned or plain) family config, without the
    per-layer/pruning keys. Global sizes are the stored global values."""
    d = config.to_dict()
    for k in _DROP_KEYS:
        d.pop(k, None)
    for k in CANONICAL_PER_LAYER_KEYS + ("head_dim", "ffn_dim"):
        v = _raw(config, k, None)
        if v is not None:
            d[k] = v
    return d


def _native_layer(fam: PrunedFamily, config) -> nn.Module:
    """Layer 0 of the family built on the meta device (what the family does without pruning)."""
    with torch.device("meta"):
        layer = fam.model_class._slimgpt_decoder_layer_class(config.layer_config(0), 0)
    return layer


def _get(root, path):
    mod = root
    for p in path.split("."):
        mod = getattr(mod, p)
    return mod


def out_bias_flags(model: nn.Module, fam: PrunedFamily, blocks, config) -> tuple[bool, list[str]]:
    """Whether any block has a bias on an output projection that the family does not have natively."""
    native = _native_layer(fam, config)
    extra = []
    for path in fam.model_class._slimgpt_out_bias_modules:
        if _get(native, path).bias is not None:
            continue
        if any(_get(b, path).bias is not None for b in blocks):
            extra.append(path)
    return bool(extra), extra


def _forget_dequantized_gguf(model: nn.Module) -> None:
    """A model loaded from a GGUF file with its weights dequantized (the legacy loader, or
    ``GgufConfig(dequantize=True)``; what CPU users get) still carries the GGUF quantizer, which makes
    ``save_pretrained`` refuse to save it. When every parameter is a plain floating-point tensor (no GGUF
    blocks left), the quantizer and ``quantization_config`` are dropped: the pruned model is an ordinary one."""
    q = getattr(model, "hf_quantizer", None)
    qc = getattr(q, "quantization_config", None)
    method = getattr(qc, "quant_method", None)
    if q is None or getattr(method, "value", method) != "gguf":
        return
    if not all(p.is_floating_point() for p in model.parameters()):
        return
    if hasattr(q, "remove_quantization_config"):
        q.remove_quantization_config(model)
    else:  # pragma: no cover - other transformers versions
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    logger.info("dropped the GGUF quantizer of the (dequantized) model: the pruned weights are plain tensors")


# ---------------------------------------------------------------------------------------------- main entry
def to_pruned_model(model: nn.Module, adapter, pruning_config: dict) -> nn.Module:
    """Turn an in-memory pruned model into its family's per-layer class, in place, and return it.

    * builds ``SlimGPT<Fam>Config``: original global sizes, explicit ``head_dim``, ``per_layer_config``
      from ``pruning_config["layers"]``, ``pruning_config``, ``pruned_out_bias``;
    * swaps ``model.__class__`` (and the inner base model's) to the pruned classes - no weights move;
    * points ``model.config``, the base model's and every sub-module's ``config`` at the new config.

    Families without a registered pruned class only get ``model.config.pruning_config`` (they can still
    be saved as ``uniform``/``padded`` checkpoints).
    """
    _forget_dequantized_gguf(model)
    old = model.config
    base_type = pruning_config.get("base_model_type") or old.model_type
    fam = get_pruned_family(base_type)
    blocks = adapter.get_blocks(model)
    if fam is None or not issubclass(fam.causal_lm_class, type(model)):
        why = (f"no pruned class is registered for model_type {base_type!r}" if fam is None
               else f"{type(model).__name__} is not the base class of {fam.causal_lm_class.__name__}")
        logger.warning("%s: keeping %s (only the 'uniform'/'padded' exports can save it)", why, type(model).__name__)
        old.pruning_config = pruning_config
        return model
    base_attr = fam.causal_lm_class.base_model_prefix
    inner = getattr(model, base_attr)
    if not issubclass(fam.model_class, type(inner)):
        raise TypeError(f"{type(inner).__name__} is not the base class of {fam.model_class.__name__}")

    layers = pruning_config["layers"]
    if len(layers) != len(blocks):
        raise ValueError(f"pruning_config has {len(layers)} layers but the model has {len(blocks)} blocks")
    d = base_config_dict(old)
    base_dims = pruning_config.get("base_dims") or {}
    keymap = fam.config_class.slimgpt_per_layer_keys
    for k, attr in keymap.items():
        if attr and base_dims.get(k) is not None:
            d[attr] = base_dims[k]
    d["head_dim"] = int(adapter.head_layout(blocks[0], old).head_dim)
    per_layer = {i: {attr: int(lay[k]) for k, attr in keymap.items() if attr} for i, lay in enumerate(layers)}
    name_or_path = getattr(old, "_name_or_path", "")
    attn_impl = getattr(old, "_attn_implementation_internal", None)
    new = fam.config_class(**d, per_layer_config=per_layer, pruning_config=pruning_config)
    new._name_or_path = name_or_path
    if attn_impl is not None:
        new._attn_implementation_internal = attn_impl

    extra_bias, paths = out_bias_flags(model, fam, blocks, new)
    if extra_bias:
        # a bias on some layers' output projections (SlimLLM compensation): every layer gets one (zeros elsewhere)
        from .modeling_slimgpt_common import _add_zero_bias

        for b in blocks:
            for path in fam.model_class._slimgpt_out_bias_modules:
                _add_zero_bias(_get(b, path))
        new.pruned_out_bias = True
        logger.info("output-projection biases found on %s: pruned_out_bias=True", ", ".join(paths))

    # the module shapes must match the recorded sizes
    for i, (b, want) in enumerate(zip(blocks, new.layer_sizes())):
        lay = adapter.head_layout(b, new)
        got = {"num_attention_heads": lay.num_heads, "num_key_value_heads": lay.num_kv_heads,
               "intermediate_size": adapter.num_channels(b)}
        for k, attr in keymap.items():
            if attr and got[k] != want[k]:
                raise ValueError(f"layer {i}: module has {k}={got[k]} but the pruning record says {want[k]}")

    adopt_class(model, fam.causal_lm_class)
    adopt_class(inner, fam.model_class)
    for i, b in enumerate(blocks):
        fam.model_class.slimgpt_point_layer_configs(b, new, i, old=old)
    for module in model.modules():
        if module.__dict__.get("config") is not None and (module.__dict__["config"] is old or module is model
                                                          or module is inner):
            module.config = new
    return model


_register_builtin()
