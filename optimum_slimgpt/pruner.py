"""The pruner: calibration capture, the block-by-block loop, and surgery.

Flow of :meth:`SlimGPTPruner.prune_model` (optimum GPTQ's layer loop, without its warts):

1. Resolve the family adapter and plan the per-layer sizes (:func:`solvers.solve_schedule`).
2. Capture, for every calibration batch, the hidden states entering block 0 and the keyword arguments
   of *every* block (attention masks differ between sliding- and full-attention layers): forward
   pre-hooks on all blocks record their inputs, the blocks in between are short-circuited, and the
   last block's hook raises a private exception (never a swallowed ``ValueError``).
3. For each block, on ``config.device``: accumulate the ``o_proj`` input Hessian -> remove heads (OBS)
   -> re-run the block -> accumulate the ``down_proj`` input Hessian -> remove FFN channels (OBS) ->
   slice the block physically -> produce the next block's inputs (so block ``i+1`` is calibrated on the
   outputs of the already-pruned blocks ``0..i``). Each statistics pass stops at the hooked linear; the
   FFN pass also keeps the residual stream entering the MLP, so the outputs need only the MLP tail
   (``FamilyAdapter.mlp_tail``), not a third run of the attention.
4. Record the per-layer sizes on ``model.config`` and turn the model into the family's per-layer
   pruned class (see :mod:`optimum_slimgpt.modeling`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import __version__
from .calibration import get_calibration_data
from .config import SlimGPTConfig
from .families import FamilyAdapter, get_adapter
from .methods import AttentionTask, FFNTask, get_method
from .solvers import HessianAccumulator, full_precision_matmul, solve_schedule
from .solvers.schedule import LayerPlan, PruningPlan, layer_importance_shape

logger = logging.getLogger(__name__)

__all__ = ["SlimGPTPruner", "PruningSummary", "LayerReport"]


_METHOD_LABELS = {"slimgpt": "SlimGPT", "slimllm": "SlimLLM"}  # for progress bars and logs


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
    """Per-layer result of a run plus totals. ``attn_error``/``ffn_error`` are relative reconstruction
    errors ``||(W0 − W) X||² / ||W0 X||²`` of ``o_proj``/``down_proj`` on the calibration inputs."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [
            f"{'layer':>5} {'ratio':>6} {'heads':>9} {'kv':>7} {'channels':>13} {'attn err':>9} {'ffn err':>9}",
        ]
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
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _move_all_but(module: nn.Module, skip: nn.Module, device) -> Callable[[], None]:
    """Move every parameter/buffer outside ``skip`` to ``device``; return a function that moves them back."""
    device = torch.device(device)
    undo: list[Callable[[], None]] = []

    def contains(m: nn.Module) -> bool:
        return any(x is skip for x in m.modules())

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if child is skip:
                continue
            if contains(child):
                walk(child)
            else:
                home = _first_param_device(child)
                if home != device:
                    child.to(device)
                    undo.append(lambda child=child, home=home: child.to(home))
        for store in (m._parameters, m._buffers):
            for name, t in list(store.items()):
                if t is not None and t.device != device:
                    home = t.device
                    t.data = t.data.to(device)
                    undo.append(lambda t=t, home=home: setattr(t, "data", t.data.to(home)))

    walk(module)
    return lambda: [f() for f in reversed(undo)]


def _to_act(t: torch.Tensor, act_device: torch.device) -> torch.Tensor:
    """Move an activation to where activations are kept: page-locked (pinned) CPU memory when they are
    offloaded from a GPU, so the copies back to the GPU are fast."""
    if act_device.type == "cpu" and t.device.type == "cuda":
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t)
        return out
    return t.to(act_device)


def _output_tensor(y):
    return y[0] if isinstance(y, (tuple, list)) else y


