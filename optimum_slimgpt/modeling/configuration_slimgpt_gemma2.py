# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Gemma 2 (``model_type="slimgpt_gemma2"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.gemma2.configuration_gemma2 import Gemma2Config

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTGemma2Config(SlimGPTConfigMixin, Gemma2Config):
    model_type = "slimgpt_gemma2"
    slimgpt_base_model_type = "gemma2"


SlimGPTGemma2Config.register_for_auto_class()

__all__ = ["SlimGPTGemma2Config"]
