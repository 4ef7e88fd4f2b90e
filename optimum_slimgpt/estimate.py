"""How long a run will take, before it starts: a short probe of the real work, and smaller settings that fit.

:func:`estimate_prune` (also :meth:`SlimGPTPruner.estimate <optimum_slimgpt.pruner.SlimGPTPruner.estimate>`) times
the pieces of a pruning run on the model itself, on the chosen device, with the run's own code:

* **generated calibration** (``"self"``, ``"self-chat"``): a few decoding steps at the run's batch size, times the
  steps the run will take (``"self-chat"``: every batch at its longest answers, an upper bound, since finished
  answers leave the batch);
* **capture**: the calibration forward up to the first block, for one batch of random token ids of the run's shape;
* **one block**: a copy of block 0 is pruned with the plan of the middle layer, the pruner's own ``_prune_part`` on
  that one batch: the statistics passes and the block's output forward scale with the number of batches, the
  solves (head and channel selection, compensation) do not. The copy is thrown away; the model is not changed.

``total ≈ generation + batches · (capture + block passes) · + layers · solves`` (plus one dense pass for plans
that need it). On a CPU, when the total passes :data:`CPU_BUDGET_S` (10 minutes), :attr:`PruneEstimate.suggestion`
names the largest ``num_samples`` / ``seqlen`` that fit, from the same linear model: a trade, since fewer
calibration tokens give a less exact Hessian. The probe itself costs about one block's solves and one batch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

__all__ = ["PruneEstimate", "estimate_prune", "print_estimate", "format_seconds", "CPU_BUDGET_S"]

#: on a CPU, a run whose estimate passes this many seconds gets a suggestion of smaller settings
CPU_BUDGET_S = 600.0


def format_seconds(s: float) -> str:
    """``"45 s"``, ``"3.2 min"``, ``"1.4 h"``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


@dataclass
class PruneEstimate:
    """The estimated wall time of a pruning run, by phase (seconds), and what it rests on.

    ``generation``: writing the calibration text (``0`` for read data); ``capture``: the calibration forward up to
    the first block; ``blocks``: every block's statistics passes, solves and output forward; ``dense_pass``: the
    plan's dense pass (``layer_importance``, global allocation). ``per_token`` / ``fixed``: the parts of the total
    that grow with the calibration tokens and those that do not (the solves); ``suggestion``: smaller settings
    that fit :data:`CPU_BUDGET_S` on a CPU, or ``None``.
    """

    total: float
    generation: float
    capture: float
    blocks: float
    dense_pass: float
    num_blocks: int
    num_samples: int
    seqlen: int
    device: str
    probe_seconds: float
    per_token: float = 0.0
    fixed: float = 0.0
    suggestion: Optional[dict[str, Any]] = None
    details: dict[str, float] = field(default_factory=dict)

    def for_settings(self, num_samples: int, seqlen: int) -> float:
        """The estimated total for other calibration sizes (the linear model of the probe)."""
        return self.fixed + self.per_token * num_samples * seqlen

    def message(self) -> str:
        """What the CLI prints before the work starts."""
        parts = []
        if self.generation:
            parts.append(f"writing calibration {format_seconds(self.generation)}")
        parts.append(f"capture {format_seconds(self.capture)}")
        if self.dense_pass:
            parts.append(f"dense pass {format_seconds(self.dense_pass)}")
        parts.append(f"{self.num_blocks} blocks x {format_seconds(self.blocks / max(self.num_blocks, 1))}")
        out = (f"estimate: about {format_seconds(self.total)} on {self.device} for {self.num_samples} x {self.seqlen} "
               f"calibration tokens ({', '.join(parts)}; from a {self.probe_seconds:.1f} s probe of one block)")
        if self.suggestion:
            s = self.suggestion
            out += (f"\nthat is more than {format_seconds(CPU_BUDGET_S)} on a CPU: num_samples={s['num_samples']} "
                    f"seqlen={s['seqlen']} (--samples {s['num_samples']} --seqlen {s['seqlen']}) would take about "
                    f"{format_seconds(s['seconds'])}, with {s['num_samples'] * s['seqlen']:,} calibration tokens "
                    f"instead of {self.num_samples * self.seqlen:,} (a less exact Hessian: some quality for time)")
            if s.get("note"):
                out += f"; {s['note']}"
        return out

    def __str__(self) -> str:
        return self.message()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _suggest(est: PruneEstimate, budget: float) -> Optional[dict[str, Any]]:
    """The largest calibration (in tokens) among the usual sizes whose estimate fits ``budget``; among equals, the
    window length nearest 512 (long enough for real contexts, more windows for variety)."""
    seqlens = sorted({s for s in (est.seqlen, 2048, 1024, 512, 256, 128) if s <= est.seqlen}, reverse=True)
    samples = sorted({n for n in (est.num_samples, 128, 64, 32, 16, 8) if n <= est.num_samples}, reverse=True)
    fits = [(n * s, -abs(math.log2(s / 512)), s, n) for s in seqlens for n in samples
            if est.for_settings(n, s) <= 0.9 * budget]
    if fits:
        *_, s, n = max(fits)
        return {"num_samples": n, "seqlen": s, "seconds": est.for_settings(n, s)}
    n, s = samples[-1], seqlens[-1]
    return {"num_samples": n, "seqlen": s, "seconds": est.for_settings(n, s),
            "note": f"the solves alone take about {format_seconds(est.fixed)} here: a GPU (device='cuda') is the way "
                    "to go faster"}


