# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned OPT: each decoder layer is an ``OPTDecoderLayer`` built from its own layer config
(heads and ``ffn_dim`` per layer).

``OPTAttention`` derives ``head_dim`` from ``hidden_size // num_attention_heads`` and makes every
projection ``hidden x hidden``, so a layer with fewer heads cannot be expressed by the config alone:
:class:`SlimGPTOPTAttention` keeps the global ``head_dim`` (``config.head_dim``, written explicitly in the
pruned config) and sizes ``q/k/v_proj`` to ``num_heads·head_dim`` rows and ``out_proj`` to as many columns.
Its forward is OPT's own (it reads ``self.num_heads``/``self.head_dim``/``self.scaling`` only).
``fc1``/``fc2`` are sized from the layer's ``ffn_dim`` at construction.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``torch``, ``transformers`` and
its siblings.
"""

from torch import nn

from transformers.models.opt.modeling_opt import OPTAttention, OPTDecoderLayer, OPTForCausalLM, OPTModel

from .configuration_slimgpt_opt import SlimGPTOPTConfig
from .modeling_slimgpt_common import LayerConfigView, SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTOPTAttention(OPTAttention):
    """``OPTAttention`` with ``config.num_attention_heads`` heads of ``config.head_dim`` dimensions."""

    def __init__(self, config, layer_idx=None, **kwargs):
        heads, head_dim = config.num_attention_heads, config.head_dim
        super().__init__(LayerConfigView(config, num_attention_heads=config.hidden_size // head_dim), layer_idx,
                         **kwargs)
        self.config = config
        self.num_heads = heads
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        inner = heads * head_dim
        self.k_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.v_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.q_proj = nn.Linear(self.embed_dim, inner, bias=self.enable_bias)
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=self.enable_bias)


class SlimGPTOPTDecoderLayer(OPTDecoderLayer):
    """``OPTDecoderLayer`` whose attention is :class:`SlimGPTOPTAttention`."""

    def __init__(self, config, layer_idx=None):
        # OPT's own attention cannot be built with a head count that does not divide hidden_size
        super().__init__(LayerConfigView(config, num_attention_heads=config.hidden_size // config.head_dim), layer_idx)
        self.self_attn = SlimGPTOPTAttention(config=config, layer_idx=layer_idx)


class SlimGPTOPTModel(SlimGPTBaseModelMixin, OPTModel):
    config_class = SlimGPTOPTConfig
    _slimgpt_decoder_layer_class = SlimGPTOPTDecoderLayer
    _slimgpt_layers_path = "decoder.layers"
    _slimgpt_out_bias_modules = ("self_attn.out_proj", "fc2")


class SlimGPTOPTForCausalLM(SlimGPTCausalLMMixin, OPTForCausalLM):
    config_class = SlimGPTOPTConfig
    _slimgpt_base_model_class = SlimGPTOPTModel


SlimGPTOPTModel.register_for_auto_class("AutoModel")
SlimGPTOPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTOPTModel", "SlimGPTOPTForCausalLM"]
