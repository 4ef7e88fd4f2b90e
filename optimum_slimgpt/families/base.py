"""Model-family adapters: where the blocks are, which linears hold heads and channels, how to slice.

The pruner only talks to a :class:`FamilyAdapter`. A family is supported by registering a small
subclass (usually just a few attribute names), never by ``if`` chains in the pruner::

    from optimum_slimgpt.families import FamilyAdapter, register_family

    @register_family
    class MyFamily(FamilyAdapter):
        model_types = ("my_model",)
        blocks_path = "model.layers"

The defaults describe the Llama layout (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..modeling.modeling_slimgpt_common import LayerConfigView
from ..solvers.schedule import LayerGeometry

__all__ = ["FamilyAdapter", "HeadLayout", "LayerConfigView", "slice_linear", "get_submodule"]


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if not part:
            continue
        mod = getattr(mod, part)
    return mod


def _numel(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel()


@torch.no_grad()
def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs) and/or ``cols`` (inputs) of a linear layer, in place.

    The module object stays the same (hooks, accelerate wrappers and references survive); its
    ``weight``/``bias`` parameters are replaced and ``in_features``/``out_features`` updated.
    """
    w = linear.weight
    new = w.data
    if rows is not None:
        rows = rows.to(w.device)
        new = new.index_select(0, rows)
    if cols is not None:
        cols = cols.to(w.device)
        new = new.index_select(1, cols)
    linear.weight = nn.Parameter(new.contiguous(), requires_grad=w.requires_grad)
    if linear.bias is not None and rows is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows).contiguous(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


class FamilyAdapter:
    """Describes one model family to the pruner. Override attributes or methods as needed.

    Attributes:
        name: Short family name (used in messages and as the ``slimgpt_<name>`` model type).
        model_types: ``config.model_type`` values this adapter serves.
        blocks_path: Dotted path of the decoder-block ``ModuleList`` from the ``*ForCausalLM``.
        attn_path / mlp_path: Attention and MLP sub-modules of a block.
        q_names / kv_names / o_name: Linears whose output rows are grouped by query head, by KV head,
            and the linear whose input columns are grouped by query head.
        channel_in_names / channel_out_name: FFN linears whose rows are channels, and the one whose
            input columns are channels.
        mlp_norm_name / mlp_post_norm_name: The norm that opens the block's MLP branch (its input is the
            residual stream after attention) and an optional norm on the MLP output (Gemma's
            ``post_feedforward_layernorm``), for :meth:`mlp_tail`; ``mlp_norm_name = None`` when the
            block does not end in ``h + post(mlp(norm(h)))``.
    """

    name: str = "base"
    model_types: tuple[str, ...] = ()
    blocks_path: str = "model.layers"
    attn_path: str = "self_attn"
    mlp_path: str = "mlp"
    q_names: tuple[str, ...] = ("q_proj",)
    kv_names: tuple[str, ...] = ("k_proj", "v_proj")
    o_name: str = "o_proj"
    channel_in_names: tuple[str, ...] = ("gate_proj", "up_proj")
    channel_out_name: str = "down_proj"
    mlp_norm_name: str | None = "post_attention_layernorm"
    mlp_post_norm_name: str | None = None

    # ------------------------------------------------------------------ structure
    def get_blocks(self, model: nn.Module) -> nn.ModuleList:
        try:
            blocks = get_submodule(model, self.blocks_path)
        except AttributeError:
            blocks = None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError(
                f"{type(model).__name__} has no decoder blocks at '{self.blocks_path}' "
                f"(family adapter '{self.name}'): nothing to prune"
            )
        return blocks

    def attention(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.attn_path)

    def mlp(self, block: nn.Module) -> nn.Module:
        return get_submodule(block, self.mlp_path)

    def attn_out_proj(self, block: nn.Module) -> nn.Linear:
        """The linear whose input columns are the concatenated head outputs (``o_proj``)."""
        return getattr(self.attention(block), self.o_name)

    def mlp_out_proj(self, block: nn.Module) -> nn.Linear:
        """The linear whose input columns are the FFN channels (``down_proj``)."""
        return getattr(self.mlp(block), self.channel_out_name)

    def q_linears(self, block: nn.Module) -> list[nn.Linear]:
        attn = self.attention(block)
        return [getattr(attn, n) for n in self.q_names]

    def kv_linears(self, block: nn.Module) -> list[nn.Linear]:
        attn = self.attention(block)
        return [getattr(attn, n) for n in self.kv_names]

    def head_in_weights(self, block: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(query-side, kv-side)`` weights whose rows are head dimensions, in head order: by default
        the ``q_linears`` and ``kv_linears`` weights; a fused layout returns views of its parts."""
        return [lin.weight for lin in self.q_linears(block)], [lin.weight for lin in self.kv_linears(block)]

    def channel_in_linears(self, block: nn.Module) -> list[nn.Linear]:
        mlp = self.mlp(block)
        return [getattr(mlp, n) for n in self.channel_in_names]

    def channel_in_weights(self, block: nn.Module) -> list[torch.Tensor]:
        """The channel-in weights with one row per FFN channel (gate and up, or fc1), in channel order.

        Equal to ``[lin.weight for lin in channel_in_linears(block)]`` for unfused layouts; a fused
        layout (Phi-3's ``gate_up_proj``) returns one view per half."""
        return [lin.weight for lin in self.channel_in_linears(block)]

    def mlp_tail_entry(self, block: nn.Module) -> nn.Module | None:
        """The module whose input is the residual stream ``h`` entering the block's MLP branch (the
        norm named ``mlp_norm_name``), or ``None`` when the family has no such tail."""
        if self.mlp_norm_name is None:
            return None
        try:
            return get_submodule(block, self.mlp_norm_name)
        except AttributeError:
            return None

    def mlp_tail(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The block's output given the residual stream ``h`` after attention: ``h + post(mlp(norm(h)))``,
        the same operations in the same order as the family's decoder-layer forward (eval mode), so the
        pruner can produce a block's outputs without running its attention again. The pruner checks
        once per run that this equals the block's own forward bit for bit, and otherwise runs the
        whole block."""
        y = self.mlp(block)(get_submodule(block, self.mlp_norm_name)(h))
        if self.mlp_post_norm_name is not None:
            y = get_submodule(block, self.mlp_post_norm_name)(y)
        return h + y

    def head_layout(self, block: nn.Module, config) -> HeadLayout:
        attn = self.attention(block)
        head_dim = int(getattr(attn, "head_dim", 0) or getattr(config, "head_dim", 0) or config.hidden_size // config.num_attention_heads)
        o = self.attn_out_proj(block)
        num_heads = o.in_features // head_dim
        kv_rows = self.kv_linears(block)[0].out_features
        num_kv = kv_rows // head_dim
        return HeadLayout(num_heads, num_kv, head_dim)

    def num_channels(self, block: nn.Module) -> int:
        return self.mlp_out_proj(block).in_features

    def geometry(self, block: nn.Module, config) -> LayerGeometry:
        """Parameter counts per head / KV head / channel, read from the actual module shapes."""
        lay = self.head_layout(block, config)
        hd = lay.head_dim
        o = self.attn_out_proj(block)
        per_head = o.out_features * hd
        for lin in self.q_linears(block):
            per_head += (lin.in_features + (1 if lin.bias is not None else 0)) * hd
        per_kv = sum((lin.in_features + (1 if lin.bias is not None else 0)) * hd for lin in self.kv_linears(block))
        down = self.mlp_out_proj(block)
        per_ch = down.out_features + sum(lin.in_features + (1 if lin.bias is not None else 0) for lin in self.channel_in_linears(block))
        fixed = _numel(o.bias) + _numel(down.bias)
        return LayerGeometry(lay.num_heads, lay.num_kv_heads, hd, self.num_channels(block), per_head, per_kv, per_ch, fixed)

    # ------------------------------------------------------------------ surgery
    @staticmethod
    def _head_rows(heads: Iterable[int], head_dim: int, device) -> torch.Tensor:
        idx = [h * head_dim + j for h in heads for j in range(head_dim)]
        return torch.tensor(idx, dtype=torch.long, device=device)

    def prune_heads(self, block: nn.Module, config, kept_heads: list[int], kept_kv_heads: list[int]) -> None:
        """Physically keep query heads ``kept_heads`` (new order) and KV heads ``kept_kv_heads``."""
        lay = self.head_layout(block, config)
        dev = self.attn_out_proj(block).weight.device
        q_idx = self._head_rows(kept_heads, lay.head_dim, dev)
        kv_idx = self._head_rows(kept_kv_heads, lay.head_dim, dev)
        for lin in self.q_linears(block):
            slice_linear(lin, rows=q_idx)
        for lin in self.kv_linears(block):
            slice_linear(lin, rows=kv_idx)
        slice_linear(self.attn_out_proj(block), cols=q_idx)
        self.set_attention_sizes(block, len(kept_heads), len(kept_kv_heads))

    def prune_channels(self, block: nn.Module, kept: list[int]) -> None:
        dev = self.mlp_out_proj(block).weight.device
        idx = torch.tensor(kept, dtype=torch.long, device=dev)
        for lin in self.channel_in_linears(block):
            slice_linear(lin, rows=idx)
        slice_linear(self.mlp_out_proj(block), cols=idx)
        self.set_mlp_size(block, len(kept))

    def set_attention_sizes(self, block: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        """Update the attributes the attention forward reads (transformers 5.x names, and older ones)."""
        attn = self.attention(block)
        attn.num_key_value_groups = num_heads // num_kv_heads
        for attr, val in (("num_heads", num_heads), ("num_attention_heads", num_heads),
                          ("num_key_value_heads", num_kv_heads), ("num_kv_heads", num_kv_heads)):
            if hasattr(attn, attr):
                setattr(attn, attr, val)

    def set_mlp_size(self, block: nn.Module, channels: int) -> None:
        mlp = self.mlp(block)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = channels

    @torch.no_grad()
    def set_output_bias(self, linear: nn.Linear, bias: torch.Tensor) -> None:
        """Give ``linear`` (``o_proj``/``down_proj``) this output bias, creating the parameter if needed
        (an architecture change: the per-layer model classes carry it when saving)."""
        bias = bias.to(device=linear.weight.device, dtype=linear.weight.dtype)
        if linear.bias is None:
            linear.bias = nn.Parameter(bias.clone(), requires_grad=linear.weight.requires_grad)
        else:
            linear.bias.data.copy_(bias)

    # ------------------------------------------------------------------ masking (for checks)
    @torch.no_grad()
    def mask_heads(self, block: nn.Module, config, kept_heads: list[int]) -> None:
        """Zero the ``o_proj`` columns of every head not in ``kept_heads`` (the masked model)."""
        lay = self.head_layout(block, config)
        o = self.attn_out_proj(block)
        keep = torch.zeros(o.in_features, dtype=torch.bool, device=o.weight.device)
        keep[self._head_rows(kept_heads, lay.head_dim, o.weight.device)] = True
        o.weight.data[:, ~keep] = 0

    @torch.no_grad()
    def mask_channels(self, block: nn.Module, kept: list[int]) -> None:
        down = self.mlp_out_proj(block)
        keep = torch.zeros(down.in_features, dtype=torch.bool, device=down.weight.device)
        keep[torch.tensor(kept, dtype=torch.long, device=down.weight.device)] = True
        down.weight.data[:, ~keep] = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model_types={self.model_types})"
