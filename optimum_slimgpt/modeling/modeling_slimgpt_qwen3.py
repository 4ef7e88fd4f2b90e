# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Qwen3: each decoder layer is transformers' ``Qwen3DecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

Qwen3's ``q_norm``/``k_norm`` act on ``head_dim`` (shared by all heads) and are unchanged by pruning.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
siblings.
"""

from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3Model

from .configuration_slimgpt_qwen3 import SlimGPTQwen3Config
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTQwen3Model(SlimGPTBaseModelMixin, Qwen3Model):
    config_class = SlimGPTQwen3Config
    _slimgpt_decoder_layer_class = Qwen3DecoderLayer


class SlimGPTQwen3ForCausalLM(SlimGPTCausalLMMixin, Qwen3ForCausalLM):
    config_class = SlimGPTQwen3Config
    _slimgpt_base_model_class = SlimGPTQwen3Model


SlimGPTQwen3Model.register_for_auto_class("AutoModel")
SlimGPTQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTQwen3Model", "SlimGPTQwen3ForCausalLM"]
