"""Model-family adapters: one generic adapter driven by each family's :class:`BlockLayout`.

The pruner only talks to a :class:`FamilyAdapter`. A family is supported by registering a subclass that
declares its layout (usually a few module names), never by ``if`` chains::

    from optimum_slimgpt.families import BlockLayout, FamilyAdapter, register_family

    @register_family
    class MyFamily(FamilyAdapter):
        name = "my_model"
        model_types = ("my_model",)
        layout = BlockLayout(blocks="transformer.h", o_proj="out_proj")

Everything that depends on where the rows and columns of a head or a channel are (parameter counts,
slicing, masking, zero-padding) reads the layout, including fused ``[q | k | v]`` and ``[gate | up]``
projections. Slicing and padding share one index map (:meth:`FamilyAdapter.head_index_map`,
:meth:`FamilyAdapter.channel_index_map`): slicing gathers the kept rows, padding scatters them into slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..modeling.configuration_slimgpt import BlockLayout
from ..modeling.modeling_slimgpt import (
    LayerConfigView,
    get_submodule,
    set_attention_sizes,
    set_mlp_size,
    size_overrides,
)
from ..solvers.schedule import LayerGeometry

__all__ = ["BlockLayout", "FamilyAdapter", "HeadLayout", "LayerConfigView", "slice_linear", "get_submodule"]


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads


def _numel(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel()


def _bias(lin: nn.Linear) -> int:
    return 0 if lin.bias is None else 1


def _rows(units: Sequence[int], size: int, device) -> torch.Tensor:
    """Row indices of ``units`` blocks of ``size`` rows each (heads: ``head_dim``; channels: 1)."""
    return torch.tensor([u * size + j for u in units for j in range(size)], dtype=torch.long, device=device)


@torch.no_grad()
def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs) and/or ``cols`` (inputs) of a linear layer, in place.

    The module object stays the same (hooks, accelerate wrappers and references survive); its
    ``weight``/``bias`` parameters are replaced and ``in_features``/``out_features`` updated.
    """
    w = linear.weight
    new = w.data if rows is None else w.data.index_select(0, rows.to(w.device))
    new = new if cols is None else new.index_select(1, cols.to(w.device))
    linear.weight = nn.Parameter(new.contiguous(), requires_grad=w.requires_grad)
    if linear.bias is not None and rows is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows.to(w.device)).contiguous(),
                                   requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