class SlimGPTPruner:
    """Structured pruning of a Hugging Face causal LM with SlimGPT (or SlimLLM).

    Example::

        pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.2, dataset="wikitext2"))
        model = pruner.prune_model(model, tokenizer)
        print(pruner.summary.table())
        pruner.save(model, "llama-slim")

    Args:
        config: The run's :class:`SlimGPTConfig`; keyword arguments build one when omitted.
        mask_only: Zero the removed columns of ``o_proj``/``down_proj`` instead of slicing the
            blocks (the *masked* model, for checks; it is not made smaller and cannot be saved as
            pruned).
    """

    #: Produce a block's outputs from the residual stream kept by its FFN statistics pass
    #: (``adapter.mlp_tail``) instead of running its attention a third time; the result is checked once
    #: per run to be bit-identical to the block's forward. ``False`` always runs whole blocks.
    reuse_attention_output: bool = True

    def __init__(self, config: Optional[SlimGPTConfig] = None, *, mask_only: bool = False, **kwargs: Any) -> None:
        if config is None:
            config = SlimGPTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a SlimGPTConfig or keyword arguments, not both")
        if not isinstance(config, SlimGPTConfig):
            raise TypeError(f"config must be a SlimGPTConfig, got {type(config).__name__}")
        self.config = config
        self.mask_only = mask_only
        self.summary: Optional[PruningSummary] = None
        self.plan: Optional[PruningPlan] = None
        self.kept: list[dict[str, list[int]]] = []
        #: per-layer mean cosine(input, output) of the dense blocks (``schedule="layer_importance"`` only)
        self.layer_scores: Optional[list[float]] = None

    # ------------------------------------------------------------------ public API
    def plan_model(self, model: nn.Module, layer_scores: Optional[list[float]] = None) -> PruningPlan:
        """The per-layer sizes this config gives for ``model`` (no calibration needed, except for
        ``schedule="layer_importance"``, which needs the dense per-layer ``layer_scores``: mean
        cosine(input, output) of each block, see :attr:`layer_scores` after :meth:`prune_model`)."""
        adapter = get_adapter(model)
        blocks = adapter.get_blocks(model)
        geoms = [adapter.geometry(b, model.config) for b in blocks]
        c = self.config
        shape = None
        if c.schedule == "layer_importance" and layer_scores is not None:
            shape = layer_importance_shape(layer_scores, c.importance_layers, c.importance_alpha,
                                           pruning_ratio=c.pruning_ratio)
        return solve_schedule(
            geoms, c.pruning_ratio, c.schedule, spread=c.schedule_spread, max_layer_ratio=c.max_layer_ratio,
            prune_heads=c.prune_heads, prune_ffn=c.prune_ffn, min_heads=c.min_heads, min_channels=c.min_channels,
            channel_multiple=c.channel_multiple, shape=shape,
        )

    @torch.no_grad()
    def prune_model(self, model: nn.Module, tokenizer=None, *, calibration: Optional[torch.Tensor] = None) -> nn.Module:
        """Prune ``model`` in place and return it.

        Args:
            model: A Hugging Face ``*ForCausalLM`` of a registered family.
            tokenizer: Needed unless the calibration data are token ids.
            calibration: Optional ``(samples, seqlen)`` token ids overriding ``config.dataset``.

        Float32 matmuls run in full precision while pruning (TF32 off, restored afterwards): see
        :func:`~optimum_slimgpt.solvers.full_precision_matmul`.
        """
        with full_precision_matmul():
            return self._prune_model(model, tokenizer, calibration)

    def _prune_model(self, model: nn.Module, tokenizer, calibration: Optional[torch.Tensor]) -> nn.Module:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        c = self.config
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        adapter = get_adapter(model)
        blocks = adapter.get_blocks(model)
        self._check_finite(model)
        importance = c.schedule == "layer_importance"
        self.plan = plan = None if importance else self.plan_model(model)
        total_before = sum(p.numel() for p in model.parameters())

        t = time.perf_counter()
        data = calibration if calibration is not None else get_calibration_data(c, tokenizer, model=model)
        if not isinstance(data, torch.Tensor) or data.dim() != 2 or data.numel() == 0:
            raise ValueError("calibration data must be a non-empty (samples, seqlen) tensor of token ids")
        timings["calibration_data"] = time.perf_counter() - t

        device = torch.device(c.device) if c.device else _first_param_device(blocks[0])
        act_device = torch.device("cpu") if c.offload_activations else device
        was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
        model.eval()
        if use_cache is not None:
            model.config.use_cache = False
        try:
            t = time.perf_counter()
            inps, layer_kwargs = self._capture(model, blocks, data, device, act_device)
            timings["capture"] = time.perf_counter() - t
            if importance:  # SlimLLM layer ratios: one dense pass over the blocks before any pruning
                t = time.perf_counter()
                self.layer_scores = self._layer_cosines(blocks, inps, layer_kwargs, device, act_device)
                self.plan = plan = self.plan_model(model, self.layer_scores)
                timings["layer_importance"] = time.perf_counter() - t
            reports = self._prune_blocks(model, adapter, blocks, plan, inps, layer_kwargs, device, act_device, timings)
        finally:
            if use_cache is not None:
                model.config.use_cache = use_cache
            model.train(was_training)

        total_after = sum(p.numel() for p in model.parameters())
        block_before = plan.params_before
        block_after = sum(r.params[1] for r in reports)
        self.summary = PruningSummary(
            method=c.method, target_ratio=c.pruning_ratio, achieved_ratio=1 - block_after / block_before,
            block_params_before=block_before, block_params_after=block_after, total_params_before=total_before,
            total_params_after=total_after, seconds=time.perf_counter() - t_start, layers=reports, timings=timings,
        )
        if not self.mask_only:
            self._record_layout(model, adapter, blocks)
        logger.info("%s pruning done:\n%s", _METHOD_LABELS.get(c.method, c.method), self.summary.table())
        return model

    def save(self, model: nn.Module, save_dir, **kwargs: Any):
        """Save a pruned model so that ``AutoModelForCausalLM.from_pretrained(save_dir)`` loads it.

        See :func:`optimum_slimgpt.saving.save_pruned_model` for the options.
        """
        from .saving import save_pruned_model

        return save_pruned_model(model, save_dir, **kwargs)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _check_finite(model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                raise ValueError(f"parameter {name!r} contains NaN or Inf values; cannot prune a broken model")

    def _batches(self, data: torch.Tensor) -> list[torch.Tensor]:
        bs = self.config.batch_size
        return [data[i : i + bs] for i in range(0, data.shape[0], bs)]

    def _capture(self, model, blocks, data, device, act_device):
        """Record block-0 inputs and every block's kwargs for each calibration batch."""
        batches = self._batches(data)
        n = len(blocks)
        inps: list[torch.Tensor] = []
        layer_kwargs: list[list[dict]] = [[] for _ in range(n)]

        def make_hook(i: int) -> Callable:
            def hook(module, args, kwargs):
                hs = args[0] if args else kwargs["hidden_states"]
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                if len(args) > 1:
                    raise RuntimeError("decoder blocks called with extra positional arguments are not supported")
                layer_kwargs[i].append(kw)
                if i == 0:
                    if not bool(torch.isfinite(hs).all()):
                        raise ValueError("the inputs of the first decoder block contain NaN/Inf (broken embeddings?)")
                    inps.append(_to_act(hs.detach(), act_device))
                if i == n - 1:
                    raise _StopForward

            return hook

        handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
        saved_forwards = []
        for b in list(blocks)[:-1]:
            saved_forwards.append(b.__dict__.get("forward"))
            b.forward = _identity_forward
        restore = _move_all_but(model, blocks, device) if not hasattr(model, "hf_device_map") else (lambda: None)
        try:
            in_dev = _first_param_device(model.get_input_embeddings()) if hasattr(model, "get_input_embeddings") else device
            for batch in batches:
                try:
                    model(input_ids=batch.to(in_dev), use_cache=False)
                except _StopForward:
                    pass
                else:  # pragma: no cover - the hook always fires
                    raise RuntimeError("calibration forward finished without reaching the last decoder block")
        finally:
            for h in handles:
                h.remove()
            for b, f in zip(list(blocks)[:-1], saved_forwards):
                if f is None:
                    del b.forward
                else:
                    b.forward = f
            restore()
        if act_device.type == "cpu" and device.type == "cuda":  # embeddings on the CPU: pin them too
            inps = [x if x.is_pinned() else x.pin_memory() for x in inps]
        return inps, layer_kwargs

    def _run_block(self, block, inps, kwargs_list, device, act_device):
        """The block's outputs for every batch (kept on ``act_device``)."""
        return [_to_act(_output_tensor(block(x.to(device), **_nested_to(kw, device))), act_device)
                for x, kw in zip(inps, kwargs_list)]

    def _stats_pass(self, block, linear: nn.Linear, inps, kwargs_list, device, norm_target: Optional[nn.Linear] = None,
                    keep_input_of: Optional[nn.Module] = None, act_device=None):
        """One calibration pass of ``block`` accumulating the input moments of ``linear`` (and, when
        ``norm_target`` is given, the per-feature sums of squares of its input too). When
        ``keep_input_of`` is given, the input of that module (it must run before ``linear``) is kept
        for every batch, on ``act_device``, and returned third (else ``None``).

        The forward of each batch stops once ``linear``'s input is seen (``norm_target`` must come before
        it): the rest of the block (for ``o_proj``, the whole MLP) would compute outputs nobody reads."""
        acc = HessianAccumulator(linear.in_features, device=device)
        kept: Optional[list[torch.Tensor]] = None

        def add(m, args):
            acc.add(args[0])
            raise _StopForward

        handles = [linear.register_forward_pre_hook(add)]
        sq = None
        if norm_target is not None:
            sq = torch.zeros(norm_target.in_features, dtype=torch.float32, device=device)

            def add_sq(m, args):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                sq.add_((x * x).sum(0))

            handles.append(norm_target.register_forward_pre_hook(add_sq))
        if keep_input_of is not None:
            kept = []

            def keep(m, args):
                kept.append(_to_act(args[0].detach(), act_device))

            handles.append(keep_input_of.register_forward_pre_hook(keep))
        try:
            for x, kw in zip(inps, kwargs_list):
                try:
                    block(x.to(device), **_nested_to(kw, device))
                except _StopForward:
                    continue
                raise RuntimeError(f"the block never called {type(linear).__name__} {linear}: cannot collect its inputs")
        finally:
            for h in handles:
                h.remove()
        if kept is not None and len(kept) != len(inps):
            kept = None  # the module did not run exactly once per batch before ``linear``: not a usable tail
        return acc, sq, kept

    def _tail_outputs(self, adapter: FamilyAdapter, block, residual: list[torch.Tensor], inps, kw, device,
                      act_device) -> Optional[list[torch.Tensor]]:
        """The block's outputs from the residual stream after attention (``adapter.mlp_tail``), without
        running the attention again; ``None`` when the tail is not bit-identical to the block's forward
        (checked once per run, on the first batch), so the caller runs the whole block."""
        if self._tail_ok is None:
            full = _output_tensor(block(inps[0].to(device), **_nested_to(kw[0], device)))
            try:
                tail = adapter.mlp_tail(block, residual[0].to(device))
                self._tail_ok = tail.shape == full.shape and tail.dtype == full.dtype and bool(torch.equal(tail, full))
            except Exception as e:  # a custom block whose tail is not h + post(mlp(norm(h)))
                logger.debug("mlp_tail of %s failed (%s): running whole blocks", type(adapter).__name__, e)
                self._tail_ok = False
            if not self._tail_ok:
                logger.info("%s: the MLP tail does not reproduce the block's forward; block outputs use whole "
                            "forwards", type(adapter).__name__)
                return None
        if not self._tail_ok:
            return None
        for b in range(len(residual)):  # in place: no more activation memory than a full pass
            residual[b] = _to_act(adapter.mlp_tail(block, residual[b].to(device)), act_device)
        return residual

    @torch.no_grad()
    def _layer_cosines(self, blocks, inps, layer_kwargs, device, act_device) -> list[float]:
        """Mean over calibration tokens of cos(block input, block output) for every dense block (the
        blocks are run layer by layer on copies of the captured inputs; only the means are kept)."""
        scores: list[float] = []
        cur = list(inps)
        for i, block in enumerate(blocks):
            home = _first_param_device(block)
            if home != device:
                block.to(device)
            total, count = 0.0, 0
            for b, kw in enumerate(layer_kwargs[i]):
                x = cur[b].to(device)
                y = _output_tensor(block(x, **_nested_to(kw, device)))
                cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
                total += float(cos.sum())
                count += cos.numel()
                cur[b] = _to_act(y, act_device) if i < len(blocks) - 1 else None
            if home != device:
                block.to(home)
            scores.append(total / max(count, 1))
        return scores

    @staticmethod
    @torch.no_grad()
    def _write_back(adapter: FamilyAdapter, linear: nn.Linear, res) -> None:
        linear.weight.data.copy_(res.W.to(linear.weight.dtype))
        if res.bias is not None:
            adapter.set_output_bias(linear, res.bias)

    def _prune_blocks(self, model, adapter: FamilyAdapter, blocks, plan: PruningPlan, inps, layer_kwargs, device,
                      act_device, timings) -> list[LayerReport]:
        from transformers.utils.logging import tqdm

        c = self.config
        method = get_method(c.method)
        reports: list[LayerReport] = []
        self.kept = []
        self._tail_ok: Optional[bool] = None  # mlp_tail == block forward, checked once per run
        for k in ("hessian_attn", "head_solve", "hessian_ffn", "ffn_solve", "surgery", "forward_out"):
            timings.setdefault(k, 0.0)
        bar = tqdm(range(len(blocks)), desc=f"{_METHOD_LABELS.get(c.method, c.method)} blocks", unit="block")
        for i in bar:
            t_block = time.perf_counter()
            block = blocks[i]
            home = _first_param_device(block)
            if home != device:
                block.to(device)
            lp: LayerPlan = plan.layers[i]
            geom = adapter.geometry(block, model.config)
            lay = adapter.head_layout(block, model.config)
            kw = layer_kwargs[i]
            kept_heads = list(range(lay.num_heads))
            kept_kv = list(range(lay.num_kv_heads))
            report = LayerReport(
                index=i, ratio=lp.ratio, heads=(lay.num_heads, lp.heads), kv_heads=(lay.num_kv_heads, lp.kv_heads),
                channels=(geom.channels, lp.channels), params=(geom.total_params, geom.params(lp.heads, lp.kv_heads, lp.channels)),
            )
            # ---- attention heads
            if lp.heads < lay.num_heads:
                o = adapter.attn_out_proj(block)
                t = time.perf_counter()
                stats = self._stats_pass(block, o, inps, kw, device)[0] if method.needs_stats(c, "attention") else None
                timings["hessian_attn"] += time.perf_counter() - t
                t = time.perf_counter()
                q_w, kv_w = adapter.head_in_weights(block) if method.needs_head_weights(c) else ([], [])
                res = method.prune_attention(AttentionTask(
                    layer=i, W=o.weight.detach().float(), bias=None if o.bias is None else o.bias.detach().float(),
                    stats=stats, num_heads=lay.num_heads, num_kv_heads=lay.num_kv_heads, head_dim=lay.head_dim,
                    options=lp.head_options, config=c, name=f"layer {i} {adapter.o_name}",
                    q_weights=[w.detach().float() for w in q_w], kv_weights=[w.detach().float() for w in kv_w],
                ))
                del stats
                self._write_back(adapter, o, res)
                report.attn_error, report.head_option = res.error, res.option
                kept_heads, kept_kv = res.kept, res.kept_kv
                report.heads = (lay.num_heads, len(kept_heads))
                report.kv_heads = (lay.num_kv_heads, len(kept_kv))
                timings["head_solve"] += time.perf_counter() - t
                t = time.perf_counter()
                if self.mask_only:
                    adapter.mask_heads(block, model.config, kept_heads)
                else:
                    adapter.prune_heads(block, model.config, kept_heads, kept_kv)
                timings["surgery"] += time.perf_counter() - t
            # ---- FFN channels
            kept_channels = list(range(geom.channels))
            residual = None  # the residual stream entering the MLP, kept by the FFN statistics pass
            if lp.channels < geom.channels:
                down = adapter.mlp_out_proj(block)
                t = time.perf_counter()
                stats, in_sq = None, None
                if method.needs_stats(c, "ffn"):
                    norm_target = adapter.channel_in_linears(block)[0] if method.needs_mlp_input_norms else None
                    # accelerate hooks (device_map dispatch, offload) act on the block's own forward: a
                    # block that has them always runs whole
                    hooked = any(hasattr(m, "_hf_hook") for m in block.modules())
                    entry = (adapter.mlp_tail_entry(block)
                             if self.reuse_attention_output and self._tail_ok is not False and i < len(blocks) - 1
                             and not hooked else None)
                    stats, in_sq, residual = self._stats_pass(block, down, inps, kw, device, norm_target=norm_target,
                                                              keep_input_of=entry, act_device=act_device)
                timings["hessian_ffn"] += time.perf_counter() - t
                t = time.perf_counter()
                res = method.prune_ffn(FFNTask(
                    layer=i, W=down.weight.detach().float(), bias=None if down.bias is None else down.bias.detach().float(),
                    stats=stats, num_remove=geom.channels - lp.channels, config=c,
                    in_weights=([w.detach().float() for w in adapter.channel_in_weights(block)]
                                if method.needs_channel_in_weights(c) else []),
                    mlp_input_sq=in_sq, name=f"layer {i} {adapter.channel_out_name}",
                ))
                del stats
                self._write_back(adapter, down, res)
                report.ffn_error = res.error
                kept_channels = res.kept
                timings["ffn_solve"] += time.perf_counter() - t
                t = time.perf_counter()
                if self.mask_only:
                    adapter.mask_channels(block, kept_channels)
                else:
                    adapter.prune_channels(block, kept_channels)
                timings["surgery"] += time.perf_counter() - t
            self.kept.append({"heads": kept_heads, "kv_heads": kept_kv, "channels": kept_channels})
            # ---- outputs feed the next block
            t = time.perf_counter()
            if i < len(blocks) - 1:
                outs = None
                if residual is not None:  # the attention output is reused: only the MLP tail runs
                    outs = self._tail_outputs(adapter, block, residual, inps, kw, device, act_device)
                inps = outs if outs is not None else self._run_block(block, inps, kw, device, act_device)
                residual = outs = None
            timings["forward_out"] += time.perf_counter() - t
            if home != device:
                block.to(home)
            report.seconds = time.perf_counter() - t_block
            reports.append(report)
            bar.set_postfix(attn_err=f"{report.attn_error:.4f}", ffn_err=f"{report.ffn_error:.4f}")
            logger.debug("layer %d: heads %s kv %s channels %s, errors %.4g / %.4g", i, report.heads,
                         report.kv_heads, report.channels, report.attn_error, report.ffn_error)
        bar.close()
        return reports

    def _record_layout(self, model, adapter: FamilyAdapter, blocks) -> None:
        """Write the per-layer sizes and provenance to ``model.config`` and adopt the pruned class."""
        import transformers

        from .modeling import to_pruned_model

        c = self.config
        cfg = model.config
        layers = []
        for b in blocks:
            lay = adapter.head_layout(b, cfg)
            layers.append({"num_attention_heads": lay.num_heads, "num_key_value_heads": lay.num_kv_heads,
                           "intermediate_size": adapter.num_channels(b)})
        base = getattr(cfg, "pruning_config", None) or {}
        pruning_config = {
            "pruning_method": c.method,
            "format_version": 1,
            "base_model_type": base.get("base_model_type", cfg.model_type),
            "base_architectures": base.get("base_architectures", list(getattr(cfg, "architectures", None) or [type(model).__name__])),
            "base_dims": base.get("base_dims") or {
                "num_attention_heads": self.summary.layers[0].heads[0] if self.summary else None,
                "num_key_value_heads": self.summary.layers[0].kv_heads[0] if self.summary else None,
                "intermediate_size": self.summary.layers[0].channels[0] if self.summary else None,
            },
            "layers": layers,
            "pruning_ratio": c.pruning_ratio,
            "achieved_ratio": round(self.summary.achieved_ratio, 6) if self.summary else None,
            "schedule": c.schedule,
            "schedule_spread": c.schedule_spread,
            "layer_ratios": [round(lp.ratio, 6) for lp in self.plan.layers] if self.plan else None,
            "head_selection": c.head_selection,
            "channel_selection": c.channel_selection,
            "compensate": c.compensate,
            "calibration": {
                "dataset": c.describe_dataset(), "split": c.dataset_split, "num_samples": c.num_samples,
                "seqlen": c.seqlen, "seed": c.seed,
            },
            "damp_percent": c.damp_percent,
            "seed": c.seed,
            "meta": {"pruner": [f"optimum_slimgpt:{__version__}", f"transformers:{transformers.__version__}",
                                f"torch:{torch.__version__}"]},
        }
        to_pruned_model(model, adapter, pruning_config)
