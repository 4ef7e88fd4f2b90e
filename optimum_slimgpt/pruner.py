"""The pruner: calibration capture, the block-by-block loop, and surgery.

Flow of :meth:`SlimGPTPruner.prune_model` (optimum GPTQ's layer loop, without its warts):

1. Resolve the family adapter and the method (by the config's type), and plan the per-layer sizes
   (:func:`solvers.solve_schedule`).
2. Capture, for every calibration batch, the hidden states entering block 0 and the keyword arguments of
   *every* block (attention masks differ between sliding- and full-attention layers): forward pre-hooks on all
   blocks record their inputs, the blocks in between are short-circuited, and the last block's hook raises a
   private exception (never a swallowed ``ValueError``).
3. For each block, on ``config.device``, for each part (attention heads, then FFN channels) in one routine:
   attach the method's observers and run one calibration pass that stops once they have all seen their input
   -> let the method choose and repair -> write back and slice (or mask). The FFN pass also keeps the residual
   stream entering the MLP, so the block outputs that feed block ``i+1`` (calibrated on the already-pruned
   blocks ``0..i``) need only the MLP tail (``FamilyAdapter.mlp_tail``), not a third run of the attention.
4. Record the per-layer sizes and provenance (:class:`~optimum_slimgpt.modeling.PruningRecord`) and turn the
   model into the family's per-layer pruned class (see :mod:`optimum_slimgpt.modeling`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn

from . import __version__
from .calibration import check_dataset_source, describe_source, get_calibration_data, resolve_dataset
from .config import PruningConfig, SlimGPTConfig
from .families import FamilyAdapter, get_adapter
from .families.registry import record_layout
from .methods import AttentionTask, FFNTask, Observer, PruneResult, PruningMethod, get_method
from .modeling import PruningRecord, UnusableModelError, mark_unusable, to_pruned_model, unusable_reason
from .solvers import full_precision_matmul, solve_schedule
from .solvers.hessian import all_finite
from .solvers.schedule import LayerPlan, PruningPlan, check_kv_head_multiple, layer_importance_shape

logger = logging.getLogger(__name__)

__all__ = ["SlimGPTPruner", "PruningSummary", "LayerReport", "ActivationStore"]


class _StopForward(Exception):
    """Raised by a hook to end a calibration forward early (input capture, statistics passes)."""


@dataclass
class LayerReport:
    """What happened to one decoder block."""

    index: int
    ratio: float
    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    channels: tuple[int, int]
    params: tuple[int, int]
    attn_error: float = 0.0
    ffn_error: float = 0.0
    head_option: Optional[tuple[int, int]] = None
    seconds: float = 0.0


@dataclass
class PruningSummary:
    """Per-layer result of a run plus totals. ``attn_error``/``ffn_error`` are relative reconstruction errors
    ``||(W0 − W) X||² / ||W0 X||²`` of ``o_proj``/``down_proj`` on the calibration inputs.
    ``mlp_tail``: whether the block outputs were produced from the kept residual stream by the MLP tail
    (``True``: checked bit-identical to the block's forward and used; ``False``: the check failed, whole blocks
    ran; ``None``: not tried, whole blocks ran)."""

    method: str
    target_ratio: float
    achieved_ratio: float
    block_params_before: int
    block_params_after: int
    total_params_before: int
    total_params_after: int
    seconds: float
    layers: list[LayerReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    mlp_tail: Optional[bool] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [f"{'layer':>5} {'ratio':>6} {'heads':>9} {'kv':>7} {'channels':>13} {'attn err':>9} {'ffn err':>9}"]
        for r in self.layers:
            rows.append(
                f"{r.index:>5} {r.ratio:>6.3f} {r.heads[0]:>4}->{r.heads[1]:<3} {r.kv_heads[0]:>3}->{r.kv_heads[1]:<2} "
                f"{r.channels[0]:>6}->{r.channels[1]:<5} {r.attn_error:>9.4f} {r.ffn_error:>9.4f}"
            )
        rows.append(
            f"block parameters {self.block_params_before:,} -> {self.block_params_after:,} "
            f"(removed {self.achieved_ratio:.2%}, target {self.target_ratio:.2%}); "
            f"all parameters {self.total_params_before:,} -> {self.total_params_after:,}; {self.seconds:.1f} s"
        )
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- helpers
def _nested_to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_nested_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_nested_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _nested_to(v, device) for k, v in obj.items()}
    return obj


def _identity_forward(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _first_param_device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _move_all_but(module: nn.Module, skip: nn.Module, device) -> Callable[[], None]:
    """Move every parameter/buffer outside ``skip`` to ``device``; return a function that moves them back."""
    device = torch.device(device)
    undo: list[Callable[[], None]] = []

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if child is skip:
                continue
            if any(x is skip for x in child.modules()):
                walk(child)
            elif (home := _first_param_device(child)).type == "meta":
                continue  # not loaded (the streaming driver's output head): never runs while capturing
            elif home != device:
                child.to(device)
                undo.append(lambda child=child, home=home: child.to(home))
        for store in (m._parameters, m._buffers):
            for t in store.values():
                if t is not None and t.device != device and t.device.type != "meta":
                    home = t.device
                    t.data = t.data.to(device)
                    undo.append(lambda t=t, home=home: setattr(t, "data", t.data.to(home)))

    try:
        walk(module)
    except BaseException:
        for f in reversed(undo):
            f()
        raise
    return lambda: [f() for f in reversed(undo)]


def _output_tensor(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def _finite_output(y: torch.Tensor, run: "_Run") -> torch.Tensor:
    """``y`` (a block's output, the next block's input) if it is finite; else a clear error (fp16 overflow)."""
    if not bool(torch.isfinite(y).all()):
        raise FloatingPointError(
            f"decoder block {run.block} produced NaN/Inf activations in {y.dtype} on the calibration data"
            + (" (float16 overflows easily: load the model in bfloat16 or float32 to prune it)"
               if y.dtype == torch.float16 else ""))
    return y


def _observe_dense_block(run: "_Run", block, i: int, parts, config, kwargs: list, cur: list) -> dict[str, dict]:
    """Run the dense block ``i`` (already on its device) on every calibration batch with the method's observers of
    ``parts`` hooked on; ``cur`` (the stored inputs) is replaced by the block's outputs, the next block's inputs
    (``None`` after the last block). Returns ``{part name: {statistic: accumulator}}``."""
    adapter, dev, n = run.adapter, run.store.device, len(run.blocks)
    stats: dict[str, dict] = {}
    handles = []
    try:
        for part in parts:
            sites = {"output": part.out_proj(adapter, block), "input": part.in_linear(adapter, block)}
            obs = run.method.observers(part.name, config)
            stats[part.name] = {k: o.make(sites[o.site].in_features, dev) for k, o in obs.items()}
            for k, o in obs.items():
                handles.append(sites[o.site].register_forward_pre_hook(
                    lambda m, a, acc=stats[part.name][k]: acc.add(a[0])))
        for b, kw in enumerate(kwargs):
            y = _output_tensor(block(run.store.fetch(cur[b]), **_nested_to(kw, dev)))
            cur[b] = run.store.keep(_finite_output(y, run)) if i < n - 1 else None
    finally:
        for h in handles:
            h.remove()
    return stats


class ActivationStore:
    """Where calibration activations live between blocks: on the compute ``device``, or (``offload``) in
    page-locked CPU memory, so that the copies back to a GPU are fast."""

    def __init__(self, device: torch.device, offload: bool = False) -> None:
        self.device = device
        self.home = torch.device("cpu") if offload else device

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        if self.home.type == "cpu" and t.device.type == "cuda":
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            return out.copy_(t)
        return t.to(self.home)

    def keep_all(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pin tensors already on the CPU (e.g. embeddings computed there) when a GPU will read them."""
        if self.home.type == "cpu" and self.device.type == "cuda":
            return [t if t.is_pinned() else t.pin_memory() for t in ts]
        return ts

    def fetch(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)


