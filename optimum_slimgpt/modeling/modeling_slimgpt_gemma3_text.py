# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Gemma 3 (text-only, ``gemma3_text``): each decoder layer is transformers'
``Gemma3DecoderLayer`` built from its own layer config (heads, KV heads and FFN width per layer;
``head_dim`` global).

``q_norm``/``k_norm`` act on ``head_dim`` and are shared by all heads, so they are unchanged; the per-type
RoPE (sliding/full) and the soft-capping are global.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``torch``, ``transformers`` and
its siblings.
"""

from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer, Gemma3ForCausalLM, Gemma3TextModel

from .configuration_slimgpt_gemma3_text import SlimGPTGemma3TextConfig
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTGemma3TextModel(SlimGPTBaseModelMixin, Gemma3TextModel):
    config_class = SlimGPTGemma3TextConfig
    _slimgpt_decoder_layer_class = Gemma3DecoderLayer


class SlimGPTGemma3TextForCausalLM(SlimGPTCausalLMMixin, Gemma3ForCausalLM):
    config_class = SlimGPTGemma3TextConfig
    _slimgpt_base_model_class = SlimGPTGemma3TextModel


SlimGPTGemma3TextModel.register_for_auto_class("AutoModel")
SlimGPTGemma3TextForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTGemma3TextModel", "SlimGPTGemma3TextForCausalLM"]
