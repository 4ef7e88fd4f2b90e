# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Per-layer pruned models of any family (remote code: standard library, torch and transformers only).

:func:`pruned_model_class` turns a family class into its pruned twin, ``SlimGPT<FamilyClass>``
(``SlimGPTLlamaModel``, ``SlimGPTLlamaForCausalLM``, ``SlimGPTGemma3ForCausalLM``...): the family's own class
with a mixin that builds every decoder layer from its layer config. The module-level ``__getattr__`` builds
the classes by name, which is how ``auto_map`` entries (``modeling_slimgpt.SlimGPTLlamaForCausalLM``) and pickles
resolve. Everything family-specific comes from the checkpoint's :class:`BlockLayout`
(``config.pruning_config["layout"]``), never from code here.

How a model is built: the family's ``__init__`` runs with ``num_hidden_layers`` temporarily 0 (nothing reads
the ambiguous per-layer globals and no full-size layer is allocated), then each layer is built with the
family's unchanged decoder-layer class from its own layer config. Its modules are then pointed at the *global*
config so that ``set_attn_implementation`` reaches them; modules whose forward reads a per-layer size from
``self.config`` (``layout.config_view``) get a :class:`LayerConfigView` instead. Families whose attention
derives ``head_dim`` from ``hidden_size / heads`` (``layout.full_size_attention``, OPT) are built with the
unpruned head count and their head projections shrunk.

Code outside transformers that reads the per-layer globals (some serving stacks) can set
``"allow_global_per_layer_attribute_access": true`` in ``config.json`` to get the unpruned (maximum) values.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import transformers
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from .configuration_slimgpt import BlockLayout, pruned_config_class, transformers_class


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if part:
            mod = getattr(mod, part)
    return mod


def set_submodule(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent), name, value)