class Stopwatch:
    """Accumulated wall-clock seconds per phase: ``with stopwatch("capture"): ...``."""

    def __init__(self, *keys: str) -> None:
        self.totals: dict[str, float] = dict.fromkeys(keys, 0.0)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - t


@dataclass
class _Run:
    """The state of one ``prune_model`` call."""

    model: nn.Module
    adapter: FamilyAdapter
    blocks: nn.ModuleList
    method: PruningMethod
    store: ActivationStore
    clock: Stopwatch
    mlp_tail: Optional[bool] = None  # see PruningSummary.mlp_tail
    modified: bool = False  # a block's weights were written: a failure from here on leaves the model inconsistent
    block: int = -1  # the block being pruned
    # the streaming driver (optimum_slimgpt.streaming) loads each block before and writes it out after its turn;
    # the in-memory run does neither. ``start``: the first block to prune (a resumed run).
    load_block: Optional[Callable[[int, nn.Module], None]] = None
    finish_block: Optional[Callable[[int, nn.Module, list, "LayerReport", dict], None]] = None
    start: int = 0
    # the low-memory solve: a folder where solvers may spill a Hessian so they can solve in its storage (streaming)
    spill_dir: Optional[str] = None


# ---------------------------------------------------------------------------------------------- parts
class _Part:
    """One prunable part of a block (its output projection, input site, task, surgery); the pruner runs
    every part through the same routine, :meth:`SlimGPTPruner._prune_part`."""

    name = ""
    stats_key = solve_key = ""

    def out_proj(self, adapter: FamilyAdapter, block: nn.Module) -> nn.Linear:
        raise NotImplementedError

    def in_linear(self, adapter: FamilyAdapter, block: nn.Module) -> nn.Linear:
        raise NotImplementedError


class _Attention(_Part):
    name, stats_key, solve_key = "attention", "hessian_attn", "head_solve"

    def out_proj(self, adapter, block):
        return adapter.attn_out_proj(block)

    def in_linear(self, adapter, block):
        return adapter.attn_in_linears(block)[0]

    def todo(self, adapter, block, config, lp: LayerPlan) -> bool:
        return lp.heads < adapter.head_layout(block, config).num_heads

    def task(self, adapter, block, model_config, lp, **kw) -> AttentionTask:
        lay = adapter.head_layout(block, model_config)
        load = lambda: tuple([w.detach().float() for w in ws] for ws in adapter.head_in_weights(block))  # noqa: E731
        return AttentionTask(num_heads=lay.num_heads, num_kv_heads=lay.num_kv_heads, head_dim=lay.head_dim,
                             options=lp.head_options, load_in_weights=load, **kw)

    def solve(self, method: PruningMethod, task) -> PruneResult:
        return method.prune_attention(task)

    def apply(self, adapter, block, config, res: PruneResult, report: LayerReport, kept: dict, mask_only: bool) -> None:
        report.attn_error, report.head_option = res.error, res.option
        report.heads, report.kv_heads = (report.heads[0], len(res.kept)), (report.kv_heads[0], len(res.kept_kv))
        kept["heads"], kept["kv_heads"] = res.kept, res.kept_kv
        if mask_only:
            adapter.mask_heads(block, config, res.kept)
        else:
            adapter.prune_heads(block, config, res.kept, res.kept_kv)


class _FFN(_Part):
    name, stats_key, solve_key = "ffn", "hessian_ffn", "ffn_solve"

    def out_proj(self, adapter, block):
        return adapter.mlp_out_proj(block)

    def in_linear(self, adapter, block):
        return adapter.channel_in_linears(block)[0]

    def todo(self, adapter, block, config, lp: LayerPlan) -> bool:
        return lp.channels < adapter.num_channels(block)

    def task(self, adapter, block, model_config, lp, **kw) -> FFNTask:
        load = lambda: [w.detach().float() for w in adapter.channel_in_weights(block)]  # noqa: E731
        return FFNTask(num_remove=adapter.num_channels(block) - lp.channels, load_in_weights=load, **kw)

    def solve(self, method: PruningMethod, task) -> PruneResult:
        return method.prune_ffn(task)

    def apply(self, adapter, block, config, res: PruneResult, report: LayerReport, kept: dict, mask_only: bool) -> None:
        report.ffn_error = res.error
        kept["channels"] = res.kept
        if mask_only:
            adapter.mask_channels(block, res.kept)
        else:
            adapter.prune_channels(block, res.kept)


_PARTS = (_Attention(), _FFN())


