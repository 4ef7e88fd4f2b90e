# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Qwen2 (``model_type="slimgpt_qwen2"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.qwen2.configuration_qwen2 import Qwen2Config

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTQwen2Config(SlimGPTConfigMixin, Qwen2Config):
    model_type = "slimgpt_qwen2"
    slimgpt_base_model_type = "qwen2"


SlimGPTQwen2Config.register_for_auto_class()

__all__ = ["SlimGPTQwen2Config"]
