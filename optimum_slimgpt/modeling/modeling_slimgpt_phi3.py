# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Phi-3: each decoder layer is transformers' ``Phi3DecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

``Phi3Attention.forward`` splits the fused ``qkv_proj`` output at ``self.config.num_attention_heads *
head_dim``, a per-layer size read from the config: the attention module of every layer therefore holds a
:class:`~modeling_slimgpt_common.LayerConfigView` of the global config that answers its own head counts.
The fused ``gate_up_proj`` is sized from the layer's ``intermediate_size`` at construction.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``torch``, ``transformers`` and
its siblings.
"""

from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer, Phi3ForCausalLM, Phi3Model

from .configuration_slimgpt_phi3 import SlimGPTPhi3Config
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTPhi3Model(SlimGPTBaseModelMixin, Phi3Model):
    config_class = SlimGPTPhi3Config
    _slimgpt_decoder_layer_class = Phi3DecoderLayer
    _slimgpt_layer_view_modules = ("self_attn",)


class SlimGPTPhi3ForCausalLM(SlimGPTCausalLMMixin, Phi3ForCausalLM):
    config_class = SlimGPTPhi3Config
    _slimgpt_base_model_class = SlimGPTPhi3Model


SlimGPTPhi3Model.register_for_auto_class("AutoModel")
SlimGPTPhi3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTPhi3Model", "SlimGPTPhi3ForCausalLM"]
