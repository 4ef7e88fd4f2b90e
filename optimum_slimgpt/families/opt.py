"""OPT (``opt``): ``model.decoder.layers``, biased ``self_attn.{q,k,v,out}_proj`` and ``fc1``/``fc2`` on the
decoder layer itself (there is no ``mlp`` sub-module), multi-head attention (one KV head per head).

``OPTAttention.forward`` reads ``self.num_heads``, ``self.head_dim`` and ``self.scaling`` (attributes; only
``num_heads`` changes) and no size from the config. Its constructor derives ``head_dim`` from
``hidden_size / num_attention_heads`` and makes every projection ``hidden x hidden``, so a pruned layer is built
at the unpruned head count and shrunk (``full_size_attention``); the FFN width is ``ffn_dim``. ``fc1``/``fc2``
run on a flattened view with the norm before or after, so the pruner always runs whole blocks (no MLP tail).
"""

from __future__ import annotations

from .base import BlockLayout, FamilyAdapter
from .registry import register_family

__all__ = ["OPTAdapter"]


@register_family
class OPTAdapter(FamilyAdapter):
    name = "opt"
    model_types = ("opt",)
    layout = BlockLayout(blocks="model.decoder.layers", mlp="", o_proj="out_proj", channel_in=("fc1",),
                         channel_out="fc2", mlp_norm=None, full_size_attention=True,
                         size_keys={"num_attention_heads": "num_attention_heads", "num_key_value_heads": None,
                                    "intermediate_size": "ffn_dim"})