class SlimGPTPruner:
    """Structured pruning of a Hugging Face causal LM with the method its config selects.

    Example::

        pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.2, dataset="wikitext2"))   # or SlimLLMConfig(...)
        model = pruner.prune_model(model, tokenizer)
        print(pruner.summary.table())
        pruner.save(model, "llama-slim")

    Args:
        config: The run's config (:class:`SlimGPTConfig`, :class:`SlimLLMConfig` or a registered method's);
            keyword arguments build a :class:`SlimGPTConfig` when omitted.
        mask_only: Zero the removed columns of ``o_proj``/``down_proj`` instead of slicing the blocks (the
            *masked* model, for checks; it is not made smaller and cannot be saved as pruned).

    After :meth:`prune_model`: :attr:`summary`, :attr:`plan`, :attr:`kept` (per layer, the kept ``heads``,
    ``kv_heads`` and ``channels``) and :attr:`layer_scores` (``schedule="layer_importance"`` only).
    """

    #: Produce a block's outputs from the residual stream kept by its FFN statistics pass (``adapter.mlp_tail``)
    #: instead of running its attention a third time; checked once per run to be bit-identical to the block's
    #: forward (:attr:`PruningSummary.mlp_tail`). ``False`` always runs whole blocks.
    reuse_attention_output: bool = True

    def __init__(self, config: Optional[PruningConfig] = None, *, mask_only: bool = False, **kwargs: Any) -> None:
        if config is None:
            config = SlimGPTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        if not isinstance(config, PruningConfig):
            raise TypeError(f"config must be a PruningConfig (SlimGPTConfig, SlimLLMConfig...), got {type(config).__name__}")
        self.method = get_method(config)
        self.config = config
        self.mask_only = mask_only
        self.summary: Optional[PruningSummary] = None
        self.plan: Optional[PruningPlan] = None
        self.kept: list[dict[str, list[int]]] = []
        #: per-layer mean cosine(input, output) of the dense blocks (``schedule="layer_importance"`` only)
        self.layer_scores: Optional[list[float]] = None
        #: the checkpoint format the planned sizes will be saved in (set when ``export_format`` is checked)
        self.export_plan = None
        #: the dtype of the checkpoint the model was read from, recorded as ``PruningRecord.source_dtype`` (what a
        #: save with ``dtype="auto"`` writes); ``None``: found by :func:`~optimum_slimgpt.saving.source_dtype`
        self.source_dtype: Optional[torch.dtype] = None
        #: what ``config.dataset`` resolved to in the last run (``"auto"``: see ``calibration.resolve_dataset``)
        self._calibration_source = None
        #: what ``schedule="search"`` found (:class:`~optimum_slimgpt.search.SearchResult`), else ``None``
        self.search_result = None

    @property
    def label(self) -> str:
        return type(self.config).label or self.config.method_name

    # ------------------------------------------------------------------ public API
    def plan_model(self, model: nn.Module, layer_scores: Optional[list[float]] = None) -> PruningPlan:
        """The per-layer sizes this config gives for ``model`` (no calibration needed, except for
        ``schedule="layer_importance"``, which needs the dense per-layer ``layer_scores``: mean cosine(input,
        output) of each block, see :attr:`layer_scores` after :meth:`prune_model`)."""
        adapter = get_adapter(model)
        geoms = [adapter.geometry(b, model.config) for b in adapter.get_blocks(model)]
        c = self.config
        shape = None
        if c.schedule == "layer_importance" and layer_scores is not None:
            shape = layer_importance_shape(layer_scores, c.importance_layers, c.importance_alpha, pruning_ratio=c.pruning_ratio)
        return solve_schedule(
            geoms, c.pruning_ratio, c.schedule, spread=c.schedule_spread, max_layer_ratio=c.max_layer_ratio,
            prune_heads=c.prune_heads, prune_ffn=c.prune_ffn, min_heads=c.min_heads, min_channels=c.min_channels,
            channel_multiple=c.channel_multiple, kv_head_multiple=c.kv_head_multiple, shape=shape,
        )

    @torch.no_grad()
    def prune_model(self, model: nn.Module, tokenizer=None, *, calibration: Optional[torch.Tensor] = None,
                    save_dir: Union[str, os.PathLike, None] = None, export_format: Optional[str] = None,
                    overwrite: bool = False) -> nn.Module:
        """Prune ``model`` in place and return it.

        Args:
            model: A Hugging Face ``*ForCausalLM`` of a registered family.
            tokenizer: Needed unless the calibration data are token ids.
            calibration: Optional ``(samples, seqlen)`` token ids overriding ``config.dataset``.
            save_dir / export_format / overwrite: Where and how the result will be saved, to be checked *before*
                any work (see :meth:`preflight`); nothing is saved here.

        Before anything changes, :meth:`preflight` checks the config, the model (a registered family, real and
        finite weights: no accelerate disk/CPU offload), the device, the calibration length against
        ``max_position_embeddings``, the plan, and with ``export_format``/``save_dir`` the format and the
        output folder. The calibration token ids are checked against the vocabulary once they are known.

        The run is transactional: if it fails (any exception, ``KeyboardInterrupt`` included) before a weight was
        written, the model is left as it was; after that, the model is marked unusable (its forward raises, and
        ``save``/``prune_model`` refuse it), so a half-pruned model cannot be used or saved by mistake.

        Float32 matmuls run in full precision while pruning (TF32 off, restored afterwards): see
        :func:`~optimum_slimgpt.solvers.full_precision_matmul`.
        """
        with full_precision_matmul():
            return self._prune_model(model, tokenizer, calibration, save_dir, export_format, overwrite)

    def estimate(self, model: nn.Module, tokenizer=None, *, calibration: Optional[torch.Tensor] = None):
        """How long :meth:`prune_model` will take on this model and device, from a short probe (writing a few
        calibration tokens when the data are generated, the capture of one batch, and one block pruned on a copy):
        a :class:`~optimum_slimgpt.estimate.PruneEstimate` (``print`` it; on a CPU past 10 minutes it suggests
        smaller settings). The model is not changed. See :mod:`optimum_slimgpt.estimate`."""
        from .estimate import estimate_prune

        with full_precision_matmul():
            return estimate_prune(self, model, tokenizer, calibration=calibration)

    def preflight(self, model: nn.Module, *, calibration: Optional[torch.Tensor] = None,
                  save_dir: Union[str, os.PathLike, None] = None, export_format: Optional[str] = None,
                  overwrite: bool = False) -> Optional[PruningPlan]:
        """Every check :meth:`prune_model` makes before it starts, without pruning or changing ``model``.

        Raises ``ValueError``/``TypeError`` (or :class:`~optimum_slimgpt.saving.ExportError`,
        :class:`~optimum_slimgpt.modeling.UnusableModelError`) naming the problem: a bad config field, an
        unsupported family, weights on the meta device (offloaded) or with NaN/Inf, a device that does not
        exist, calibration windows longer than ``max_position_embeddings`` or token ids outside the vocabulary,
        a ratio the schedule cannot meet, an ``export_format`` that cannot hold the planned sizes, and a
        ``save_dir`` that is not writable, is the model's own folder (or inside it, or contains it) or lacks the
        disk space. Returns the plan (``None`` for ``schedule="layer_importance"``, whose plan needs the dense
        calibration pass; its export check then runs inside :meth:`prune_model`, still before any change).
        """
        return self._preflight(model, calibration, save_dir, export_format, overwrite)[3]

    # ------------------------------------------------------------------ checks
    def _preflight(self, model, calibration, save_dir, export_format, overwrite):
        from .saving import check_output_dir

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (why := unusable_reason(model)) is not None:
            raise UnusableModelError(why)
        c = self.config
        c.validate()  # fields may have been reassigned since construction
        adapter = get_adapter(model)
        blocks = adapter.get_blocks(model)
        self._check_materialised(model)
        device = self._resolve_device(_first_param_device(blocks[0]))
        self._check_finite(model)
        self._check_seqlen(model, adapter, calibration.shape[1] if isinstance(calibration, torch.Tensor) else None)
        if calibration is not None:
            self._check_tokens(model, calibration)
        if calibration is None:  # a local calibration file: readable text with its field, before any work
            check_dataset_source(c.dataset, c.dataset_text_field)
        if self._dense_plan(c):  # the plan needs a dense pass: check now what it can be checked without
            plan = None
            check_kv_head_multiple([adapter.geometry(b, model.config) for b in blocks], c.kv_head_multiple)
        else:
            plan = self.plan_model(model)
        if c.schedule == "search":
            self._check_search(model, adapter, blocks, calibration)
        if export_format is not None and plan is not None:
            self._check_export(model, adapter, blocks, plan, export_format)
        if save_dir is not None:
            source = getattr(model.config, "name_or_path", None) or None
            check_output_dir(save_dir, overwrite=overwrite, sources=[source] if source else [],
                             needed_bytes=self._estimate_bytes(model, plan))
        return adapter, blocks, device, plan

    def _dense_plan(self, c: PruningConfig) -> bool:
        """The plan needs a dense calibration pass (``layer_importance``, ``search``, or a method that allocates
        globally)."""
        return c.schedule in ("layer_importance", "search") or self.method.plans_globally(c)

    def _check_search(self, model, adapter: FamilyAdapter, blocks, calibration) -> None:
        """``schedule="search"`` before any work: a method that sets the sizes itself, the masked model, a budget the
        level grid cannot meet, too few calibration windows for the selection steps, no room for the database."""
        from .search import check_database_room, database_bytes, fitness_windows, search_ladders
        from .solvers.allocation import budget_for

        c = self.config
        if self.method.plans_globally(c):
            raise ValueError(f"schedule='search' sets the per-layer sizes, and so does method {c.method_name!r} "
                             "(global allocation): use one of them (e.g. global_allocation=False)")
        if self.mask_only:
            raise ValueError("schedule='search' is not available with mask_only=True (the stitched candidates are "
                             "sliced): prune with its profile as an explicit schedule instead")
        ladders = search_ladders(adapter, blocks, model.config, c)
        budget_for(ladders, sum(adapter.geometry(b, model.config).total_params for b in blocks), c.pruning_ratio)
        if isinstance(calibration, torch.Tensor):
            fitness_windows(c, calibration.shape[0], calibration.shape[1])
        elif isinstance(c.dataset, torch.Tensor):
            fitness_windows(c, c.dataset.shape[0], c.dataset.shape[1])
        else:
            fitness_windows(c, c.num_samples, c.seqlen)
        check_database_room(database_bytes(adapter, blocks, model.config, ladders, bias=self.method.output_bias(c)), c)

    @staticmethod
    def _check_materialised(model: nn.Module) -> None:
        meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
        if meta:
            raise ValueError(
                f"{len(meta)} weights of the model are on the meta device (e.g. {meta[0]!r}): it was loaded with "
                "accelerate disk/CPU offload (device_map with 'cpu'/'disk' entries, or init_empty_weights). The "
                "pruner rewrites the weights themselves and cannot prune offloaded blocks: load the model onto "
                "devices that hold it (device_map=None, or a map of GPUs only), then prune")

    def _resolve_device(self, default: torch.device) -> torch.device:
        """``config.device`` (else ``default``), checked to exist on this machine."""
        c = self.config
        device = torch.device(c.device) if c.device else default
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError, ValueError) as e:
            avail = "CUDA is not available" if not torch.cuda.is_available() else \
                f"{torch.cuda.device_count()} CUDA device(s)"
            raise ValueError(f"device={str(c.device or device)!r} cannot be used on this machine ({avail}): "
                             f"{str(e).splitlines()[0]}") from e
        return device

    def _check_seqlen(self, model, adapter: FamilyAdapter, seqlen: Optional[int]) -> None:
        c = self.config
        if seqlen is None:
            seqlen = c.dataset.shape[1] if isinstance(c.dataset, torch.Tensor) else c.seqlen
        mpe = getattr(adapter.text_config(model.config), "max_position_embeddings", None)
        if isinstance(mpe, int) and seqlen > mpe:
            raise ValueError(f"calibration windows of {seqlen} tokens are longer than the model's "
                             f"max_position_embeddings={mpe}: use seqlen <= {mpe}")

    @staticmethod
    def _check_tokens(model, data) -> None:
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.numel() == 0:
            raise ValueError("calibration data must be a non-empty (samples, seqlen) tensor of token ids")
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise TypeError(f"calibration token ids must be an integer tensor, got {data.dtype}")
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = getattr(emb, "num_embeddings", None) or getattr(model.config, "vocab_size", None)
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or (vocab is not None and hi >= vocab):
            raise ValueError(f"calibration token ids must lie in [0, {vocab}) (the model's vocabulary), got ids from "
                             f"{lo} to {hi}: was the data tokenised with another tokenizer?")

    def _check_export(self, model, adapter: FamilyAdapter, blocks, plan: PruningPlan, export_format: str):
        """Dry run of the export: the model's structure is rebuilt on the meta device, cut to the planned sizes
        and handed to :func:`~optimum_slimgpt.saving.plan_export`, which raises what a save would raise. The
        resulting :class:`~optimum_slimgpt.saving.ExportPlan` is kept as :attr:`export_plan`."""
        from accelerate import init_empty_weights

        from .saving import plan_export

        cfg = copy.deepcopy(model.config)
        with init_empty_weights(include_buffers=True):
            skeleton = type(model)(cfg)
        sk_blocks = adapter.get_blocks(skeleton)
        bias = self.method.output_bias(self.config)
        for block, lp in zip(sk_blocks, plan.layers):
            lay = adapter.head_layout(block, cfg)
            if lp.heads < lay.num_heads or lp.kv_heads < lay.num_kv_heads:
                rep, new_rep = lay.n_rep, lp.heads // max(lp.kv_heads, 1)
                kept_kv = list(range(lp.kv_heads))
                kept = [g * rep + j for g in kept_kv for j in range(new_rep)]
                if adapter.layout.size_keys.get("num_key_value_heads") is None:
                    kept_kv = kept
                adapter.prune_heads(block, cfg, kept, kept_kv)
            if lp.channels < adapter.num_channels(block):
                adapter.prune_channels(block, list(range(lp.channels)))
            if bias:
                for out in (adapter.attn_out_proj(block), adapter.mlp_out_proj(block)):
                    adapter.set_output_bias(out, torch.zeros(out.out_features, device="meta"))
        lay0 = adapter.head_layout(blocks[0], model.config)
        record = self._base_record(model, adapter, blocks, sk_blocks, cfg,
                                   (lay0.num_heads, lay0.num_kv_heads, adapter.num_channels(blocks[0])))
        to_pruned_model(skeleton, adapter, record)
        self.export_plan = plan_export(skeleton, export_format)
        self.export_plan.plain_config = None  # (a config of the meta skeleton: not for use)
        return self.export_plan

    @staticmethod
    def _estimate_bytes(model: nn.Module, plan: Optional[PruningPlan]) -> int:
        """Bytes of the saved checkpoint: the model's tensors less the planned removal (dense size without a plan)."""
        params = list(model.parameters())
        if not params:
            return 0
        elem = params[0].element_size()
        removed = (plan.params_before - plan.params_after) if plan is not None else 0
        return (sum(p.numel() for p in params) - removed) * elem

    # ------------------------------------------------------------------ the run
    def _prune_model(self, model: nn.Module, tokenizer, calibration, save_dir, export_format, overwrite) -> nn.Module:
        t_start = time.perf_counter()
        c = self.config
        self.search_result = None
        adapter, blocks, device, self.plan = self._preflight(model, calibration, save_dir, export_format, overwrite)
        importance = self.plan is None
        total_before = sum(p.numel() for p in model.parameters())
        clock = Stopwatch("hessian_attn", "head_solve", "hessian_ffn", "ffn_solve", "surgery", "forward_out")

        with clock("calibration_data"):
            self._calibration_source = None if calibration is not None else resolve_dataset(c.dataset, tokenizer, model)
            data = calibration if calibration is not None else get_calibration_data(c, tokenizer, model=model)
        self._check_tokens(model, data)
        self._check_seqlen(model, adapter, data.shape[1])

        run = _Run(model, adapter, blocks, self.method, ActivationStore(device, c.offload_activations), clock)
        was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
        model.eval()
        if use_cache is not None:
            model.config.use_cache = False
        try:
            with clock("capture"):
                inps, layer_kwargs = self._capture(run, data)
            reports = None
            if c.schedule == "search":  # the evolutionary search: a level database, then the (1+λ) loop
                reports = self._search(run, data, inps, layer_kwargs, export_format)
            elif importance and self.method.plans_globally(c):  # the method's own allocation (FLAP): one dense pass
                with clock("global_plan"):
                    self.plan = self._global_plan(run, inps, layer_kwargs)
                if export_format is not None:
                    self._check_export(model, adapter, blocks, self.plan, export_format)
            elif importance:  # SlimLLM layer ratios: one dense pass over the blocks before any pruning
                with clock("layer_importance"):
                    self.layer_scores = self._layer_cosines(run, inps, layer_kwargs)
                    self.plan = self.plan_model(model, self.layer_scores)
                if export_format is not None:
                    self._check_export(model, adapter, blocks, self.plan, export_format)
            if reports is None:  # the block loop at the plan's sizes
                reports = self._prune_blocks(run, inps, layer_kwargs)
            del inps, layer_kwargs
            self._finish(run, reports, data, calibration is not None, total_before, t_start)
        except BaseException as e:
            if run.modified:
                where = f"block {run.block}" if 0 <= run.block < len(blocks) else "after the block loop"
                mark_unusable(model, f"{type(e).__name__} in {where}: {str(e).splitlines()[0] if str(e) else ''}",
                              blocks)
                logger.error("%s pruning failed in %s after blocks were changed: the model is marked unusable; "
                             "reload it", self.label, where)
            raise
        finally:
            if use_cache is not None:
                model.config.use_cache = use_cache
            model.train(was_training)
        logger.info("%s pruning done: removed %.2f%% of the block parameters (target %.2f%%) in %.1f s; "
                    "per-layer sizes in pruner.summary.table()", self.label, 100 * self.summary.achieved_ratio,
                    100 * c.pruning_ratio, self.summary.seconds)
        logger.debug("%s", self.summary.table())
        return model

    def _search(self, run: _Run, data, inps, layer_kwargs, export_format) -> Optional[list[LayerReport]]:
        """``schedule="search"`` (:mod:`optimum_slimgpt.search`): the level database on the dense block inputs, the
        (1+λ) search (the model is dense again afterwards) and its plan; with ``search_final="stitched"`` the best
        candidate is stitched into the model and its block reports returned, else ``None`` (the block loop re-prunes
        at the found sizes)."""
        from .search import EvolutionarySearch

        clock = run.clock
        search = EvolutionarySearch(self, run, data)
        try:
            with clock("search_database"):
                search.build_database(inps, layer_kwargs)
            with clock("search"):
                self.search_result = search.search()
            self.plan = self.search_result.plan
            if export_format is not None:
                self._check_export(run.model, run.adapter, run.blocks, self.plan, export_format)
            if self.config.search_final != "stitched":
                return None
            reports, self.kept = search.stitch_final()
            return reports
        finally:
            search.close()

    def _finish(self, run: _Run, reports: list[LayerReport], data, explicit: bool, total_before: int,
                t_start: float) -> None:
        """The summary, the record and the per-layer class, once every block is pruned."""
        c, model = self.config, run.model
        block_after = sum(r.params[1] for r in reports)
        self.summary = PruningSummary(
            method=c.method_name, target_ratio=c.pruning_ratio,
            achieved_ratio=1 - block_after / self.plan.params_before, block_params_before=self.plan.params_before,
            block_params_after=block_after, total_params_before=total_before,
            total_params_after=sum(p.numel() for p in model.parameters()), seconds=time.perf_counter() - t_start,
            layers=reports, timings=run.clock.totals, mlp_tail=run.mlp_tail,
        )
        if not self.mask_only:
            to_pruned_model(model, run.adapter, self._record(model, run.adapter, run.blocks, data, explicit))

    def save(self, model: nn.Module, save_dir, **kwargs: Any):
        """Save a pruned model so that ``AutoModelForCausalLM.from_pretrained(save_dir)`` loads it.

        The weights are saved in the source checkpoint's dtype by default (``dtype="auto"``: bf16 for a bf16 or GGUF
        source, whatever dtype the pruning ran in); ``dtype=None`` keeps the model's, ``dtype="float32"`` (or any
        ``torch.dtype``) chooses. See :func:`optimum_slimgpt.saving.save_pruned_model` for the options.
        """
        from .saving import save_pruned_model

        return save_pruned_model(model, save_dir, **kwargs)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _check_finite(model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not all_finite(p):
                raise ValueError(f"parameter {name!r} contains NaN or Inf values; cannot prune a broken model")

    def _capture(self, run: _Run, data: torch.Tensor):
        """Record block-0 inputs and every block's kwargs for each calibration batch."""
        model, blocks, store = run.model, run.blocks, run.store
        n = len(blocks)
        inps: list[torch.Tensor] = []
        layer_kwargs: list[list[dict]] = [[] for _ in range(n)]

        def make_hook(i: int) -> Callable:
            def hook(module, args, kwargs):
                if len(args) > 1:
                    raise RuntimeError("decoder blocks called with extra positional arguments are not supported")
                hs = args[0] if args else kwargs["hidden_states"]
                layer_kwargs[i].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
                if i == 0:
                    if not bool(torch.isfinite(hs).all()):
                        raise ValueError("the inputs of the first decoder block contain NaN/Inf (broken embeddings?)")
                    inps.append(store.keep(hs.detach()))
                if i == n - 1:
                    raise _StopForward

            return hook

        handles: list = []
        saved_forwards: dict[int, Any] = {}
        restore: Callable[[], Any] = lambda: None  # noqa: E731
        bar = None
        try:  # everything that changes the model happens inside: the finally undoes all of it
            handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
            for j, b in enumerate(list(blocks)[:-1]):
                saved_forwards[j] = b.__dict__.get("forward")
                b.forward = _identity_forward
            device = store.device
            if not hasattr(model, "hf_device_map"):
                restore = _move_all_but(model, blocks, device)
            in_dev = _first_param_device(model.get_input_embeddings()) if hasattr(model, "get_input_embeddings") else device
            bs = self.config.batch_size
            from transformers.utils.logging import tqdm

            bar = tqdm(total=data.shape[0], desc="capturing calibration inputs", unit="window",
                       disable=data.shape[0] <= bs)  # one batch: nothing to follow
            for start in range(0, data.shape[0], bs):
                try:
                    model(input_ids=data[start : start + bs].to(in_dev), use_cache=False)
                except _StopForward:
                    pass
                else:  # pragma: no cover - the hook always fires
                    raise RuntimeError("calibration forward finished without reaching the last decoder block")
                bar.update(min(bs, data.shape[0] - start))
        finally:
            if bar is not None:
                bar.close()
            for h in handles:
                h.remove()
            for j, f in saved_forwards.items():
                if f is None:
                    del blocks[j].forward
                else:
                    blocks[j].forward = f
            restore()
        return store.keep_all(inps), layer_kwargs

    def _run_block(self, run: _Run, block, inps, kwargs_list) -> list[torch.Tensor]:
        """The block's outputs for every batch (kept in the activation store)."""
        dev = run.store.device
        return [run.store.keep(_finite_output(_output_tensor(block(run.store.fetch(x), **_nested_to(kw, dev))), run))
                for x, kw in zip(inps, kwargs_list)]

    def _observe(self, run: _Run, part: _Part, block, observers: dict[str, Observer], inps, kwargs_list,
                 keep_input_of: Optional[nn.Module] = None):
        """One calibration pass of ``block`` feeding the accumulators of ``observers`` (by name); the forward of
        each batch stops once every observer has seen its input (the rest of the block would compute outputs
        nobody reads). With ``keep_input_of`` (a module that runs before the observed ones), its input is kept
        for every batch in the activation store and returned second (else ``None``)."""
        dev, adapter = run.store.device, run.adapter
        sites = {"output": part.out_proj(adapter, block), "input": part.in_linear(adapter, block)}
        stats = {name: obs.make(sites[obs.site].in_features, dev) for name, obs in observers.items()}
        seen: set[str] = set()
        kept: Optional[list[torch.Tensor]] = [] if keep_input_of is not None else None

        def feeder(name: str) -> Callable:
            def hook(m, args):
                stats[name].add(args[0])
                seen.add(name)
                if len(seen) == len(stats):
                    raise _StopForward

            return hook

        handles = [sites[obs.site].register_forward_pre_hook(feeder(name)) for name, obs in observers.items()]
        if kept is not None:
            handles.append(keep_input_of.register_forward_pre_hook(lambda m, args: kept.append(run.store.keep(args[0].detach()))))
        try:
            for x, kw in zip(inps, kwargs_list):
                seen.clear()
                try:
                    block(run.store.fetch(x), **_nested_to(kw, dev))
                except _StopForward:
                    continue
                raise RuntimeError(f"the block never called the observed modules of its {part.name}: cannot collect "
                                   f"their inputs ({sorted(set(stats) - seen)})")
        finally:
            for h in handles:
                h.remove()
        if kept is not None and len(kept) != len(inps):
            kept = None  # the module did not run exactly once per batch before the observers: not a usable tail
        return stats, kept

    def _tail_outputs(self, run: _Run, block, residual: list[torch.Tensor], inps, kw) -> Optional[list[torch.Tensor]]:
        """The block's outputs from the residual stream after attention (``adapter.mlp_tail``), without running
        the attention again; ``None`` when the tail is not bit-identical to the block's forward (checked once per
        run, on the first batch), so the caller runs the whole block."""
        adapter, store = run.adapter, run.store
        if run.mlp_tail is None:
            full = _output_tensor(block(store.fetch(inps[0]), **_nested_to(kw[0], store.device)))
            try:
                tail = adapter.mlp_tail(block, store.fetch(residual[0]))
                run.mlp_tail = tail.shape == full.shape and tail.dtype == full.dtype and bool(torch.equal(tail, full))
            except Exception as e:  # noqa: BLE001 - a custom block whose tail is not h + post(mlp(norm(h)))
                logger.debug("mlp_tail of %s failed (%s): running whole blocks", type(adapter).__name__, e)
                run.mlp_tail = False
            if not run.mlp_tail:
                logger.info("%s: the MLP tail does not reproduce the block's forward; block outputs use whole "
                            "forwards", type(adapter).__name__)
        if not run.mlp_tail:
            return None
        for b in range(len(residual)):  # in place: no more activation memory than a full pass
            residual[b] = store.keep(_finite_output(adapter.mlp_tail(block, store.fetch(residual[b])), run))
        return residual

    @torch.no_grad()
    def _layer_cosines(self, run: _Run, inps, layer_kwargs) -> list[float]:
        """Mean over calibration tokens of cos(block input, block output) for every dense block (the blocks run
        layer by layer on copies of the captured inputs; only the means are kept)."""
        scores: list[float] = []
        cur = list(inps)
        for i, block in enumerate(run.blocks):
            with self._on_device(block, run.store.device):
                total, count = 0.0, 0
                for b, kw in enumerate(layer_kwargs[i]):
                    x = run.store.fetch(cur[b])
                    y = _output_tensor(block(x, **_nested_to(kw, run.store.device)))
                    cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
                    total += float(cos.sum())
                    count += cos.numel()
                    cur[b] = run.store.keep(y) if i < len(run.blocks) - 1 else None
            scores.append(total / max(count, 1))
        return scores

    @torch.no_grad()
    def _global_plan(self, run: _Run, inps, layer_kwargs) -> PruningPlan:
        """The plan of a method that allocates sizes itself (:meth:`PruningMethod.plans_globally`): the dense
        blocks run layer by layer on copies of the captured inputs with the method's observers on every pruned
        part; each block's statistics become scores (:meth:`PruningMethod.dense_scores`) at once, and the scores
        of all blocks become the plan (:meth:`PruningMethod.allocate`). No weight changes."""
        adapter, mconfig, c, dev = run.adapter, run.model.config, self.config, run.store.device
        parts = [p for p in _PARTS if (c.prune_heads if p.name == "attention" else c.prune_ffn)]
        scores: list[dict[str, Optional[torch.Tensor]]] = []
        cur = list(inps)
        for i, block in enumerate(run.blocks):
            with self._on_device(block, dev):
                stats = _observe_dense_block(run, block, i, parts, c, layer_kwargs[i], cur)
                lay = adapter.head_layout(block, mconfig)
                scores.append({part.name: run.method.dense_scores(
                    part.name, part.out_proj(adapter, block).weight.detach().float(), stats[part.name],
                    lay.num_heads, lay.head_dim, c) for part in parts})
                del stats
        return run.method.allocate(scores, [adapter.geometry(b, mconfig) for b in run.blocks], c)

    @staticmethod
    @contextlib.contextmanager
    def _on_device(block: nn.Module, device: torch.device) -> Iterator[None]:
        home = _first_param_device(block)
        if home != device:
            block.to(device)
        try:
            yield
        finally:
            if home != device:
                block.to(home)

    def _keeps_residual(self, run: _Run, block, i: int) -> bool:
        """Whether block ``i``'s outputs come from the residual stream kept while its FFN is observed (the MLP tail,
        :meth:`_tail_outputs`) instead of a whole forward. Accelerate hooks (device_map dispatch, offload) act on the
        block's own forward: such a block always runs whole, as does the last one (its outputs feed nothing)."""
        return (self.reuse_attention_output and run.mlp_tail is not False and i < len(run.blocks) - 1
                and not any(hasattr(m, "_hf_hook") for m in block.modules()))

    def _prune_part(self, run: _Run, part: _Part, i: int, block, lp: LayerPlan, inps, kw, report: LayerReport,
                    kept: dict, keep_residual: bool) -> Optional[list[torch.Tensor]]:
        """Observe, solve, write back and slice one part of block ``i``; returns the residual stream entering the
        MLP when ``keep_residual`` and the family has an MLP tail (else ``None``)."""
        adapter, config, clock = run.adapter, run.model.config, run.clock
        out = part.out_proj(adapter, block)
        observers = run.method.observers(part.name, self.config)
        stats, residual = {}, None
        with clock(part.stats_key):
            if observers:
                entry = adapter.mlp_tail_entry(block) if keep_residual else None
                stats, residual = self._observe(run, part, block, observers, inps, kw, keep_input_of=entry)
        with clock(part.solve_key):
            res = part.solve(run.method, part.task(
                adapter, block, config, lp, layer=i, W=out.weight.detach(), stats=stats, config=self.config,
                spill_dir=run.spill_dir,
                bias=None if out.bias is None else out.bias.detach().float(),
                name=f"layer {i} {adapter.layout.o_proj if part.name == 'attention' else adapter.layout.channel_out}",
            ))
            del stats
            run.modified = True
            out.weight.data.copy_(res.W.to(out.weight.dtype))
            if res.bias is not None:
                adapter.set_output_bias(out, res.bias)
        with clock("surgery"):
            part.apply(adapter, block, config, res, report, kept, self.mask_only)
        return residual

    def _prune_blocks(self, run: _Run, inps, layer_kwargs, done: Optional[list[tuple["LayerReport", dict]]] = None
                      ) -> list[LayerReport]:
        """Prune blocks ``run.start..L-1`` (``done``: the reports and kept indices of the blocks before, from a
        resumed run) and return every block's report."""
        from transformers.utils.logging import tqdm

        done = done or []
        self.kept = [k for _, k in done]
        n = len(run.blocks)
        bar = tqdm(range(run.start, n), total=n, initial=run.start, desc=f"{self.label} blocks", unit="block")
        try:
            reports = [r for r, _ in done] + self._block_loop(run, bar, inps, layer_kwargs)
        finally:
            bar.close()
        run.block = n
        return reports

    def _block_loop(self, run: _Run, bar, inps, layer_kwargs) -> list[LayerReport]:
        adapter, blocks, config, clock = run.adapter, run.blocks, run.model.config, run.clock
        reports: list[LayerReport] = []
        for i in bar:
            run.block = i
            t_block, block, lp = time.perf_counter(), blocks[i], self.plan.layers[i]
            if run.load_block is not None:
                with clock("load"):
                    run.load_block(i, block)
            with self._on_device(block, run.store.device):
                geom, lay = adapter.geometry(block, config), adapter.head_layout(block, config)
                report = LayerReport(
                    index=i, ratio=lp.ratio, heads=(lay.num_heads, lp.heads), kv_heads=(lay.num_kv_heads, lp.kv_heads),
                    channels=(geom.channels, lp.channels),
                    params=(geom.total_params, geom.params(lp.heads, lp.kv_heads, lp.channels)),
                )
                kept = {"heads": list(range(lay.num_heads)), "kv_heads": list(range(lay.num_kv_heads)),
                        "channels": list(range(geom.channels))}
                keep_residual = self._keeps_residual(run, block, i)
                residual = None
                for part in _PARTS:
                    if part.todo(adapter, block, config, lp):
                        residual = self._prune_part(run, part, i, block, lp, inps, layer_kwargs[i], report, kept,
                                                    keep_residual and part.name == "ffn")
                self.kept.append(kept)
                with clock("forward_out"):  # the outputs feed the next block
                    if i < len(blocks) - 1:
                        outs = self._tail_outputs(run, block, residual, inps, layer_kwargs[i]) if residual else None
                        inps = outs if outs is not None else self._run_block(run, block, inps, layer_kwargs[i])
                        residual = outs = None
            report.seconds = time.perf_counter() - t_block
            reports.append(report)
            if run.finish_block is not None:
                with clock("write"):
                    run.finish_block(i, block, inps, report, kept)
            bar.set_postfix(attn_err=f"{report.attn_error:.4f}", ffn_err=f"{report.ffn_error:.4f}")
            logger.debug("layer %d: heads %s kv %s channels %s, errors %.4g / %.4g", i, report.heads,
                         report.kv_heads, report.channels, report.attn_error, report.ffn_error)
        return reports

    def _base_record(self, model, adapter: FamilyAdapter, blocks, pruned_blocks, config,
                     dims: tuple[int, int, int]) -> PruningRecord:
        """The structural part of a record: the base model (kept from an earlier record when a pruned model is
        pruned again; else ``dims``, the unpruned heads, KV heads and channels of the first block), the sizes of
        ``pruned_blocks`` and the family layout."""
        prev = PruningRecord.of(model.config)
        return PruningRecord(
            pruning_method=self.config.method_name,
            base_model_type=prev.base_model_type if prev else model.config.model_type,
            base_architectures=prev.base_architectures if prev else list(getattr(model.config, "architectures", None)
                                                                        or [type(model).__name__]),
            base_dims=prev.base_dims if prev else dict(zip(("num_attention_heads", "num_key_value_heads",
                                                            "intermediate_size"), dims)),
            layers=[adapter.block_sizes(b, config) for b in pruned_blocks],
            layout=record_layout(adapter, blocks[0]),
        )

    def _record(self, model, adapter: FamilyAdapter, blocks, data: torch.Tensor, explicit: bool) -> PruningRecord:
        """The provenance of this run. A pruned model pruned again keeps its base model and the earlier runs (in
        ``history``), and ``cumulative_ratio`` is measured against the base model's block parameters."""
        import transformers

        from .saving import source_dtype

        c, s = self.config, self.summary
        prev = PruningRecord.of(model.config)
        src = self.source_dtype or source_dtype(model)
        weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        first = s.layers[0]
        rec = self._base_record(model, adapter, blocks, blocks, model.config,
                                (first.heads[0], first.kv_heads[0], first.channels[0]))
        base_params = self.plan.params_before if prev is None else prev.base_block_params
        # the calibration facts live in rec.calibration (what was really used): not repeated from the config
        calibration_fields = {"dataset", "dataset_split", "dataset_text_field", "num_samples", "seqlen", "seed",
                              "chat_instructions"}
        return dataclasses.replace(
            rec, pruning_ratio=c.pruning_ratio, achieved_ratio=round(s.achieved_ratio, 6), schedule=c.schedule,
            layer_ratios=[round(lp.ratio, 6) for lp in self.plan.layers],
            ffn_ratios=[round(lp.ffn_ratio if lp.ffn_ratio is not None else lp.ratio, 6) for lp in self.plan.layers],
            config={k: v for k, v in c.to_dict().items() if k not in calibration_fields},
            calibration=describe_source(c, data, explicit=explicit, source=self._calibration_source),
            base_block_params=base_params,
            cumulative_ratio=round(1 - s.block_params_after / base_params, 6) if base_params else None,
            history=(prev.history + [prev.run_summary()]) if prev is not None else [],
            search=self.search_result.to_record(c.search_final) if self.search_result is not None else None,
            meta={"pruner": [f"optimum_slimgpt:{__version__}", f"transformers:{transformers.__version__}",
                             f"torch:{torch.__version__}"]},
            source_dtype=str(src).removeprefix("torch.") if src is not None else None,
            compute_dtype=str(weights).removeprefix("torch.") if weights is not None else None,
        )
