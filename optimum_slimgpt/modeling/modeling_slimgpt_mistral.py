# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Mistral: each decoder layer is transformers' ``MistralDecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
siblings.
"""

from transformers.models.mistral.modeling_mistral import MistralDecoderLayer, MistralForCausalLM, MistralModel

from .configuration_slimgpt_mistral import SlimGPTMistralConfig
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTMistralModel(SlimGPTBaseModelMixin, MistralModel):
    config_class = SlimGPTMistralConfig
    _slimgpt_decoder_layer_class = MistralDecoderLayer


class SlimGPTMistralForCausalLM(SlimGPTCausalLMMixin, MistralForCausalLM):
    config_class = SlimGPTMistralConfig
    _slimgpt_base_model_class = SlimGPTMistralModel


SlimGPTMistralModel.register_for_auto_class("AutoModel")
SlimGPTMistralForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTMistralModel", "SlimGPTMistralForCausalLM"]
