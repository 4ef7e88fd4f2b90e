"""Llama-layout families: separate q/k/v/o and gate/up/down projections (the default :class:`BlockLayout`).

Llama, Mistral, Qwen2 (q/k/v biases are sliced with their rows) and Qwen3 (``q_norm``/``k_norm`` act per
head dimension, so they are shared by all heads and stay as they are).
"""

from __future__ import annotations

from .base import FamilyAdapter
from .registry import register_family


@register_family
class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_types = ("llama",)


@register_family
class MistralAdapter(FamilyAdapter):
    name = "mistral"
    model_types = ("mistral",)


@register_family
class Qwen2Adapter(FamilyAdapter):
    name = "qwen2"
    model_types = ("qwen2",)


@register_family
class Qwen3Adapter(FamilyAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