@torch.no_grad()
def _generation_seconds(config, source: str, tokenizer, model, device: torch.device) -> tuple[float, float]:
    """(estimated seconds to write the calibration, probe seconds): a few steps of one real generation batch."""
    from . import selfgen

    steps = 6
    t0 = time.perf_counter()
    if source == "self-chat":
        from .calibration import format_conversations, read_instructions

        instructions = read_instructions(getattr(config, "chat_instructions", None), "calibration")
        prompts = format_conversations(tokenizer, [[{"role": "user", "content": q}] for q in instructions[:32]])
        prompt_len = sum(len(p) for p in prompts) / len(prompts)
        conv = prompt_len + selfgen.SELF_CHAT_MAX_NEW_TOKENS
        need = config.num_samples * config.seqlen
        k = min(max(selfgen.SELF_CHAT_BATCH, config.batch_size), max(1, math.ceil(need / conv)))
        # decoding steps at the batch the run will use, from a 2-token context (no costly prefill); the time
        # between the first and the last step, so the first call's set-up is not counted
        stamps: list[float] = []

        class _Stamps:
            def update(self, n):
                _sync(device)
                stamps.append(time.perf_counter())

        ids = torch.tensor([prompts[0][:2]] * k, dtype=torch.long, device=device)
        selfgen._decode(model, ids, torch.ones_like(ids), max_new_tokens=steps, eos=[], do_sample=False,
                        temperature=1.0, bar=_Stamps())
        t_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        # prompts: one forward over all their tokens, about as costly per token as a decoding step's
        t_prefill = t_step * prompt_len / 4
        batches = math.ceil(need / (k * conv))
        return batches * (selfgen.SELF_CHAT_MAX_NEW_TOKENS * t_step + t_prefill), time.perf_counter() - t0
    bs = max(1, config.batch_size)
    prompt = torch.ones((min(bs, config.num_samples), 1), dtype=torch.long, device=device)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, min_new_tokens=1,
                   do_sample=False, pad_token_id=0)
    _sync(device)
    t1 = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps, min_new_tokens=steps,
                   do_sample=False, pad_token_id=0)
    _sync(device)
    t_step = (time.perf_counter() - t1) / steps
    return math.ceil(config.num_samples / bs) * (config.seqlen - 1) * t_step, time.perf_counter() - t0


