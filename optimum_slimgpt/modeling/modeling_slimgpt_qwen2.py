# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Qwen2: each decoder layer is transformers' ``Qwen2DecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

Qwen2's q/k/v biases are sliced with their rows by the pruner; ``o_proj`` has no bias.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
siblings.
"""

from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2Model

from .configuration_slimgpt_qwen2 import SlimGPTQwen2Config
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTQwen2Model(SlimGPTBaseModelMixin, Qwen2Model):
    config_class = SlimGPTQwen2Config
    _slimgpt_decoder_layer_class = Qwen2DecoderLayer


class SlimGPTQwen2ForCausalLM(SlimGPTCausalLMMixin, Qwen2ForCausalLM):
    config_class = SlimGPTQwen2Config
    _slimgpt_base_model_class = SlimGPTQwen2Model


SlimGPTQwen2Model.register_for_auto_class("AutoModel")
SlimGPTQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTQwen2Model", "SlimGPTQwen2ForCausalLM"]
