"""Phi-3 (``phi3``): fused ``qkv_proj`` and ``gate_up_proj``.

Layout (transformers ``Phi3Attention``/``Phi3MLP``):

* ``self_attn.qkv_proj`` rows: ``[q heads (H·d) | k heads (K·d) | v heads (K·d)]``; ``self_attn.o_proj``
  columns: the ``H`` query heads.
* ``mlp.gate_up_proj`` rows: ``[gate (I) | up (I)]`` (``forward`` does ``chunk(2, -1)``); one FFN channel
  ``c`` is the pair of rows ``c`` and ``I + c`` plus column ``c`` of ``mlp.down_proj``.

``Phi3Attention.forward`` splits the fused output with ``self.config.num_attention_heads * head_dim``
(read from the config at every call), ``self.num_key_value_heads`` and ``self.head_dim``. After pruning,
that config value must be per-layer: :meth:`Phi3Adapter.set_attention_sizes` gives the attention module
a :class:`~optimum_slimgpt.families.base.LayerConfigView` of the shared config that answers
``num_attention_heads``/``num_key_value_heads`` with the layer's own sizes (everything else, e.g.
``_attn_implementation`` and ``sliding_window``, is still read live from the shared config).
"""

from __future__ import annotations

import torch
from torch import nn

from ..solvers.schedule import LayerGeometry
from .base import FamilyAdapter, HeadLayout, LayerConfigView, _numel, slice_linear
from .registry import register_family

__all__ = ["Phi3Adapter"]


def _bias_rows(lin: nn.Linear) -> int:
    return 1 if lin.bias is not None else 0