class LayerConfigView:
    """A per-layer view of a shared model config: ``overrides`` are answered locally, every other attribute is
    read from the shared config *at access time* (so ``_attn_implementation``, ``sliding_window``... follow
    ``model.set_attn_implementation`` and later edits). Writes go to the overrides, never to the shared config.
    ``copy.deepcopy`` of a model keeps the view pointing at the copied model's config (same memo).
    """

    def __init__(self, base, **overrides) -> None:
        if isinstance(base, LayerConfigView):
            overrides = {**base.__dict__["_overrides"], **overrides}
            base = base.__dict__["_base"]
        self.__dict__["_base"] = base
        self.__dict__["_overrides"] = dict(overrides)

    @property
    def base_config(self):
        """The shared config this view reads through to."""
        return self.__dict__["_base"]

    @property
    def overrides(self) -> dict:
        return dict(self.__dict__["_overrides"])

    def rebind(self, base) -> "LayerConfigView":
        """Point the view at another shared config (e.g. after the model's config object is replaced)."""
        self.__dict__["_base"] = base
        return self

    def __getattr__(self, name: str):
        d = self.__dict__
        if "_base" not in d or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return d["_overrides"][name] if name in d["_overrides"] else getattr(d["_base"], name)

    def __setattr__(self, name: str, value) -> None:
        self.__dict__["_overrides"][name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self.__dict__["_overrides"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"LayerConfigView({type(self.__dict__['_base']).__name__}, overrides={self.__dict__['_overrides']})"


# ---------------------------------------------------------------------------------------------- layer sizes
def set_attention_sizes(attention: nn.Module, num_heads: int, num_kv_heads: int) -> None:
    """Update the size attributes an attention forward reads (transformers 5.x names, and older ones)."""
    if hasattr(attention, "num_key_value_groups"):
        attention.num_key_value_groups = num_heads // num_kv_heads
    for attr, val in (("num_heads", num_heads), ("num_attention_heads", num_heads),
                      ("num_key_value_heads", num_kv_heads), ("num_kv_heads", num_kv_heads)):
        if hasattr(attention, attr):
            setattr(attention, attr, val)


def set_mlp_size(mlp: nn.Module, channels: int) -> None:
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = channels


def size_overrides(layout: BlockLayout, sizes: dict) -> dict:
    """``{config attribute: value}`` of a layer's sizes given under canonical keys."""
    return {attr: sizes[k] for k, attr in layout.size_keys.items() if attr and sizes.get(k) is not None}


def point_layer_configs(layer: nn.Module, layout: BlockLayout, config, sizes: dict, old=()) -> None:
    """Point a decoder layer's modules at the shared ``config``: those holding one of ``old`` (the configs the
    layer was built with, or the model's previous config) get ``config``, views built on one of them are
    rebound, and the ``layout.config_view`` modules get a :class:`LayerConfigView` with the layer's ``sizes``."""
    for module in layer.modules():
        cur = module.__dict__.get("config")
        if cur is None:
            continue
        if isinstance(cur, LayerConfigView) and any(cur.base_config is o for o in old):
            cur.rebind(config)
        elif any(cur is o for o in old):
            module.config = config
    for path in layout.config_view:
        module = get_submodule(layer, path)
        module.config = LayerConfigView(module.config, **size_overrides(layout, sizes))


def add_zero_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)


def _shrink(parent: nn.Module, name: str, rows: int | None = None, cols: int | None = None) -> None:
    """Replace the linear ``parent.<name>`` by a fresh one with ``rows`` outputs / ``cols`` inputs."""
    old = getattr(parent, name)
    new = nn.Linear(cols or old.in_features, rows or old.out_features, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, name, new)


def build_decoder_layer(layer_cls: type, config, layer_idx: int, layout: BlockLayout) -> nn.Module:
    """Decoder layer ``layer_idx`` of a pruned model, with its own sizes (see the module docs)."""
    lc = config.layer_config(layer_idx)
    sizes = {k: getattr(lc, a) if a else None for k, a in layout.size_keys.items()}
    built_with = lc
    if layout.full_size_attention:
        heads = {a: config.global_value(a) for k, a in layout.size_keys.items() if a and k != "intermediate_size"}
        built_with = LayerConfigView(lc, **heads)
    layer = layer_cls(built_with, layer_idx)
    if layout.full_size_attention:
        attention, hd = get_submodule(layer, layout.attention), config.global_value("head_dim")
        h = sizes["num_attention_heads"]
        kv = sizes["num_key_value_heads"] or h
        for name in layout.q_proj:
            _shrink(attention, name, rows=h * hd)
        for name in layout.kv_proj:
            _shrink(attention, name, rows=kv * hd)
        _shrink(attention, layout.o_proj, cols=h * hd)
        set_attention_sizes(attention, h, kv)
    if getattr(config, "pruned_out_bias", False):
        for path in layout.out_projections:
            add_zero_bias(get_submodule(layer, path))
    point_layer_configs(layer, layout, config, sizes, old=(lc, built_with))
    return layer


# ---------------------------------------------------------------------------------------------- classes
def adopt_class(module: nn.Module, cls: type) -> None:
    """Turn ``module`` (an instance of a base class of ``cls``) into a ``cls`` instance, in place.

    transformers keys per-class state by the instance at ``__init__`` time (the ``_CAN_RECORD_REGISTRY`` behind
    ``output_hidden_states``/``output_attentions``): it is re-registered for the new class.
    """
    module.__class__ = cls
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # pragma: no cover - other transformers versions
        return
    _CAN_RECORD_REGISTRY[module] = getattr(module, "_can_record_outputs", None)


def _init_new_weights(model: nn.Module) -> None:
    """Initialise the freshly built layers (already-initialised modules are skipped by transformers)."""
    try:
        from transformers.modeling_utils import get_torch_context_manager_or_global_device

        on_meta = get_torch_context_manager_or_global_device() == torch.device("meta")
    except ImportError:  # pragma: no cover - other transformers versions
        on_meta = False
    if not on_meta and hasattr(model, "initialize_weights"):
        model.initialize_weights()


@contextlib.contextmanager
def _without_decoder_layers(config):
    """Build the family skeleton with zero decoder layers (restored afterwards, even on error)."""
    n = config.global_value("num_hidden_layers")
    config.num_hidden_layers = 0
    try:
        yield n
    finally:
        config.num_hidden_layers = n


def _decoder_layer_class(family_class: type, layout: BlockLayout) -> type:
    module = sys.modules[family_class.__module__]
    names = [layout.decoder_layer] if layout.decoder_layer else [n for n in dir(module) if n.endswith("DecoderLayer")]
    if len(names) != 1 or not isinstance(getattr(module, names[0], None), type):
        raise TypeError(f"cannot tell the decoder layer class of {family_class.__name__} in {module.__name__} "
                        f"(layout.decoder_layer={layout.decoder_layer!r})")
    return getattr(module, names[0])


class _StrictLoading:
    """``from_pretrained`` of a pruned class refuses a checkpoint whose tensors do not all match the per-layer
    architecture (missing, unexpected or mis-shaped): transformers would fill the gaps with random weights and
    only warn. ``allow_missing_weights=True`` restores transformers' lenient behaviour."""

    @classmethod
    def from_pretrained(cls, *args, allow_missing_weights: bool = False, output_loading_info: bool = False, **kwargs):
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        bad = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if not allow_missing_weights and any(bad.values()):
            what = "; ".join(f"{k.replace('_', ' ')} ({len(v)}): {', '.join(map(str, v[:4]))}"
                             + (" ..." if len(v) > 4 else "") for k, v in bad.items() if v)
            raise RuntimeError(f"the checkpoint does not match the pruned {cls.__name__} it describes ({what}); it is "
                               "incomplete or corrupt. Pass allow_missing_weights=True to load it anyway (the missing "
                               "weights are then random)")
        return (model, info) if output_loading_info else model


class SlimGPTBaseModelMixin(_StrictLoading):
    """Mixed in before the family base model (``LlamaModel``...): decoder layers with per-layer sizes."""

    slimgpt_family_class: type = None  # set by pruned_model_class

    def __init__(self, config, *args, **kwargs):
        with _without_decoder_layers(config):
            super().__init__(config, *args, **kwargs)
        self.slimgpt_build_layers(config)
        _init_new_weights(self)

    def slimgpt_build_layers(self, config) -> None:
        layout = config.block_layout()
        layer_cls = _decoder_layer_class(self.slimgpt_family_class, layout)
        layers = nn.ModuleList(build_decoder_layer(layer_cls, config, i, layout)
                               for i in range(config.global_value("num_hidden_layers")))
        set_submodule(self, layout.blocks.removeprefix(self.base_model_prefix + "."), layers)


class SlimGPTCausalLMMixin(_StrictLoading):
    """Mixed in before the family ``*ForCausalLM``: its base model becomes the pruned base model."""

    slimgpt_family_class: type = None

    def __init__(self, config, *args, **kwargs):
        with _without_decoder_layers(config):
            super().__init__(config, *args, **kwargs)
        base = getattr(self, self.base_model_prefix)
        adopt_class(base, pruned_model_class(type(base)))
        base.slimgpt_build_layers(config)
        _init_new_weights(self)


_MODEL_CLASSES: dict[type, type] = {}


def pruned_model_class(family_class: type) -> type:
    """``SlimGPT<FamilyClass>`` for a family base model or causal LM class (built once, then cached)."""
    cls = _MODEL_CLASSES.get(family_class)
    if cls is None:
        is_base = MODEL_MAPPING_NAMES.get(family_class.config_class.model_type) == family_class.__name__
        name = f"SlimGPT{family_class.__name__}"
        attrs = {"__module__": __name__, "__qualname__": name, "slimgpt_family_class": family_class,
                 "config_class": pruned_config_class(family_class.config_class)}
        mixin = SlimGPTBaseModelMixin if is_base else SlimGPTCausalLMMixin
        cls = _MODEL_CLASSES[family_class] = type(name, (mixin, family_class), attrs)
        cls.register_for_auto_class("AutoModel" if is_base else "AutoModelForCausalLM")
    return cls


def __getattr__(name: str):
    family_class = transformers_class(name, transformers.PreTrainedModel)
    if family_class is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return pruned_model_class(family_class)

