# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of a SlimGPT per-layer pruned OPT (``model_type="slimgpt_opt"``).

Remote code: copied next to the weights by ``save_pretrained``; imports only ``transformers`` and its
sibling ``configuration_slimgpt_common``.
"""

from transformers.models.opt.configuration_opt import OPTConfig

from .configuration_slimgpt_common import SlimGPTConfigMixin


class SlimGPTOPTConfig(SlimGPTConfigMixin, OPTConfig):
    model_type = "slimgpt_opt"
    slimgpt_base_model_type = "opt"
    # OPT calls the FFN width ``ffn_dim`` and has no KV heads (multi-head attention)
    slimgpt_per_layer_keys = {"num_attention_heads": "num_attention_heads", "num_key_value_heads": None,
                              "intermediate_size": "ffn_dim"}


SlimGPTOPTConfig.register_for_auto_class()

__all__ = ["SlimGPTOPTConfig"]
