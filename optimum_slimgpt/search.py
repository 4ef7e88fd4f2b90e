"""``schedule="search"``: an evolutionary search for the per-layer sizes (EvoPress's (1+λ) loop), on a model.

The pure parts (ladders of sizes, the budget band, level-switch mutation, the (1+λ) loop with multi-step
selection) are in :mod:`optimum_slimgpt.solvers.allocation`. This module runs them on a Hugging Face model:

1. **Level database** (:class:`LevelDatabase`, :meth:`EvolutionarySearch.build_database`). With
   ``search_database_inputs="dense"`` the dense blocks run
   one after the other on the captured calibration inputs (the dense model's block inputs), with the method's
   observers on both parts; each part is then pruned at every rung of its ladder by the method's own solver
   (:meth:`PruningMethod.prune_attention` / :meth:`~PruningMethod.prune_ffn`, the tasks the block loop builds). A
   variant keeps what the solver returns: the kept heads / KV heads / channels, the repaired output projection
   (kept columns only) and its new bias. The variants live in memory, or in ``search_offload_dir`` as one
   safetensors file per part when they exceed ``search_max_memory_gb``. With ``"propagated"`` (the default) the
   inputs are instead those of the model pruned at the starting candidate's levels, as the block
   loop propagates them (each part observed and solved at every rung, then left at the start's rung while the rest
   of the block runs): every variant sees the pruning error of the blocks before it, as the re-pruned final model
   does, and the stitched starting candidate is exactly the block loop's model at its sizes.
2. **Stitching** (:class:`Stitcher`): a candidate is assembled in the model itself by a weight swap: a part's
   input projections are sliced from the kept dense tensors and its output projection is the variant's tensor.
   No solver runs; only the parts that differ from the previous candidate are swapped.
3. **Fitness** (:class:`KLFitness`): the mean over tokens of ``KL(p_dense || p_candidate)`` of the next-token
   distributions on the first ``search_tokens[k]`` calibration tokens (whole windows, then a prefix of the next:
   :func:`fitness_units`; the windows of a step include those of the steps before, and every window's KL is
   computed once per candidate). The KL is computed from the output head's input (the head is linear and shared
   with the dense model, which leaves one hidden-size vector and a log-sum-exp per position), and a forward starts
   at the first block that differs from a recently evaluated candidate, whose block inputs are kept (prefix reuse).

The model is dense again when the search returns (also when it fails); :class:`~optimum_slimgpt.SlimGPTPruner`
then either re-prunes the blocks at the found sizes (``search_final="reprune"``, propagated inputs) or stitches
the best candidate for good (``"stitched"``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from .modeling.modeling_slimgpt import get_submodule, set_attention_sizes, set_mlp_size
from .solvers.allocation import (
    Budget,
    EvolutionResult,
    PartLadder,
    SearchOutOfTime,
    budget_for,
    build_ladders,
    evolve,
    nearest_candidate,
    profile_schedule,
    removed_params,
)
from .solvers.schedule import LayerPlan, PruningPlan, solve_schedule

if TYPE_CHECKING:  # pragma: no cover
    from .pruner import LayerReport, SlimGPTPruner, _Run

logger = logging.getLogger(__name__)

__all__ = ["LevelDatabase", "Stitcher", "KLFitness", "EvolutionarySearch", "SearchResult", "Variant",
           "search_ladders", "database_bytes", "searched_schedule", "describe_search"]

#: the fitness keeps the block inputs of recent candidates up to about this many bytes (prefix reuse, see
#: :class:`KLFitness`)
PREFIX_CACHE_BYTES = 2**30


class _StopAtHead(Exception):
    """Ends a fitness forward at the output head (its input is all the fitness needs)."""


# ---------------------------------------------------------------------------------------------- database
@dataclass
class Variant:
    """One part of one block pruned at one rung: ``kept`` query heads (new order) or channels, ``kept_kv`` (attention
    only), the output projection's repaired ``weight`` restricted to the kept columns, its new ``bias`` (or
    ``None``: unchanged), the solver's relative reconstruction ``error`` and head ``option``."""

    kept: list[int]
    kept_kv: Optional[list[int]]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    error: float = 0.0
    option: Optional[tuple[int, int]] = None


