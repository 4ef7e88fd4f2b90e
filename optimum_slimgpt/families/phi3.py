"""Phi-3 (``phi3``): fused ``qkv_proj`` and ``gate_up_proj``.

* ``self_attn.qkv_proj`` rows: ``[q heads (H·d) | k heads (K·d) | v heads (K·d)]``; ``o_proj`` columns: the
  ``H`` query heads.
* ``mlp.gate_up_proj`` rows: ``[gate (I) | up (I)]`` (``forward`` does ``chunk(2, -1)``); one FFN channel
  ``c`` is the pair of rows ``c`` and ``I + c`` plus column ``c`` of ``mlp.down_proj``.

``Phi3Attention.forward`` splits the fused output with ``self.config.num_attention_heads * head_dim``, read
from the config at every call: the attention module is a ``config_view`` module, which gets a per-layer view
of the shared config (everything else, e.g. ``_attn_implementation``, is still read live from it).
"""

from __future__ import annotations

from .base import BlockLayout, FamilyAdapter
from .registry import register_family

__all__ = ["Phi3Adapter"]


@register_family
class Phi3Adapter(FamilyAdapter):
    """Phi-3 / Phi-3.5 / Phi-4-mini text models (``Phi3ForCausalLM``)."""

    name = "phi3"
    model_types = ("phi3",)
    layout = BlockLayout(q_proj=(), kv_proj=(), qkv_proj="qkv_proj", channel_in=(), gate_up_proj="gate_up_proj",
                         config_view=("self_attn",))