def _scatter(t: torch.Tensor, dim: int, index: torch.Tensor, size: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size
    return torch.zeros(shape, dtype=t.dtype, device=t.device).index_copy_(dim, index.to(t.device), t)


#: ``(linear, dim, index, size)``: along ``dim`` of ``linear``, the rows/columns at ``index`` of a layout in
#: which that dimension has ``size`` entries.
IndexMap = list[tuple[nn.Linear, int, torch.Tensor, int]]


class FamilyAdapter:
    """Describes one model family to the pruner, through its :attr:`layout`.

    Attributes:
        name: Short family name (messages).
        model_types: ``config.model_type`` values this adapter serves.
        layout: The family's :class:`BlockLayout` (the defaults describe Llama).
    """

    name: str = "base"
    model_types: tuple[str, ...] = ()
    layout: BlockLayout = BlockLayout()

    # ------------------------------------------------------------------ structure
    def get_blocks(self, model: nn.Module) -> nn.ModuleList:
        try:
            blocks = get_submodule(model, self.layout.blocks)
        except AttributeError:
            blocks = None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError(f"{type(model).__name__} has no decoder blocks at '{self.layout.blocks}' "
                             f"(family adapter '{self.name}'): nothing to prune")
        return blocks

    def text_config(self, config):
        """The decoder's config (the model config itself, or its ``layout.text_config``)."""
        return getattr(config, self.layout.text_config) if self.layout.text_config else config

    def attention(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.layout.attention)

    def mlp(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.layout.mlp)

    def attn_out_proj(self, block: nn.Module) -> nn.Linear:
        """The linear whose input columns are the concatenated head outputs (``o_proj``)."""
        return getattr(self.attention(block), self.layout.o_proj)

    def mlp_out_proj(self, block: nn.Module) -> nn.Linear:
        """The linear whose input columns are the FFN channels (``down_proj``)."""
        return getattr(self.mlp(block), self.layout.channel_out)

    def attn_in_linears(self, block: nn.Module) -> list[nn.Linear]:
        """The linears that read the attention input (``q/k/v_proj`` or the fused ``qkv_proj``)."""
        attn, L = self.attention(block), self.layout
        return [getattr(attn, n) for n in ((L.qkv_proj,) if L.qkv_proj else L.q_proj + L.kv_proj)]

    def channel_in_linears(self, block: nn.Module) -> list[nn.Linear]:
        """The linears that read the MLP input (``gate/up_proj``, ``fc1`` or the fused ``gate_up_proj``)."""
        mlp, L = self.mlp(block), self.layout
        return [getattr(mlp, n) for n in ((L.gate_up_proj,) if L.gate_up_proj else L.channel_in)]

    def head_in_weights(self, block: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(query-side, kv-side)`` weights whose rows are head dimensions, in head order (views of the
        fused ``qkv_proj`` where there is one)."""
        attn, L = self.attention(block), self.layout
        if L.qkv_proj:
            w = getattr(attn, L.qkv_proj).weight
            q = self.attn_out_proj(block).in_features
            kv = (w.shape[0] - q) // 2
            return [w[:q]], [w[q:q + kv], w[q + kv:]]
        return [getattr(attn, n).weight for n in L.q_proj], [getattr(attn, n).weight for n in L.kv_proj]

    def channel_in_weights(self, block: nn.Module) -> list[torch.Tensor]:
        """The channel-in weights with one row per FFN channel (gate and up, or fc1), in channel order."""
        ws = [lin.weight for lin in self.channel_in_linears(block)]
        if self.layout.gate_up_proj:
            n = self.num_channels(block)
            return [ws[0][:n], ws[0][n:]]
        return ws

    def mlp_tail_entry(self, block: nn.Module) -> nn.Module | None:
        """The module whose input is the residual stream entering the MLP branch (``layout.mlp_norm``), or
        ``None`` when the block does not end in ``h + post(mlp(norm(h)))``."""
        name = self.layout.mlp_norm
        return getattr(block, name, None) if name else None

    def mlp_tail(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The block's output given the residual stream ``h`` after attention: ``h + post(mlp(norm(h)))``, the
        same operations in the same order as the decoder-layer forward (eval mode). The pruner checks once
        per run that this equals the block's own forward bit for bit, and otherwise runs whole blocks."""
        y = self.mlp(block)(get_submodule(block, self.layout.mlp_norm)(h))
        if self.layout.mlp_post_norm is not None:
            y = get_submodule(block, self.layout.mlp_post_norm)(y)
        return h + y

    def head_layout(self, block: nn.Module, config) -> HeadLayout:
        config = self.text_config(config)
        hd = int(getattr(self.attention(block), "head_dim", 0) or getattr(config, "head_dim", 0)
                 or config.hidden_size // config.num_attention_heads)
        q_rows = self.attn_out_proj(block).in_features
        if self.layout.qkv_proj:
            kv_rows = self.attn_in_linears(block)[0].out_features - q_rows
            if q_rows % hd or kv_rows <= 0 or kv_rows % (2 * hd):
                raise ValueError(f"{self.layout.qkv_proj} has {q_rows + kv_rows} rows and {self.layout.o_proj} "
                                 f"{q_rows} columns: not a [q | k | v] layout with head_dim {hd}")
            return HeadLayout(q_rows // hd, kv_rows // (2 * hd), hd)
        kv_rows = getattr(self.attention(block), self.layout.kv_proj[0]).out_features
        return HeadLayout(q_rows // hd, kv_rows // hd, hd)

    def num_channels(self, block: nn.Module) -> int:
        return self.mlp_out_proj(block).in_features

    def block_sizes(self, block: nn.Module, config) -> dict:
        """The block's real sizes under the canonical keys (``num_attention_heads``, ``num_key_value_heads``,
        ``intermediate_size``), read from the module shapes."""
        lay = self.head_layout(block, config)
        return {"num_attention_heads": lay.num_heads, "num_key_value_heads": lay.num_kv_heads,
                "intermediate_size": self.num_channels(block)}

    def geometry(self, block: nn.Module, config) -> LayerGeometry:
        """Parameter counts per head / KV head / channel, read from the actual module shapes."""
        lay = self.head_layout(block, config)
        hd, L = lay.head_dim, self.layout
        o, down = self.attn_out_proj(block), self.mlp_out_proj(block)
        ins, ch_ins = self.attn_in_linears(block), self.channel_in_linears(block)
        row = [lin.in_features + _bias(lin) for lin in ins]  # parameters of one row of each in-linear
        if L.qkv_proj:
            per_head, per_kv = row[0] * hd, 2 * row[0] * hd
        else:
            per_head, per_kv = sum(row[:len(L.q_proj)]) * hd, sum(row[len(L.q_proj):]) * hd
        per_ch = down.out_features + (2 if L.gate_up_proj else 1) * sum(lin.in_features + _bias(lin) for lin in ch_ins)
        return LayerGeometry(lay.num_heads, lay.num_kv_heads, hd, self.num_channels(block), per_head + o.out_features * hd,
                             per_kv, per_ch, _numel(o.bias) + _numel(down.bias))

    # ------------------------------------------------------------------ index maps (slicing and padding)
    def head_index_map(self, block: nn.Module, head_dim: int, heads: Sequence[int], kv_heads: Sequence[int],
                       num_heads: int, num_kv_heads: int) -> IndexMap:
        """Where query heads ``heads`` and KV heads ``kv_heads`` sit in a layout of ``num_heads``/``num_kv_heads``
        heads, for every linear of the attention."""
        attn, L = self.attention(block), self.layout
        o = self.attn_out_proj(block)
        q, kv = _rows(heads, head_dim, o.weight.device), _rows(kv_heads, head_dim, o.weight.device)
        Q, K = num_heads * head_dim, num_kv_heads * head_dim
        out: IndexMap = [(o, 1, q, Q)]
        if L.qkv_proj:
            out.append((getattr(attn, L.qkv_proj), 0, torch.cat([q, kv + Q, kv + Q + K]), Q + 2 * K))
        out += [(getattr(attn, n), 0, q, Q) for n in L.q_proj] + [(getattr(attn, n), 0, kv, K) for n in L.kv_proj]
        return out

    def channel_index_map(self, block: nn.Module, channels: Sequence[int], num_channels: int) -> IndexMap:
        """Where FFN ``channels`` sit in a layout of ``num_channels`` channels, for every linear of the MLP."""
        down = self.mlp_out_proj(block)
        c = torch.tensor(list(channels), dtype=torch.long, device=down.weight.device)
        out: IndexMap = [(down, 1, c, num_channels)]
        if self.layout.gate_up_proj:
            return out + [(self.channel_in_linears(block)[0], 0, torch.cat([c, c + num_channels]), 2 * num_channels)]
        return out + [(lin, 0, c, num_channels) for lin in self.channel_in_linears(block)]

    # ------------------------------------------------------------------ surgery
    def prune_heads(self, block: nn.Module, config, kept_heads: list[int], kept_kv_heads: list[int]) -> None:
        """Physically keep query heads ``kept_heads`` (new order) and KV heads ``kept_kv_heads``."""
        if self.layout.size_keys.get("num_key_value_heads") is None and list(kept_heads) != list(kept_kv_heads):
            raise ValueError(f"{self.name} attention is multi-head (one KV head per query head): kept_kv_heads must "
                             f"equal kept_heads, got {list(kept_kv_heads)} vs {list(kept_heads)}")
        lay = self.head_layout(block, config)
        for lin, dim, index, _ in self.head_index_map(block, lay.head_dim, kept_heads, kept_kv_heads, lay.num_heads,
                                                      lay.num_kv_heads):
            slice_linear(lin, **{"rows" if dim == 0 else "cols": index})
        set_attention_sizes(self.attention(block), len(kept_heads), len(kept_kv_heads))
        for path in self.layout.config_view:  # forwards that read their head counts from self.config
            module = get_submodule(block, path)
            sizes = {"num_attention_heads": len(kept_heads), "num_key_value_heads": len(kept_kv_heads)}
            module.config = LayerConfigView(module.config, **size_overrides(self.layout, sizes))

    def prune_channels(self, block: nn.Module, kept: list[int]) -> None:
        for lin, dim, index, _ in self.channel_index_map(block, kept, self.num_channels(block)):
            slice_linear(lin, **{"rows" if dim == 0 else "cols": index})
        set_mlp_size(self.mlp(block), len(kept))

    @torch.no_grad()
    def padded_block_state_dict(self, block: nn.Module, config, kv: int, rep: int, channels: int) -> dict:
        """The block's prunable tensors zero-padded to ``kv·rep`` query heads (padded per KV group, so that
        ``repeat_kv`` still maps each head to its KV head), ``kv`` KV heads and ``channels`` FFN channels: a plain
        decoder layer of those sizes computes the same function."""
        lay = self.head_layout(block, config)
        n = self.num_channels(block)
        if lay.num_kv_heads > kv or lay.n_rep > rep or n > channels:
            raise ValueError(f"cannot pad ({lay.num_heads}, {lay.num_kv_heads}, {n}) into ({kv * rep}, {kv}, {channels})")
        slots = [(h // lay.n_rep) * rep + h % lay.n_rep for h in range(lay.num_heads)]
        maps = (self.head_index_map(block, lay.head_dim, slots, range(lay.num_kv_heads), kv * rep, kv)
                + self.channel_index_map(block, range(n), channels))
        names = {id(m): name for name, m in block.named_modules()}
        out = {}
        for lin, dim, index, size in maps:
            out[f"{names[id(lin)]}.weight"] = _scatter(lin.weight.detach(), dim, index, size)
            if lin.bias is not None:
                out[f"{names[id(lin)]}.bias"] = _scatter(lin.bias.detach(), 0, index, size) if dim == 0 else lin.bias.detach()
        return out

    @torch.no_grad()
    def set_output_bias(self, linear: nn.Linear, bias: torch.Tensor) -> None:
        """Give ``linear`` (``o_proj``/``down_proj``) this output bias, creating the parameter if needed (an
        architecture change: the per-layer model classes carry it when saving)."""
        bias = bias.to(device=linear.weight.device, dtype=linear.weight.dtype)
        if linear.bias is None:
            linear.bias = nn.Parameter(bias.clone(), requires_grad=linear.weight.requires_grad)
        else:
            linear.bias.data.copy_(bias)

    # ------------------------------------------------------------------ masking (for checks)
    @torch.no_grad()
    def mask_heads(self, block: nn.Module, config, kept_heads: list[int]) -> None:
        """Zero the ``o_proj`` columns of every head not in ``kept_heads`` (the masked model)."""
        o = self.attn_out_proj(block)
        keep = torch.zeros(o.in_features, dtype=torch.bool, device=o.weight.device)
        keep[_rows(kept_heads, self.head_layout(block, config).head_dim, o.weight.device)] = True
        o.weight.data[:, ~keep] = 0

    @torch.no_grad()
    def mask_channels(self, block: nn.Module, kept: list[int]) -> None:
        down = self.mlp_out_proj(block)
        keep = torch.zeros(down.in_features, dtype=torch.bool, device=down.weight.device)
        keep[torch.tensor(kept, dtype=torch.long, device=down.weight.device)] = True
        down.weight.data[:, ~keep] = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model_types={self.model_types})"
