# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Mistral (``model_type="slimgpt_mistral"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.mistral.configuration_mistral import MistralConfig

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTMistralConfig(SlimGPTConfigMixin, MistralConfig):
    model_type = "slimgpt_mistral"
    slimgpt_base_model_type = "mistral"


SlimGPTMistralConfig.register_for_auto_class()

__all__ = ["SlimGPTMistralConfig"]
