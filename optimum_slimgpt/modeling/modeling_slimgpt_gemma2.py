# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""SlimGPT per-layer pruned Gemma 2: each decoder layer is transformers' ``Gemma2DecoderLayer`` built from its
own layer config (heads, KV heads and FFN width per layer; ``head_dim`` global).

Nothing else changes: the four RMSNorms per layer, ``query_pre_attn_scalar``, attention-logit and final
soft-capping, and the sliding/full ``layer_types`` are global and read from the global config.

Remote code: copied next to the weights by ``save_pretrained``; imports only ``torch``, ``transformers`` and
its siblings.
"""

from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2ForCausalLM, Gemma2Model

from .configuration_slimgpt_gemma2 import SlimGPTGemma2Config
from .modeling_slimgpt_common import SlimGPTBaseModelMixin, SlimGPTCausalLMMixin


class SlimGPTGemma2Model(SlimGPTBaseModelMixin, Gemma2Model):
    config_class = SlimGPTGemma2Config
    _slimgpt_decoder_layer_class = Gemma2DecoderLayer


class SlimGPTGemma2ForCausalLM(SlimGPTCausalLMMixin, Gemma2ForCausalLM):
    config_class = SlimGPTGemma2Config
    _slimgpt_base_model_class = SlimGPTGemma2Model


SlimGPTGemma2Model.register_for_auto_class("AutoModel")
SlimGPTGemma2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SlimGPTGemma2Model", "SlimGPTGemma2ForCausalLM"]