@torch.no_grad()
def estimate_prune(pruner, model: torch.nn.Module, tokenizer=None, *, calibration: Optional[torch.Tensor] = None,
                   budget: float = CPU_BUDGET_S) -> PruneEstimate:
    """Estimate the wall time of ``pruner.prune_model(model, tokenizer, calibration=...)`` from a short probe (module
    doc). The model is not changed (block 0 is probed on a copy). Raises what :meth:`preflight` raises."""
    from .calibration import _GENERATORS, resolve_dataset
    from .pruner import ActivationStore, LayerReport, Stopwatch, _PARTS, _Run

    t_start = time.perf_counter()
    c = pruner.config
    adapter, blocks, device, plan = pruner._preflight(model, calibration, None, None, False)
    dense_plan = plan is None
    if dense_plan:  # the plan comes from a dense pass: any plan of the same budget times the blocks as well
        from .pruner import SlimGPTPruner

        plan = SlimGPTPruner(dataclasses.replace(c, schedule="log_increase")).plan_model(model)
    n, s = (calibration.shape[0], calibration.shape[1]) if calibration is not None else (c.num_samples, c.seqlen)
    bs = max(1, c.batch_size)
    batches = math.ceil(n / bs)
    source = None if calibration is not None else resolve_dataset(c.dataset, tokenizer, model)
    gen_s = probe_gen = 0.0
    was_training = model.training
    model.eval()
    use_cache = getattr(model.config, "use_cache", None)
    try:
        if isinstance(source, str) and source in _GENERATORS:
            cfg = c if source == c.dataset else dataclasses.replace(c, dataset=source)
            gen_s, probe_gen = _generation_seconds(cfg, source, tokenizer, model, device)
        if use_cache is not None:
            model.config.use_cache = False
        vocab = model.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(0)
        data = torch.randint(0, vocab, (min(bs, n), s), generator=gen)
        clock = Stopwatch("capture", "hessian_attn", "head_solve", "hessian_ffn", "ffn_solve", "surgery", "forward_out")
        run = _Run(model, adapter, blocks, pruner.method, ActivationStore(device, c.offload_activations), clock)
        with clock("capture"):
            inps, layer_kwargs = pruner._capture(run, data)
            _sync(device)
        probe = copy.deepcopy(blocks[0])
        lp = plan.layers[len(plan.layers) // 2]
        with pruner._on_device(probe, device):
            pruner._run_block(run, probe, inps, layer_kwargs[0])  # warm-up: first calls allocate
            _sync(device)
            report = LayerReport(index=0, ratio=lp.ratio, heads=(0, 0), kv_heads=(0, 0), channels=(0, 0), params=(0, 0))
            for part in _PARTS:
                if part.todo(adapter, probe, model.config, lp):
                    pruner._prune_part(run, part, 0, probe, lp, inps, layer_kwargs[0], report, {}, False)
            _sync(device)
            with clock("forward_out"):
                pruner._run_block(run, probe, inps, layer_kwargs[0])
                _sync(device)
            dense_fwd = clock.totals["forward_out"]
        del probe, inps, layer_kwargs
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(was_training)
    t = clock.totals
    per_batch = t["hessian_attn"] + t["hessian_ffn"] + t["forward_out"]
    solves = t["head_solve"] + t["ffn_solve"] + t["surgery"]
    L = len(blocks)
    blocks_s = L * (batches * per_batch + solves)
    capture_s = batches * t["capture"]
    dense_s = L * batches * dense_fwd if dense_plan else 0.0
    total = gen_s + capture_s + blocks_s + dense_s
    tokens = n * s
    est = PruneEstimate(
        total=total, generation=gen_s, capture=capture_s, blocks=blocks_s, dense_pass=dense_s, num_blocks=L,
        num_samples=n, seqlen=s, device=str(device), probe_seconds=time.perf_counter() - t_start,
        per_token=(gen_s + capture_s + dense_s + L * batches * per_batch) / tokens, fixed=L * solves,
        details={k: round(v, 4) for k, v in t.items()} | {"generation_probe": round(probe_gen, 3)},
    )
    if device.type == "cpu" and total > budget and calibration is None:
        est.suggestion = _suggest(est, budget)
    return est


def print_estimate(pruner, model: torch.nn.Module, tokenizer) -> None:
    """Print how long the prune will take (:meth:`SlimGPTPruner.estimate
    <optimum_slimgpt.pruner.SlimGPTPruner.estimate>`) before it starts, as ``optimum-slimgpt prune`` and the demo do.
    Bad input raises as the run would; a probe that fails for another reason only says so."""
    from .cli_args import CLIError

    try:
        est = pruner.estimate(model, tokenizer)
    except (ValueError, TypeError, CLIError):
        raise
    except Exception as e:  # noqa: BLE001 - the estimate is advice: never the reason a run does not start
        logging.getLogger(__name__).warning("no time estimate (%s: %s)", type(e).__name__, str(e).splitlines()[0])
        return
    print(est.message(), flush=True)
