# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Gemma 3 (text) (``model_type="slimgpt_gemma3_text"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTGemma3TextConfig(SlimGPTConfigMixin, Gemma3TextConfig):
    model_type = "slimgpt_gemma3_text"
    slimgpt_base_model_type = "gemma3_text"


SlimGPTGemma3TextConfig.register_for_auto_class()

__all__ = ["SlimGPTGemma3TextConfig"]