@register_family
class Phi3Adapter(FamilyAdapter):
    """Phi-3 / Phi-3.5 / Phi-4-mini text models (``Phi3ForCausalLM``).

    ``q_names``/``channel_in_names`` name the *fused* linears (their rows are not one head / channel
    each); ``kv_names`` is empty. Everything that depends on the row layout is overridden here.
    """

    name = "phi3"
    model_types = ("phi3",)
    q_names = ("qkv_proj",)
    kv_names = ()
    o_name = "o_proj"
    channel_in_names = ("gate_up_proj",)
    channel_out_name = "down_proj"
    qkv_name = "qkv_proj"
    gate_up_name = "gate_up_proj"

    # ------------------------------------------------------------------ structure
    def qkv_proj(self, block: nn.Module) -> nn.Linear:
        return getattr(self.attention(block), self.qkv_name)

    def gate_up_proj(self, block: nn.Module) -> nn.Linear:
        return getattr(self.mlp(block), self.gate_up_name)

    def head_layout(self, block: nn.Module, config) -> HeadLayout:
        attn = self.attention(block)
        hd = int(getattr(attn, "head_dim", 0) or getattr(config, "head_dim", 0)
                 or config.hidden_size // config.num_attention_heads)
        q_rows = self.attn_out_proj(block).in_features
        kv_rows = self.qkv_proj(block).out_features - q_rows
        if q_rows % hd or kv_rows <= 0 or kv_rows % (2 * hd):
            raise ValueError(f"qkv_proj has {q_rows + kv_rows} rows and o_proj {q_rows} columns: not a "
                             f"[q | k | v] layout with head_dim {hd}")
        return HeadLayout(q_rows // hd, kv_rows // (2 * hd), hd)

    def head_in_weights(self, block: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        w = self.qkv_proj(block).weight
        q_rows = self.attn_out_proj(block).in_features
        kv_rows = (w.shape[0] - q_rows) // 2
        return [w[:q_rows]], [w[q_rows:q_rows + kv_rows], w[q_rows + kv_rows:]]

    def num_channels(self, block: nn.Module) -> int:
        return self.mlp_out_proj(block).in_features

    def channel_in_weights(self, block: nn.Module) -> list[torch.Tensor]:
        gu = self.gate_up_proj(block).weight
        n = self.num_channels(block)
        return [gu[:n], gu[n:]]

    def geometry(self, block: nn.Module, config) -> LayerGeometry:
        lay = self.head_layout(block, config)
        hd = lay.head_dim
        qkv, o = self.qkv_proj(block), self.attn_out_proj(block)
        gu, down = self.gate_up_proj(block), self.mlp_out_proj(block)
        row = qkv.in_features + _bias_rows(qkv)
        per_head = row * hd + o.out_features * hd          # its q rows (+ bias) and o columns
        per_kv = 2 * row * hd                                # its k and v rows (+ biases)
        per_ch = 2 * (gu.in_features + _bias_rows(gu)) + down.out_features  # gate row, up row, down column
        fixed = _numel(o.bias) + _numel(down.bias)
        return LayerGeometry(lay.num_heads, lay.num_kv_heads, hd, self.num_channels(block), per_head, per_kv,
                             per_ch, fixed)

    # ------------------------------------------------------------------ surgery
    def _qkv_rows(self, lay: HeadLayout, kept_heads, kept_kv_heads, device) -> tuple[torch.Tensor, torch.Tensor]:
        hd = lay.head_dim
        q = self._head_rows(kept_heads, hd, device)
        kv = self._head_rows(kept_kv_heads, hd, device)
        k_off = lay.num_heads * hd
        v_off = k_off + lay.num_kv_heads * hd
        return q, torch.cat([q, kv + k_off, kv + v_off])

    def prune_heads(self, block: nn.Module, config, kept_heads: list[int], kept_kv_heads: list[int]) -> None:
        lay = self.head_layout(block, config)
        o = self.attn_out_proj(block)
        q_idx, qkv_idx = self._qkv_rows(lay, kept_heads, kept_kv_heads, o.weight.device)
        slice_linear(self.qkv_proj(block), rows=qkv_idx)
        slice_linear(o, cols=q_idx)
        self.set_attention_sizes(block, len(kept_heads), len(kept_kv_heads))

    def prune_channels(self, block: nn.Module, kept: list[int]) -> None:
        down = self.mlp_out_proj(block)
        n = down.in_features
        idx = torch.tensor(kept, dtype=torch.long, device=down.weight.device)
        slice_linear(self.gate_up_proj(block), rows=torch.cat([idx, idx + n]))
        slice_linear(down, cols=idx)
        self.set_mlp_size(block, len(kept))

    def set_attention_sizes(self, block: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        super().set_attention_sizes(block, num_heads, num_kv_heads)
        attn = self.attention(block)
        # Phi3Attention.forward reads config.num_attention_heads: give this layer its own view
        attn.config = LayerConfigView(attn.config, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads)

    # ------------------------------------------------------------------ export (optimum_slimgpt.saving)
    @torch.no_grad()
    def padded_block_state_dict(self, block: nn.Module, config, kv: int, rep: int, channels: int) -> dict:
        """The block's state dict zero-padded to ``kv·rep`` query heads, ``kv`` KV heads and ``channels``
        FFN channels (a plain ``Phi3DecoderLayer`` of those sizes computes the same function)."""
        lay = self.head_layout(block, config)
        hd, n_rep = lay.head_dim, lay.n_rep
        if lay.num_kv_heads > kv or n_rep > rep or self.num_channels(block) > channels:
            raise ValueError(f"cannot pad ({lay.num_heads}, {lay.num_kv_heads}, {self.num_channels(block)}) "
                             f"into ({kv * rep}, {kv}, {channels})")
        names = {id(m): n for n, m in block.named_modules()}
        qkv, o = self.qkv_proj(block), self.attn_out_proj(block)
        gu, down = self.gate_up_proj(block), self.mlp_out_proj(block)
        dev = qkv.weight.device
        q_slots = self._head_rows([(h // n_rep) * rep + h % n_rep for h in range(lay.num_heads)], hd, dev)
        kv_slots = self._head_rows(range(lay.num_kv_heads), hd, dev)
        Q, KV = kv * rep * hd, kv * hd
        qkv_index = torch.cat([q_slots, kv_slots + Q, kv_slots + Q + KV])
        ch = torch.arange(self.num_channels(block), device=dev)
        gu_index = torch.cat([ch, ch + channels])

        def scatter(t, dim, index, size):
            shape = list(t.shape)
            shape[dim] = size
            out = torch.zeros(shape, dtype=t.dtype, device=t.device)
            return out.index_copy_(dim, index.to(t.device), t)

        out = {}
        for lin, dim, index, size in ((qkv, 0, qkv_index, Q + 2 * KV), (o, 1, q_slots, Q),
                                      (gu, 0, gu_index, 2 * channels), (down, 1, ch, channels)):
            n = names[id(lin)]
            out[f"{n}.weight"] = scatter(lin.weight.detach(), dim, index, size)
            if lin.bias is not None:
                out[f"{n}.bias"] = scatter(lin.bias.detach(), 0, index, size) if dim == 0 else lin.bias.detach()
        return out
