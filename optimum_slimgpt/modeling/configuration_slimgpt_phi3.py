# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned Phi-3 (``model_type="slimgpt_phi3"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.phi3.configuration_phi3 import Phi3Config

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTPhi3Config(SlimGPTConfigMixin, Phi3Config):
    model_type = "slimgpt_phi3"
    slimgpt_base_model_type = "phi3"


SlimGPTPhi3Config.register_for_auto_class()

__all__ = ["SlimGPTPhi3Config"]
