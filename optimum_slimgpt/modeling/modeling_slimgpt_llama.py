# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Llama: each decoder layer is transformers' ``LlamaDecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
siblings.
"""

from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel

from .configuration_slimgpt_llama import SlimGPTLlamaConfig
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTLlamaModel(SlimGPTBaseModelMixin, LlamaModel):
    config_class = SlimGPTLlamaConfig
    _slimgpt_decoder_layer_class = LlamaDecoderLayer


class SlimGPTLlamaForCausalLM(SlimGPTCausalLMMixin, LlamaForCausalLM):
    config_class = SlimGPTLlamaConfig
    _slimgpt_base_model_class = SlimGPTLlamaModel


SlimGPTLlamaModel.register_for_auto_class("AutoModel")
SlimGPTLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTLlamaModel", "SlimGPTLlamaForCausalLM"]