class LevelDatabase:
    """The variants of every part at every rung that removes something, in memory or, with ``folder``, on disk
    (one safetensors file per part: ``layer-00003-ffn.safetensors`` holds ``<rung>.weight``, ``<rung>.bias``,
    ``<rung>.kept``, ``<rung>.kept_kv`` and the errors in its metadata), read back on demand to ``device``."""

    def __init__(self, folder: Optional[os.PathLike] = None, device: Optional[torch.device] = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.device = device
        self._mem: dict[tuple[int, str], dict[int, Variant]] = {}
        self.nbytes = 0

    def _file(self, layer: int, part: str) -> Path:
        return self.folder / f"layer-{layer:05d}-{part}.safetensors"

    def put_part(self, layer: int, part: str, variants: dict[int, Variant]) -> None:
        self.nbytes += sum(v.weight.numel() * v.weight.element_size()
                           + (0 if v.bias is None else v.bias.numel() * v.bias.element_size()) for v in variants.values())
        if self.folder is None:
            self._mem[(layer, part)] = variants
            return
        from safetensors.torch import save_file

        tensors, meta = {}, {}
        for k, v in variants.items():
            tensors[f"{k}.weight"] = v.weight.detach().cpu().contiguous()
            tensors[f"{k}.kept"] = torch.tensor(v.kept, dtype=torch.long)
            if v.bias is not None:
                tensors[f"{k}.bias"] = v.bias.detach().cpu().contiguous()
            if v.kept_kv is not None:
                tensors[f"{k}.kept_kv"] = torch.tensor(v.kept_kv, dtype=torch.long)
            meta[str(k)] = {"error": v.error, "option": None if v.option is None else list(v.option)}
        tmp = self._file(layer, part).with_suffix(".tmp")
        save_file(tensors, os.fspath(tmp), metadata={"variants": json.dumps(meta)})
        os.replace(tmp, self._file(layer, part))

    def get(self, layer: int, part: str, rung: int) -> Optional[Variant]:
        """The variant, or ``None`` when the database has none (the rung is the dense part)."""
        if self.folder is None:
            return self._mem.get((layer, part), {}).get(rung)
        f = self._file(layer, part)
        if not f.exists():
            return None
        from safetensors import safe_open

        with safe_open(os.fspath(f), framework="pt", device="cpu") as sf:
            keys = set(sf.keys())
            if f"{rung}.weight" not in keys:
                return None
            meta = json.loads(sf.metadata()["variants"])[str(rung)]
            dev = self.device or "cpu"
            return Variant(
                kept=sf.get_tensor(f"{rung}.kept").tolist(),
                kept_kv=sf.get_tensor(f"{rung}.kept_kv").tolist() if f"{rung}.kept_kv" in keys else None,
                weight=sf.get_tensor(f"{rung}.weight").to(dev),
                bias=sf.get_tensor(f"{rung}.bias").to(dev) if f"{rung}.bias" in keys else None,
                error=float(meta["error"]), option=None if meta["option"] is None else tuple(meta["option"]))


def search_ladders(adapter, blocks, model_config, config) -> list[PartLadder]:
    """The ladders of ``config.search_levels`` for every part of ``blocks``, with the config's rounding."""
    geoms = [adapter.geometry(b, model_config) for b in blocks]
    return build_ladders(geoms, config.search_levels, prune_heads=config.prune_heads, prune_ffn=config.prune_ffn,
                         min_heads=config.min_heads, min_channels=config.min_channels,
                         channel_multiple=config.channel_multiple)


def database_bytes(adapter, blocks, model_config, ladders: list[PartLadder], *, bias: bool,
                   dtype: Optional[torch.dtype] = None) -> int:
    """Bytes of the level database: every rung that removes something keeps its output projection's kept columns
    (and a bias when the method writes one), in ``dtype`` (default: the weights')."""
    total = 0
    for lad in ladders:
        block = blocks[lad.layer]
        out = adapter.attn_out_proj(block) if lad.part == "attention" else adapter.mlp_out_proj(block)
        elem = (torch.empty(0, dtype=dtype) if dtype is not None else out.weight).element_size()
        hd = adapter.head_layout(block, model_config).head_dim
        for r in lad.rungs:
            if r.removed == 0:
                continue
            cols = r.heads * hd if lad.part == "attention" else r.channels
            total += (out.out_features * cols + (out.out_features if bias or out.bias is not None else 0)) * elem
            total += 8 * (cols + r.kv_heads)
    return total


def _free_disk(folder: Path) -> tuple[Path, int]:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_database_room(nbytes: int, config, *, streamed: bool = False, folder: Optional[os.PathLike] = None) -> bool:
    """Where the level database of ``nbytes`` goes: ``False`` in memory, ``True`` on disk (``search_offload_dir``, or
    ``folder`` on the streamed path, which has no room in memory by design). Raises ``ValueError`` when it fits
    neither: over ``search_max_memory_gb`` with no offload folder, or more than the folder's free disk."""
    limit = config.search_max_memory_gb * 2**30
    gib = nbytes / 2**30
    if not streamed and nbytes <= limit:
        return False
    where = config.search_offload_dir or folder
    if where is None:
        raise ValueError(
            f"the search's level database needs {gib:.2f} GiB, more than search_max_memory_gb="
            f"{config.search_max_memory_gb}: set search_offload_dir to keep it on disk, raise the limit, or use fewer "
            "search_levels")
    probe, free = _free_disk(Path(where))
    if nbytes > free:
        raise ValueError(
            f"the search's level database needs {gib:.2f} GiB on disk but {probe} has {free / 2**30:.2f} GiB free"
            + (" (the streamed path keeps the variants on disk: it has no room for them in memory)" if streamed else "")
            + ": free some space, point search_offload_dir elsewhere or use fewer search_levels")
    return True


# ---------------------------------------------------------------------------------------------- stitching
@dataclass
class _PartState:
    linears: list[tuple[nn.Linear, nn.Parameter, Optional[nn.Parameter], int, int]]
    sizes: tuple[int, ...]
    views: dict[str, Any] = field(default_factory=dict)


class Stitcher:
    """Assembles candidates in the model itself by swapping weights (see the module docstring).

    It keeps the dense parameters of every part (references, no copies); :meth:`restore` puts them all back, and
    :meth:`apply` swaps in the variants of a candidate (only the parts that changed since the last call).
    """

    def __init__(self, adapter, blocks, model_config, ladders: list[PartLadder], db: LevelDatabase) -> None:
        self.adapter, self.blocks, self.config, self.ladders, self.db = adapter, blocks, model_config, ladders, db
        self.dense: dict[tuple[int, str], _PartState] = {}
        for i, b in enumerate(blocks):
            lay = adapter.head_layout(b, model_config)
            n = adapter.num_channels(b)
            maps = {"attention": adapter.head_index_map(b, lay.head_dim, range(lay.num_heads), range(lay.num_kv_heads),
                                                        lay.num_heads, lay.num_kv_heads),
                    "ffn": adapter.channel_index_map(b, range(n), n)}
            for part, imap in maps.items():
                lins = list({id(lin): lin for lin, *_ in imap}.values())
                self.dense[(i, part)] = _PartState(
                    [(lin, lin.weight, lin.bias, lin.in_features, lin.out_features) for lin in lins],
                    (lay.num_heads, lay.num_kv_heads) if part == "attention" else (n,),
                    {p: get_submodule(b, p).config for p in adapter.layout.config_view} if part == "attention" else {})
        self.current: list[Optional[int]] = [None] * len(ladders)  # None: the dense part

    def _restore_part(self, i: int, part: str) -> None:
        st, block = self.dense[(i, part)], self.blocks[i]
        for lin, w, b, fin, fout in st.linears:
            lin.weight = w
            lin.bias = b
            lin.in_features, lin.out_features = fin, fout
        if part == "attention":
            set_attention_sizes(self.adapter.attention(block), *st.sizes)
            for path, cfg in st.views.items():
                get_submodule(block, path).config = cfg
        else:
            set_mlp_size(self.adapter.mlp(block), st.sizes[0])

    def set_part(self, i: int, part: str, variant: Optional[Variant], *, copy_tensors: bool = False) -> None:
        """Block ``i``'s ``part`` dense (``variant=None``) or at ``variant`` (its tensors shared with the database,
        or copied with ``copy_tensors``)."""
        self._restore_part(i, part)
        if variant is None:
            return
        block, a = self.blocks[i], self.adapter
        if part == "attention":
            a.prune_heads(block, self.config, variant.kept, variant.kept_kv)
            out = a.attn_out_proj(block)
        else:
            a.prune_channels(block, variant.kept)
            out = a.mlp_out_proj(block)
        if tuple(variant.weight.shape) != tuple(out.weight.shape):
            raise RuntimeError(f"layer {i} {part}: the level database's weight has shape {tuple(variant.weight.shape)}, "
                               f"the sliced projection {tuple(out.weight.shape)}")
        grad = self.dense[(i, part)].linears[0][1].requires_grad
        w = variant.weight.clone() if copy_tensors else variant.weight
        out.weight = nn.Parameter(w, requires_grad=grad)
        if variant.bias is not None:
            out.bias = nn.Parameter(variant.bias.clone() if copy_tensors else variant.bias, requires_grad=grad)

    def apply(self, x: tuple[int, ...]) -> None:
        """Make the model candidate ``x`` (swap the parts whose rung changed)."""
        for p, (lad, k) in enumerate(zip(self.ladders, x)):
            if self.current[p] != k:
                self.current[p] = None  # (a failed swap leaves the part unknown: restored next time)
                self.set_part(lad.layer, lad.part, self.db.get(lad.layer, lad.part, k))
                self.current[p] = k

    def restore(self) -> None:
        """Every part dense again."""
        for (i, part) in self.dense:
            self._restore_part(i, part)
        self.current = [None] * len(self.ladders)


# ---------------------------------------------------------------------------------------------- fitness
def fitness_units(tokens: int, seqlen: int) -> list[tuple[int, int]]:
    """The ``(window, length)`` pieces of a selection step of ``tokens`` tokens: whole calibration windows first,
    then the first ``tokens mod seqlen`` tokens of the next one (a causal model's predictions on a window's prefix
    are those of the whole window at the same positions)."""
    full, rest = divmod(int(tokens), seqlen)
    return [(j, seqlen) for j in range(full)] + ([(full, rest)] if rest else [])


class KLFitness:
    """``fitness(candidate, step)``: mean ``KL(p_dense || p_candidate)`` per token over the first ``tokens[step]``
    calibration tokens (:func:`fitness_units`), with the model stitched to the candidate by ``stitcher``. Each
    piece's KL sum is computed once per candidate (a later step adds only its new windows); the forwards take up to
    ``batch_size`` windows at a time.

    Two things make an evaluation cheaper than a forward to the logits and a KL over the vocabulary:

    - **The KL from the head's input.** The output head is linear, ``z = W h + b``, and the candidate shares it with
      the dense model, so per position ``KL(p_d || p_c) = lse(z_c) - lse(z_d) - e·(h_c - h_d)`` with
      ``e = p_dᵀ W`` (the dense distribution's mean output embedding; the bias cancels). The dense model leaves
      ``h_d``, ``lse(z_d)`` and ``e`` per position (hidden-size vectors, not vocabulary-size ones); a candidate
      costs its head product and a log-sum-exp, no log-softmax of either model. (The distributions are those of
      the head's logits: a final logit soft-cap, Gemma 2's, is left out for both models.)
    - **Prefix reuse.** Offspring differ from their parent in a few parts; the blocks before the first changed one
      compute what they computed for the parent. The block inputs of recent candidates are kept (up to
      ``prefix_bytes``, least recently used dropped first) and a forward starts at the first block that differs
      from the closest kept candidate, with that candidate's input to it. ``prefix_bytes=0`` runs every forward
      whole. The blocks run the same arithmetic either way; only a different batching of the windows can change
      the last bits.
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, data: torch.Tensor, tokens: list[int], stitcher: Stitcher,
                 deadline: Optional[float] = None, batch_size: int = 1,
                 prefix_bytes: int = PREFIX_CACHE_BYTES) -> None:
        self.model, self.data, self.stitcher, self.deadline = model, data, stitcher, deadline
        self.steps = [fitness_units(t, data.shape[1]) for t in tokens]
        self.batch_size = max(1, int(batch_size))
        self.head = model.get_output_embeddings()
        if not isinstance(self.head, nn.Linear):
            raise ValueError(f"{type(model).__name__}'s output embeddings are {type(self.head).__name__}, not a linear "
                             "layer: the search's KL fitness needs a linear output head")
        self.in_device = model.get_input_embeddings().weight.device
        self.cache: dict[tuple[int, ...], dict[tuple[int, int], float]] = {}
        self.evaluations = 0  # window forwards for candidates (whole windows or prefixes)
        self.tokens_evaluated = 0
        self.blocks_run = 0  # block forwards of those (prefix reuse skips some)
        n = 1 + max(j for units in self.steps for j, _ in units)
        if n > data.shape[0]:
            raise ValueError(f"the selection steps need {n} calibration windows, the data have {data.shape[0]}")
        self.blocks = list(stitcher.blocks)
        self.part_layer = [lad.layer for lad in stitcher.ladders]
        self.prefix_bytes = int(prefix_bytes)
        self.states: "OrderedDict[tuple[int, ...], dict[tuple[int, int], list[torch.Tensor]]]" = OrderedDict()
        self.state_bytes = 0
        # the dense reference, per window: head input h_d, lse(z_d) and e = softmax(z_d) W (float32)
        self.dense_h: list[torch.Tensor] = []
        self.dense_lse: list[torch.Tensor] = []
        self.dense_e: list[torch.Tensor] = []
        W = self.head.weight
        self.acc_dtype = torch.promote_types(W.dtype, torch.float32)  # the KL's arithmetic: float32 at least
        for s in range(0, n, self.batch_size):
            rows = list(range(s, min(n, s + self.batch_size)))
            h, _ = self._forward(rows, data.shape[1], record=False)
            for hj in h.unbind(0):
                self.dense_h.append(hj)
                lse, e = [], []
                for a, b in self._chunks(hj.shape[0]):
                    z = self._logits(hj[a:b])
                    m = z.logsumexp(-1, keepdim=True)
                    lse.append(m.squeeze(-1))
                    e.append(((z - m).exp().to(W.dtype) @ W).to(self.acc_dtype))
                self.dense_lse.append(torch.cat(lse))
                self.dense_e.append(torch.cat(e))
        # prefix reuse needs blocks that return their hidden states as a plain tensor (the skipped ones hand their
        # input on): checked on the model as it is
        if self.prefix_bytes > 0 and not self._blocks_return_tensors():
            self.prefix_bytes = 0

    # -------------------------------------------------------------- forwards
    def _chunks(self, length: int) -> list[tuple[int, int]]:
        step = max(1, 2**24 // self.head.weight.shape[0])
        return [(a, min(length, a + step)) for a in range(0, length, step)]

    def _blocks_return_tensors(self) -> bool:
        outs: list[Any] = []
        handle = self.blocks[0].register_forward_hook(lambda m, a, out: outs.append(type(out)))
        try:
            self._forward([0], 1, record=False)
        finally:
            handle.remove()
        return bool(outs) and outs[0] is torch.Tensor

    def _forward(self, rows: list[int], length: int, *, start: int = 0, init: Optional[torch.Tensor] = None,
                 record: bool = True) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
        """The output head's input ``(len(rows), length, hidden)`` for the first ``length`` tokens of windows
        ``rows``, with the model as it is; with ``start > 0`` the blocks before ``start`` are skipped and block
        ``start`` gets ``init`` as its input. With ``record``, also the inputs of blocks ``start..`` (clones)."""
        got: list[torch.Tensor] = []
        rec: list[torch.Tensor] = []
        handles, swapped = [], []

        def head_hook(m, args):
            got.append(args[0].detach())
            raise _StopAtHead

        def hidden_of(args, kwargs):
            return args[0] if args else kwargs["hidden_states"]

        def inject(m, args, kwargs):
            if args:
                return (init,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": init}

        def keep(m, args, kwargs):
            rec.append(hidden_of(args, kwargs).detach().clone())

        handles.append(self.head.register_forward_pre_hook(head_hook))
        try:
            for i in range(start):  # skipped: hand the input on (what the model feeds block `start` is replaced)
                block = self.blocks[i]
                swapped.append((block, block.__dict__.get("forward")))
                block.forward = _pass_hidden
            if start > 0:
                handles.append(self.blocks[start].register_forward_pre_hook(inject, with_kwargs=True))
            if record:
                for block in self.blocks[start:]:
                    handles.append(block.register_forward_pre_hook(keep, with_kwargs=True))
            self.model(input_ids=self.data[rows, :length].to(self.in_device), use_cache=False)
        except _StopAtHead:
            pass
        finally:
            for h in handles:
                h.remove()
            for block, old in swapped:
                if old is None:
                    del block.forward
                else:
                    block.forward = old
        if not got:  # pragma: no cover - the head always runs
            raise RuntimeError("the forward never reached the output head")
        return got[0], (rec if record else None)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h).to(self.acc_dtype)

    def _kl(self, j: int, h: torch.Tensor) -> float:
        """The KL sum over the positions of ``h`` (``length, hidden``), the head input of window ``j``'s prefix."""
        total = 0.0
        hd, lse_d, e = self.dense_h[j], self.dense_lse[j], self.dense_e[j]
        for a, b in self._chunks(h.shape[0]):
            lse_c = self._logits(h[a:b]).logsumexp(-1)
            shift = (e[a:b] * (h[a:b].to(e.dtype) - hd[a:b].to(e.dtype))).sum(-1)
            total += float((lse_c.double() - lse_d[a:b].double() - shift.double()).sum())
        return total

    # -------------------------------------------------------------- prefix reuse
    def _reference(self, x: tuple[int, ...], unit: tuple[int, int]
                   ) -> tuple[int, Optional[tuple[int, ...]], Optional[tuple[int, int]]]:
        """``(start, kept candidate, its unit)``: the latest first changed block over the kept candidates that have
        window ``unit[0]`` at least ``unit[1]`` long (``(0, None, None)``: none, run the whole model)."""
        best: tuple[int, Optional[tuple[int, ...]], Optional[tuple[int, int]]] = (0, None, None)
        for cand, units in self.states.items():
            have = [u for u in units if u[0] == unit[0] and u[1] >= unit[1]]
            if not have:
                continue
            first = min((self.part_layer[p] for p, (a, b) in enumerate(zip(x, cand)) if a != b),
                        default=len(self.blocks))
            first = min(first, len(self.blocks) - 1)  # (a kept candidate equal to x: rerun the last block)
            if first >= best[0] and first > 0:
                best = (first, cand, have[0])
        return best

    def _keep_states(self, x: tuple[int, ...], unit: tuple[int, int], layers: list[torch.Tensor]) -> None:
        """Keep ``x``'s block inputs for ``unit``, then drop the least recently used candidates while the kept
        inputs exceed ``prefix_bytes`` (``x``'s own, too, when it alone does)."""
        entry = self.states.setdefault(x, {})
        self.states.move_to_end(x)
        if unit in entry:
            return
        entry[unit] = layers
        self.state_bytes += sum(t.numel() * t.element_size() for t in layers)
        while self.state_bytes > self.prefix_bytes and self.states:
            _, old = self.states.popitem(last=False)
            self.state_bytes -= sum(t.numel() * t.element_size() for ls in old.values() for t in ls)

    def tokens(self, step: int) -> int:
        return sum(length for _, length in self.steps[step])

    @torch.no_grad()
    def __call__(self, x: tuple[int, ...], step: int) -> float:
        x = tuple(x)
        done = self.cache.setdefault(x, {})
        units = self.steps[step]
        missing = [u for u in units if u not in done]
        if missing:
            self.stitcher.apply(x)
            reuse = self.prefix_bytes > 0
            while missing:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise SearchOutOfTime
                plans = {u: self._reference(x, u) if reuse else (0, None, None) for u in missing}
                length, (start, ref, _) = missing[0][1], plans[missing[0]]
                batch = [u for u in missing if u[1] == length and plans[u][:2] == (start, ref)][: self.batch_size]
                init, heads = None, [[] for _ in batch]
                if ref is not None:
                    self.states.move_to_end(ref)
                    kept = [self.states[ref][plans[u][2]] for u in batch]
                    init = torch.stack([layers[start][:length] for layers in kept])
                    heads = [[t[:length] for t in layers[:start]] for layers in kept]
                # the block inputs of this forward are kept only when they fit in prefix_bytes
                hd = self.dense_h[0]
                record = reuse and (len(batch) * length * hd.shape[-1] * hd.element_size() * (len(self.blocks) - start)
                                    <= self.prefix_bytes)
                h, rec = self._forward([j for j, _ in batch], length, start=start, init=init, record=record)
                self.evaluations += len(batch)
                self.tokens_evaluated += len(batch) * length
                self.blocks_run += len(batch) * (len(self.blocks) - start)
                for k, u in enumerate(batch):
                    done[u] = self._kl(u[0], h[k])
                    if record:
                        self._keep_states(x, u, heads[k] + [r[k] for r in rec])
                missing = [u for u in missing if u not in done]
        return sum(done[u] for u in units) / self.tokens(step)


def _pass_hidden(*args: Any, **kwargs: Any) -> torch.Tensor:
    """A skipped block's forward (prefix reuse): its input, unchanged."""
    return args[0] if args else kwargs["hidden_states"]


# ---------------------------------------------------------------------------------------------- the search
@dataclass
class SearchResult:
    """What :class:`EvolutionarySearch` found: the best candidate (``levels``: rung index per part, attention and
    FFN of layer 0 first), its ``plan``, the explicit ``schedule`` that reproduces it, the evolution, the budget and
    the time spent (``seconds``: ``database``, ``search``)."""

    levels: tuple[int, ...]
    plan: PruningPlan
    schedule: list[list[float]]
    evolution: EvolutionResult
    budget: Budget
    removed: int
    fitness_tokens: list[int]
    evaluations: int
    tokens_evaluated: int
    seconds: dict[str, float]
    settings: dict[str, Any]

    def to_record(self, final: str) -> dict:
        """The ``search`` entry of :class:`~optimum_slimgpt.PruningRecord` (plain JSON)."""
        ev = self.evolution
        r6 = lambda v: float(f"{v:.6g}")  # noqa: E731
        return {
            "schedule": self.schedule, "levels": list(self.levels), "final": final, "settings": dict(self.settings),
            "budget": {"total": self.budget.total, "target": round(self.budget.target, 1),
                       "width": round(self.budget.width, 1), "removed": self.removed},
            "fitness": r6(ev.fitness), "fitness_history": [r6(v) for v in ev.history],
            "start_fitness": [r6(v) for v in ev.starts], "generations": ev.generations, "accepted": ev.accepted,
            "out_of_time": ev.out_of_time, "evaluations": self.evaluations, "tokens_evaluated": self.tokens_evaluated,
            "fitness_tokens": self.fitness_tokens,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }


class EvolutionarySearch:
    """One ``schedule="search"`` run inside :meth:`SlimGPTPruner.prune_model` (see the module docstring).

    ``EvolutionarySearch(pruner, run, data)``; :meth:`build_database` (dense block inputs, every part at every
    rung); :meth:`search` (returns a :class:`SearchResult`, the model dense again); :meth:`stitch_final` (the best
    candidate for good, with the block reports). :meth:`close` frees the database (and its folder)."""

    def __init__(self, pruner: "SlimGPTPruner", run: "_Run", data: torch.Tensor) -> None:
        self.pruner, self.run, self.data, self.config = pruner, run, data, pruner.config
        self.ladders = search_ladders(run.adapter, run.blocks, run.model.config, self.config)
        self.geoms = [run.adapter.geometry(b, run.model.config) for b in run.blocks]
        self.budget = budget_for(self.ladders, sum(g.total_params for g in self.geoms), self.config.pruning_ratio)
        fitness_windows(self.config, data.shape[0], data.shape[1])
        nbytes = database_bytes(run.adapter, run.blocks, run.model.config, self.ladders,
                                bias=run.method.output_bias(self.config))
        on_disk = check_database_room(nbytes, self.config)
        self._tmp = (Path(tempfile.mkdtemp(prefix="slimgpt-levels-", dir=_mkdir(self.config.search_offload_dir)))
                     if on_disk else None)
        home = next((p.device for p in run.blocks[0].parameters()), torch.device("cpu"))
        self.db = LevelDatabase(self._tmp, device=home)
        self.result: Optional[SearchResult] = None
        self.seconds: dict[str, float] = {}

    def close(self) -> None:
        """Drop the database (and remove its folder when it was on disk)."""
        self.db = LevelDatabase()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------ 1. the level database
    @torch.no_grad()
    def build_database(self, inps: list[torch.Tensor], layer_kwargs: list[list[dict]]) -> None:
        """Every block's parts pruned at every rung of their ladders by the method's solver, on the dense block
        inputs (the blocks run dense, layer by layer, on copies of the captured inputs; no weight changes)."""
        from transformers.utils.logging import tqdm

        from .pruner import _PARTS, _observe_dense_block

        t0 = time.perf_counter()
        run, pruner, c = self.run, self.pruner, self.config
        dev, n = run.store.device, len(run.blocks)
        cur = list(inps)
        propagated = c.search_database_inputs == "propagated"
        bar = tqdm(range(n), desc=f"{pruner.label} level database", unit="block")
        try:
            if propagated:
                self._propagated_database(bar, cur, layer_kwargs)
            else:
                for i in bar:
                    block = run.blocks[i]
                    lads = {lad.part: lad for lad in self.ladders if lad.layer == i}
                    parts = [p for p in _PARTS if any(r.removed > 0 for r in lads[p.name].rungs)]
                    with pruner._on_device(block, dev):
                        stats = _observe_dense_block(run, block, i, parts, c, layer_kwargs[i], cur)
                        for part in parts:
                            self.db.put_part(i, part.name, self._variants(i, block, part, lads[part.name],
                                                                           stats.pop(part.name)))
        finally:
            bar.close()
        self.seconds["database"] = time.perf_counter() - t0
        logger.info("level database (%s inputs): %d variants, %.1f MiB%s, %.1f s", c.search_database_inputs, sum(
            sum(r.removed > 0 for r in lad.rungs) for lad in self.ladders), self.db.nbytes / 2**20,
            f" in {self._tmp}" if self._tmp else "", self.seconds["database"])

    def _propagated_database(self, bar, cur: list[torch.Tensor], layer_kwargs: list[list[dict]]) -> None:
        """``search_database_inputs="propagated"``: the block loop at the starting candidate's levels (the first of
        :meth:`starts`), except that each part is solved at every rung: per block, the attention is observed on the
        propagated inputs and solved at every rung, then stitched at the start's rung; the FFN is observed with that
        attention and solved at every rung, then stitched at its start rung; the block's outputs at the start's
        levels are the next block's inputs. The dense weights are back in place after every block."""
        import dataclasses

        from .pruner import _PARTS

        run, pruner, c = self.run, self.pruner, self.config
        adapter, dev, n = run.adapter, run.store.device, len(run.blocks)
        start = self.starts()[0]
        stitcher = Stitcher(adapter, run.blocks, run.model.config, self.ladders, self.db)
        for i in bar:
            block, kw = run.blocks[i], layer_kwargs[i]
            lads = {lad.part: (p, lad) for p, lad in enumerate(self.ladders) if lad.layer == i}
            keep_residual = pruner._keeps_residual(run, block, i)
            with pruner._on_device(block, dev):
                residual = None
                try:
                    for part in _PARTS:
                        p, lad = lads[part.name]
                        if not any(r.removed > 0 for r in lad.rungs):
                            continue
                        observers = run.method.observers(part.name, c)
                        stats: dict = {}
                        if observers:
                            entry = adapter.mlp_tail_entry(block) if keep_residual and part.name == "ffn" else None
                            stats, residual = pruner._observe(run, part, block, observers, cur, kw,
                                                              keep_input_of=entry)
                        variants = self._variants(i, block, part, lad, stats)
                        self.db.put_part(i, part.name, variants)
                        v = variants.get(start[p])
                        if v is not None and v.weight.device != dev:
                            v = dataclasses.replace(v, weight=v.weight.to(dev),
                                                    bias=None if v.bias is None else v.bias.to(dev))
                        stitcher.set_part(i, part.name, v)
                    if i < n - 1:  # the next block's inputs: this block at the start's levels
                        outs = pruner._tail_outputs(run, block, residual, cur, kw) if residual else None
                        cur[:] = outs if outs is not None else pruner._run_block(run, block, cur, kw)
                finally:
                    for part in _PARTS:
                        stitcher.set_part(i, part.name, None)

    def _variants(self, i: int, block, part, ladder: PartLadder, stats: dict) -> dict[int, Variant]:
        run, c = self.run, self.config
        adapter, mconfig = run.adapter, run.model.config
        out = part.out_proj(adapter, block)
        home = self.db.device
        lay = adapter.head_layout(block, mconfig)
        todo = [k for k, r in enumerate(ladder.rungs) if r.removed > 0]
        variants: dict[int, Variant] = {}
        for k in todo:
            r = ladder.rungs[k]
            lp = LayerPlan(ratio=r.ratio, heads=r.heads, kv_heads=r.kv_heads, channels=r.channels,
                           head_options=[tuple(o) for o in r.options])
            st = stats if k == todo[-1] else copy.deepcopy(stats)  # solvers may take the Hessian over
            name = adapter.layout.o_proj if part.name == "attention" else adapter.layout.channel_out
            res = part.solve(run.method, part.task(
                adapter, block, mconfig, lp, layer=i, W=out.weight.detach(), stats=st, config=c, spill_dir=None,
                bias=None if out.bias is None else out.bias.detach().float(), name=f"layer {i} {name} level {r.ratio}"))
            if part.name == "attention":
                imap = adapter.head_index_map(block, lay.head_dim, res.kept, res.kept_kv, lay.num_heads, lay.num_kv_heads)
            else:
                imap = adapter.channel_index_map(block, res.kept, adapter.num_channels(block))
            cols = next(index for lin, dim, index, _ in imap if lin is out and dim == 1)
            w = res.W.to(out.weight.dtype).index_select(1, cols.to(res.W.device)).contiguous().to(home)
            bias = None if res.bias is None else res.bias.to(dtype=out.weight.dtype, device=home)
            variants[k] = Variant(list(res.kept), None if res.kept_kv is None else list(res.kept_kv), w, bias,
                                  float(res.error), None if res.option is None else tuple(res.option))
        return variants

    # ------------------------------------------------------------------ 2. the search
    def starts(self) -> list[tuple[int, ...]]:
        """The starting candidates: the package's default schedule (``log_increase``) and ``uniform``, each mapped to
        the nearest rungs and repaired into the budget band (duplicates once)."""
        import random

        c = self.config
        rng = random.Random(c.search_seed)
        out: list[tuple[int, ...]] = []
        for kind in ("log_increase", "uniform"):
            try:
                plan = solve_schedule(self.geoms, c.pruning_ratio, kind, spread=c.schedule_spread,
                                      max_layer_ratio=c.max_layer_ratio, prune_heads=c.prune_heads,
                                      prune_ffn=c.prune_ffn, min_heads=c.min_heads, min_channels=c.min_channels,
                                      channel_multiple=c.channel_multiple)
            except ValueError:  # the schedule cannot reach the ratio (max_layer_ratio): start from the other one
                continue
            want = []
            for g, lp in zip(self.geoms, plan.layers):
                want += [g.attention_params - lp.heads * g.params_per_head - lp.kv_heads * g.params_per_kv_head,
                         (g.channels - lp.channels) * g.params_per_channel]
            x = nearest_candidate(self.ladders, want, self.budget, rng)
            if x not in out:
                out.append(x)
        if not out:  # pragma: no cover - budget_for guarantees some candidate: the lowest rungs, repaired
            out.append(nearest_candidate(self.ladders, [0] * len(self.ladders), self.budget, rng))
        return out

    @torch.no_grad()
    def search(self) -> SearchResult:
        """The (1+λ) search; the model is dense again when it returns or fails."""
        from transformers.utils.logging import tqdm

        c, run = self.config, self.run
        t0 = time.perf_counter()
        deadline = None if c.search_minutes is None else time.monotonic() + 60 * c.search_minutes
        stitcher = Stitcher(run.adapter, run.blocks, run.model.config, self.ladders, self.db)
        bar = tqdm(total=c.search_generations, desc=f"{self.pruner.label} search", unit="gen")
        restore = _prepare_forward(run.model)
        try:
            fitness = KLFitness(run.model, self.data, c.search_tokens, stitcher, batch_size=c.batch_size)
            starts = self.starts()
            fitness(starts[0], len(c.search_tokens) - 1)  # the first parent, whatever the time budget
            fitness.deadline = deadline

            def on_generation(gen: int, best: float) -> None:
                bar.update(1)
                bar.set_postfix(kl=f"{best:.5f}")

            evo = evolve(starts, fitness, self.ladders, self.budget, generations=c.search_generations,
                         offspring=c.search_offspring, survivors=c.search_survivors, seed=c.search_seed,
                         deadline=deadline, on_generation=on_generation)
            evaluations, tokens_evaluated = fitness.evaluations, fitness.tokens_evaluated
            blocks_run = fitness.blocks_run
        finally:
            bar.close()
            stitcher.restore()
            restore()
        if evo.out_of_time:
            logger.info("search_minutes=%s spent after %d generations: keeping the best candidate so far (KL %.5f)",
                        c.search_minutes, evo.generations, evo.fitness)
        self.seconds["search"] = time.perf_counter() - t0
        schedule = profile_schedule(self.ladders, evo.best)
        plan = solve_schedule(self.geoms, c.pruning_ratio, schedule, prune_heads=c.prune_heads, prune_ffn=c.prune_ffn,
                              min_heads=c.min_heads, min_channels=c.min_channels, channel_multiple=c.channel_multiple)
        for lp, lad_a, lad_f, (ka, kf) in zip(plan.layers, self.ladders[0::2], self.ladders[1::2],
                                              zip(evo.best[0::2], evo.best[1::2])):
            ra, rf = lad_a.rungs[ka], lad_f.rungs[kf]
            if (lp.heads, lp.kv_heads, lp.channels) != (ra.heads, ra.kv_heads, rf.channels):  # pragma: no cover
                raise RuntimeError("the searched profile does not reproduce its sizes through the explicit schedule")
        settings = {"levels": list(c.search_levels), "database_inputs": c.search_database_inputs,
                    "generations": c.search_generations,
                    "offspring": c.search_offspring, "tokens": list(c.search_tokens),
                    "survivors": list(c.search_survivors), "seed": c.search_seed, "minutes": c.search_minutes}
        self.result = SearchResult(
            levels=evo.best, plan=plan, schedule=schedule, evolution=evo, budget=self.budget,
            removed=removed_params(self.ladders, evo.best), fitness_tokens=list(c.search_tokens),
            evaluations=evaluations, tokens_evaluated=tokens_evaluated, seconds=dict(self.seconds), settings=settings)
        logger.info("search: %d generations, KL %.5f -> %.5f, %d window forwards (%d tokens, %.0f%% of their blocks run: "
                    "prefix reuse), %.1f s", evo.generations, evo.history[0], evo.fitness, evaluations, tokens_evaluated,
                    100 * blocks_run / max(1, evaluations * len(run.blocks)), self.seconds["search"])
        return self.result

    # ------------------------------------------------------------------ 3. the stitched final model
    @torch.no_grad()
    def stitch_final(self) -> tuple[list["LayerReport"], list[dict[str, list[int]]]]:
        """Make the model the best candidate for good (the variants' tensors copied into it) and return the block
        reports and the kept indices, as the block loop would."""
        from .pruner import LayerReport

        run, res = self.run, self.result
        adapter, mconfig = run.adapter, run.model.config
        stitcher = Stitcher(adapter, run.blocks, mconfig, self.ladders, self.db)
        reports, kept_all = [], []
        for i, block in enumerate(run.blocks):
            t = time.perf_counter()
            geom, lay, lp = self.geoms[i], adapter.head_layout(block, mconfig), res.plan.layers[i]
            report = LayerReport(index=i, ratio=lp.ratio, heads=(lay.num_heads, lp.heads),
                                 kv_heads=(lay.num_kv_heads, lp.kv_heads), channels=(geom.channels, lp.channels),
                                 params=(geom.total_params, geom.params(lp.heads, lp.kv_heads, lp.channels)))
            kept = {"heads": list(range(lay.num_heads)), "kv_heads": list(range(lay.num_kv_heads)),
                    "channels": list(range(geom.channels))}
            for p in (2 * i, 2 * i + 1):
                lad = self.ladders[p]
                v = self.db.get(i, lad.part, res.levels[p])
                run.block, run.modified = i, True
                stitcher.set_part(i, lad.part, v, copy_tensors=True)
                if v is None:
                    continue
                if lad.part == "attention":
                    report.attn_error, report.head_option = v.error, v.option
                    kept["heads"], kept["kv_heads"] = v.kept, v.kept_kv
                else:
                    report.ffn_error = v.error
                    kept["channels"] = v.kept
            report.seconds = time.perf_counter() - t
            reports.append(report)
            kept_all.append(kept)
        return reports, kept_all


def _mkdir(folder: Optional[str]) -> Optional[str]:
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
    return folder


def _prepare_forward(model: nn.Module):
    """Eval mode and no KV cache for the fitness forwards; returns the undo."""
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    if use_cache is not None:
        model.config.use_cache = False

    def undo() -> None:
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(was_training)

    return undo


def fitness_windows(config, num_windows: int, seqlen: int) -> int:
    """The calibration windows the selection steps read (:func:`fitness_units` of the last step); raises
    ``ValueError`` when the calibration data have fewer."""
    need = 1 + max(j for j, _ in fitness_units(config.search_tokens[-1], seqlen))
    if need > num_windows:
        raise ValueError(
            f"search_tokens={config.search_tokens} needs {need} calibration windows of {seqlen} tokens for its last "
            f"selection step, but the calibration data have {num_windows}: raise num_samples or lower search_tokens")
    return need


def searched_schedule(source: Any) -> list[list[float]]:
    """The explicit per-layer schedule (``[[attention_ratio, ffn_ratio], ...]``) that a ``schedule="search"`` run
    found, from a :class:`~optimum_slimgpt.PruningRecord`, its dict, a model (its ``config.pruning_config``) or a
    saved checkpoint folder. ``SlimGPTConfig(schedule=searched_schedule(...))`` reuses it without searching."""
    from .modeling import PruningRecord

    record = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        cfg = path / "config.json" if path.is_dir() else path
        if not cfg.exists():
            raise ValueError(f"{cfg} not found: give a saved checkpoint folder or its config.json")
        raw = json.loads(cfg.read_text(encoding="utf-8")).get("pruning_config")
        record = PruningRecord.from_dict(raw) if raw else None
    elif isinstance(source, dict):
        record = PruningRecord.from_dict(source)
    elif isinstance(source, nn.Module):
        record = PruningRecord.of(source.config)
    if not isinstance(record, PruningRecord) or not record.search or "schedule" not in record.search:
        raise ValueError("no searched profile here: the model was not pruned with schedule='search'")
    return [list(map(float, p)) for p in record.search["schedule"]]


def describe_search(search: dict) -> list[str]:
    """Lines for ``optimum-slimgpt info`` from a record's ``search`` entry: the run, its settings, the budget, the
    fitness history (at most 11 values) and the ``--schedule`` argument that reuses the profile."""
    st, b, h = search.get("settings", {}), search.get("budget", {}), search.get("fitness_history", [])
    tokens = search.get("fitness_tokens") or [None]
    sec = search.get("seconds", {})
    lines = [
        f"search: {search.get('generations')} generations ({search.get('accepted')} accepted"
        + (", stopped by search_minutes" if search.get("out_of_time") else "") + f"), {search.get('evaluations')} "
        f"window forwards ({search.get('tokens_evaluated')} tokens), KL {h[0] if h else '?'} -> {search.get('fitness')} on {tokens[-1]} tokens; final model: "
        f"{search.get('final')}; database {sec.get('database')} s, search {sec.get('search')} s",
        "search settings: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in st.items()),
    ]
    if b:
        lines.append(f"search budget: removed {b.get('removed'):,} of {b.get('total'):,} block parameters (at least "
                     f"{b.get('target'):,.0f}, at most {b.get('width'):,.0f} more: the largest step of a part)")
    if h:
        idx = sorted({round(k * (len(h) - 1) / 10) for k in range(11)})
        lines.append("fitness history (generation: KL): " + ", ".join(f"{k}: {h[k]}" for k in idx))
    if search.get("schedule"):
        lines.append("reuse the profile: --schedule " + ",".join(f"{a}:{f}" for a, f in search["schedule"]))
    return lines
