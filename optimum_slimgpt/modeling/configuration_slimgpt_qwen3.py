# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Qwen3 (``model_type="slimgpt_qwen3"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.qwen3.configuration_qwen3 import Qwen3Config

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTQwen3Config(SlimGPTConfigMixin, Qwen3Config):
    model_type = "slimgpt_qwen3"
    slimgpt_base_model_type = "qwen3"


SlimGPTQwen3Config.register_for_auto_class()

__all__ = ["SlimGPTQwen3Config"]
