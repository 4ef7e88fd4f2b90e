# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Llama (``model_type="slimgpt_llama"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.llama.configuration_llama import LlamaConfig

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTLlamaConfig(SlimGPTConfigMixin, LlamaConfig):
    model_type = "slimgpt_llama"
    slimgpt_base_model_type = "llama"


SlimGPTLlamaConfig.register_for_auto_class()

__all__ = ["SlimGPTLlamaConfig"]
