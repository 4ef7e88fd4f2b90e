"""OPT (``opt``): ``model.decoder.layers``, biased ``self_attn.{q,k,v,out}_proj`` and ``fc1``/``fc2`` on the
decoder layer itself (there is no ``mlp`` sub-module), multi-head attention (one KV head per head).

What ``OPTAttention.forward`` reads: ``self.num_heads`` and ``self.head_dim`` (attributes, updated by
:meth:`~optimum_slimgpt.families.base.FamilyAdapter.set_attention_sizes`; ``head_dim`` does not change),
``self.scaling`` (``head_dim ** -0.5``, unchanged) and ``self.config._attn_implementation``. No size is
read from the config in the forward. ``embed_dim`` (the hidden size) is not pruned.

Parameter counting: a head owns its ``q``/``k``/``v`` rows and biases and its ``out_proj`` columns; a
channel owns its ``fc1`` row and bias and its ``fc2`` column; ``out_proj.bias`` and ``fc2.bias`` are
fixed parameters.
"""

from __future__ import annotations

from .base import FamilyAdapter
from .registry import register_family

__all__ = ["OPTAdapter"]


@register_family
class OPTAdapter(FamilyAdapter):
    name = "opt"
    model_types = ("opt",)
    blocks_path = "model.decoder.layers"
    attn_path = "self_attn"
    mlp_path = ""  # fc1/fc2 live on the decoder layer
    q_names = ("q_proj",)
    kv_names = ("k_proj", "v_proj")
    o_name = "out_proj"
    channel_in_names = ("fc1",)
    channel_out_name = "fc2"
    mlp_norm_name = None  # fc1/fc2 run on a flattened view, with the norm before or after: full forwards

    def prune_heads(self, block, config, kept_heads: list[int], kept_kv_heads: list[int]) -> None:
        if list(kept_heads) != list(kept_kv_heads):
            raise ValueError("OPT attention is multi-head (one KV head per query head): kept_kv_heads must equal "
                             f"kept_heads, got {list(kept_kv_heads)} vs {list(kept_heads)}")
        super().prune_heads(block, config, kept_heads, kept_kv_heads)

    def set_attention_sizes(self, block, num_heads: int, num_kv_heads: int) -> None:
        self.attention(block).num_heads = num_heads  # the only size OPTAttention.forward reads
