# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Shared modeling logic of SlimGPT per-layer pruned models (remote code: stdlib, torch, transformers only).

A family's pruned classes are thin subclasses of the family's own classes::

    class SlimGPTLlamaModel(SlimGPTBaseModelMixin, LlamaModel):
        config_class = SlimGPTLlamaConfig
        _slimgpt_decoder_layer_class = LlamaDecoderLayer

    class SlimGPTLlamaForCausalLM(SlimGPTCausalLMMixin, LlamaForCausalLM):
        config_class = SlimGPTLlamaConfig
        _slimgpt_base_model_class = SlimGPTLlamaModel

How a model is built: the family's ``__init__`` runs with ``num_hidden_layers`` temporarily set to 0
(so nothing reads the ambiguous per-layer globals and no full-size layer is allocated), then each decoder
layer is built from its own layer config (``config.layer_config(i)``) with the family's unchanged
``<Family>DecoderLayer``. The sub-modules of a layer are then re-pointed at the *global* config so that
``set_attn_implementation`` still reaches them (the same trick as transformers' Step3p7); nothing in the
attention/MLP forward reads a per-layer size from the config (head counts come from tensor shapes,
``num_key_value_groups`` and ``head_dim`` are attributes set at construction).

Global per-layer attributes: the global config keeps the original sizes, but reading
``num_attention_heads``/``num_key_value_heads``/``intermediate_size`` on it raises transformers'
``AmbiguousGlobalPerLayerAttributeError`` (the sizes that vary are per-layer). Nothing needs
``allow_global_per_layer_attribute_access`` on transformers 5.23: building (skeleton without layers),
``from_pretrained``, ``save_pretrained`` (the config's ``validate`` is overridden), forward,
``output_hidden_states``, ``set_attn_implementation`` and ``generate`` with ``DynamicCache`` and
``StaticCache`` (both size their per-layer caches through ``config.per_layer_config``) were checked.
Code outside transformers that reads those globals (e.g. some serving stacks) can set
``"allow_global_per_layer_attribute_access": true`` in ``config.json`` to get the original (maximum)
values, which are upper bounds of every layer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _get_submodule(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if part:
            mod = getattr(mod, part)
    return mod


def _set_submodule(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get_submodule(root, parent) if parent else root, name, value)


@contextlib.contextmanager
def _without_decoder_layers(config):
    """Build the family skeleton with zero decoder layers (restored afterwards, even on error)."""
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    n = getter("num_hidden_layers") if getter is not None else config.num_hidden_layers
    config.num_hidden_layers = 0
    try:
        yield n
    finally:
        config.num_hidden_layers = n


def _add_zero_bias(linear: nn.Linear) -> None:
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)


def adopt_class(module: nn.Module, cls: type) -> None:
    """Turn ``module`` (an instance of a base class of ``cls``) into a ``cls`` instance, in place.

    transformers keys some per-class state by the class of the instance at ``__init__`` time (the
    ``_can_record_outputs`` registry behind ``output_hidden_states``/``output_attentions``); it is
    re-registered for the new class.
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


class LayerConfigView:
    """A per-layer view of a shared model config: ``overrides`` are answered locally, every other
    attribute is read from the shared config *at access time* (so ``_attn_implementation``,
    ``sliding_window``... follow ``model.set_attn_implementation`` and later edits).

    Used for the few modules whose forward reads a per-layer size from ``self.config`` (Phi-3's
    attention reads ``config.num_attention_heads`` to split the fused ``qkv_proj`` output). Writes go to
    the overrides, never to the shared config. ``copy.deepcopy`` of a model keeps the view pointing at
    the copied model's config (same memo).
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
        ov = d["_overrides"]
        if name in ov:
            return ov[name]
        return getattr(d["_base"], name)

    def __setattr__(self, name: str, value) -> None:
        self.__dict__["_overrides"][name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self.__dict__["_overrides"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"LayerConfigView({type(self.__dict__['_base']).__name__}, overrides={self.__dict__['_overrides']})"


class SlimGPTBaseModelMixin:
    """Mixed in before the family base model (``LlamaModel``...).

    Class attributes:
        _slimgpt_decoder_layer_class: the family decoder layer, built as ``cls(layer_config, layer_idx)``.
        _slimgpt_layers_path: dotted path of the decoder-layer ``ModuleList`` inside the base model.
        _slimgpt_out_bias_modules: dotted paths (inside a decoder layer) of the linears that get a bias
            when ``config.pruned_out_bias`` is set.
        _slimgpt_layer_view_modules: dotted paths (inside a decoder layer) of the modules whose forward
            reads a per-layer size from ``self.config`` (Phi-3's attention); they get a
            :class:`LayerConfigView` of the global config with that layer's sizes instead of the global one.
    """

    _slimgpt_decoder_layer_class = None
    _slimgpt_layers_path = "layers"
    _slimgpt_out_bias_modules = ("self_attn.o_proj", "mlp.down_proj")
    _slimgpt_layer_view_modules: tuple = ()

    @classmethod
    def slimgpt_point_layer_configs(cls, layer: nn.Module, config, layer_idx: int, old=None) -> None:
        """Point the sub-modules of a decoder layer at the global ``config``: those that hold ``old`` (the
        layer config they were built with, or the model's previous config) get ``config``, those listed in
        ``_slimgpt_layer_view_modules`` a view of it with the layer's per-layer sizes."""
        for module in layer.modules():
            cur = module.__dict__.get("config")
            if cur is None:
                continue
            if isinstance(cur, LayerConfigView) and cur.base_config is old:
                cur.rebind(config)
            elif cur is old:
                module.config = config
        if not cls._slimgpt_layer_view_modules:
            return
        layer_config = config.layer_config(layer_idx)
        overrides = {a: getattr(layer_config, a) for a in config.slimgpt_per_layer_keys.values() if a}
        for path in cls._slimgpt_layer_view_modules:
            _get_submodule(layer, path).config = LayerConfigView(config, **overrides)

    def __init__(self, config, *args, **kwargs):
        with _without_decoder_layers(config):
            super().__init__(config, *args, **kwargs)
        self._slimgpt_build_layers(config)
        _init_new_weights(self)

    def _slimgpt_build_layers(self, config) -> None:
        layer_cls = self._slimgpt_decoder_layer_class
        if layer_cls is None:
            raise TypeError(f"{type(self).__name__} does not set _slimgpt_decoder_layer_class")
        n = config._raw_get("num_hidden_layers")
        layers = nn.ModuleList()
        for i in range(n):
            layer_config = config.layer_config(i)
            layer = layer_cls(layer_config, i)
            if getattr(config, "pruned_out_bias", False):
                for path in self._slimgpt_out_bias_modules:
                    _add_zero_bias(_get_submodule(layer, path))
            self.slimgpt_point_layer_configs(layer, config, i, old=layer_config)
            layers.append(layer)
        _set_submodule(self, self._slimgpt_layers_path, layers)


class SlimGPTCausalLMMixin:
    """Mixed in before the family ``*ForCausalLM``.

    Class attributes:
        _slimgpt_base_model_class: the pruned base model class; the family ``__init__`` builds its own base
            model (e.g. ``LlamaModel``) without layers, which is then turned into this class.
    """

    _slimgpt_base_model_class = None

    def __init__(self, config, *args, **kwargs):
        with _without_decoder_layers(config):
            super().__init__(config, *args, **kwargs)
        base_cls = self._slimgpt_base_model_class
        base = getattr(self, self.base_model_prefix)
        if base_cls is None or not issubclass(base_cls, type(base)):
            raise TypeError(f"{type(self).__name__}._slimgpt_base_model_class must subclass {type(base).__name__}")
        adopt_class(base, base_cls)
        base._slimgpt_build_layers(config)
        _init_new_weights(self)
