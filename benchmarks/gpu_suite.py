"""The GPU run in one command: prune time per phase, peak GPU memory, the streamed 13B path and decode speed.

Run it through ``bash benchmarks/gpu_suite.sh`` (it sets ``PYTHONPATH`` to the checkout, turns the Hub off and puts
a hard time limit around this driver). On one H100 the whole run is sized to finish within 8 minutes:

- ``llama-7b`` (budget 140 s): a random-weight Llama-2-7B shape (32 query and 32 KV heads) built on the GPU in bf16;
  HF decode of the dense model; a SlimGPT 20% prune timed per phase (calibration capture, Hessians, solves, surgery,
  block outputs, total) with the peak GPU memory; HF decode of the pruned model.
- ``llama3-8b`` (130 s): the same for a random-weight Llama-3-8B shape (GQA: 32 query / 8 KV heads, vocab 128,256).
- ``llama-13b-streamed`` (170 s): a random-weight Llama-2-13B shape written to local disk as bf16 sharded
  safetensors (26 GB, drawn on the GPU), then ``prune_pretrained`` from it with the blocks pruned on the GPU: wall
  time, peak GPU memory, peak host RSS, blocks done over time. It needs about 46 GiB of free disk (the source, the
  pruned output, one block's inputs); with less it uses ``/dev/shm`` if that has the room (the JSON says which
  folder), else it reports ``skipped``.

Each part runs in a child process (spawned on the GPU; forked on the CPU, where nothing then imports twice) under
its own time budget; time a part
does not use passes to the next one, and no part runs past the total budget (440 s from the driver's start,
imports included; ``gpu_suite.sh`` stops everything at 470 s). A part that runs
out of time is killed (``status: "timeout"``); what it measured until then is kept, including how many blocks the
prune finished and when (``progress``). The JSON file is rewritten every few seconds, so even a run killed from
outside leaves the results so far.

Calibration: 32 windows of 2,048 random token ids (seed 0) per prune, SlimGPT at 20%, batches of 8, bf16. The
official SlimGPT code prunes LLaMA-7B by 20% in about 10 minutes with 128 x 2048 samples. The bulk of the work grows
linearly with the samples: at 32 x 2048 a 7B needs ~0.6 PFLOP of fp32 Hessian products (``XᵀX`` of the 4,096-wide
``o_proj`` and the 11,008-wide ``down_proj`` inputs, 32 layers; TF32 is off while pruning) and ~2 PFLOP of bf16
forwards (about two passes through each block), i.e. some 15-25 s at H100 rates (~50 TFLOP/s fp32 without tensor
cores, a few hundred bf16) before the solves; the 8B (``down_proj`` 14,336 wide) ~0.9 PFLOP of Hessians, the 13B
~1.1 PFLOP. These are estimates from the shapes, not measurements: a quarter of the official calibration leaves
room for three prunes, the 26 GB of disk traffic and the decodes in 8 minutes. ``--samples 128`` times the paper's
setting (then give the parts more time with ``--budget``).

Decode: HF ``generate``, greedy, 128 new tokens after a 128-token random prompt, batch 1 and 16, one warm-up, the
attention implementation transformers picks by default; tokens/s of the dense and the pruned model and their ratio.

``--tiny`` runs the same code on tiny shapes on the CPU in seconds (the test suite runs it); the JSON says
``"tiny": true``. Nothing here reads a tokenizer or the network. The exit status is 0 when every part finished
(``status: "ok"``), 1 otherwise (the JSON is written either way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

_T_START = time.monotonic()  # the total budget counts from here: imports included

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (benchmarks/speed.py: shapes, build, time_prune, decode_throughput)
import streaming  # noqa: E402  (benchmarks/streaming.py: write_random_checkpoint)

ROOT = Path(__file__).resolve().parents[1]

#: part name -> (shape on the GPU, shape with --tiny, kind, default budget in seconds)
PARTS: dict[str, tuple[str, str, str, float]] = {
    "llama-7b": ("llama-7b", "tiny-mha", "in_memory", 140.0),
    "llama3-8b": ("llama3-8b", "tiny", "in_memory", 130.0),
    "llama-13b-streamed": ("llama-13b", "tiny", "streamed", 170.0),
}
FULL = dict(device="cuda", dtype="bfloat16", samples=32, seqlen=2048, batch_size=8, ratio=0.2, decode_batch=[1, 16],
            new_tokens=128, prompt_tokens=128, total_budget_s=440.0)
TINY = dict(device="cpu", dtype="bfloat16", samples=4, seqlen=64, batch_size=2, ratio=0.2, decode_batch=[1, 2],
            new_tokens=4, prompt_tokens=16, total_budget_s=240.0)
NOTE = ("{samples} x {seqlen} random token ids (seed 0) per prune; the official SlimGPT code prunes LLaMA-7B 20% in "
        "~10 min with 128 x 2048 samples. Forward and Hessian costs grow linearly with the samples: a quarter of the "
        "official calibration so that the 7B, 8B and streamed 13B prunes fit in 8 minutes on one H100.")
GIB = 2**30
SHM = Path("/dev/shm/gpu_suite-work")


# ------------------------------------------------------------------------------------------- child side
class Recorder:
    """The results of one part, rewritten atomically to ``path`` after every change (the parent reads it even when
    the part is killed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"status": "running"}
        self.flush()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # ru_maxrss: KiB on Linux


@contextlib.contextmanager
def block_progress(rec: Recorder, blocks: int):
    """Record the seconds at which each block of a prune finished (from the pruner's per-layer debug record), so a
    prune stopped by its budget still says how far it got."""
    log = logging.getLogger("optimum_slimgpt.pruner")
    t0, done = time.perf_counter(), []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, str) and record.msg.startswith("layer %d"):
                done.append(round(time.perf_counter() - t0, 3))
                rec.set("progress", {"blocks_done": len(done), "blocks": blocks, "seconds_at_each_block": done})

    handler, level = _Handler(logging.DEBUG), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def phases(timings: dict[str, float], total: float) -> dict[str, float]:
    """The pruner's phase times (``PruningSummary.timings``) grouped as the results page reports them."""
    t = lambda *keys: round(sum(timings.get(k, 0.0) for k in keys), 4)  # noqa: E731
    return {"capture_s": t("capture"), "hessians_s": t("hessian_attn", "hessian_ffn"),
            "solves_s": t("head_solve", "ffn_solve"), "surgery_s": t("surgery"), "block_outputs_s": t("forward_out"),
            "load_s": t("load"), "write_s": t("write"), "calibration_data_s": t("calibration_data"),
            "total_s": round(total, 4), "timings": {k: round(v, 4) for k, v in timings.items()}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _start(rec: Recorder, s: dict) -> None:
    if s["device"].startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run `bash benchmarks/gpu_suite.sh --tiny` for the CPU smoke run")
    import transformers

    rec.set("host", {"device": torch.cuda.get_device_name() if s["device"].startswith("cuda") else platform.processor()
                     or platform.machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__, "cpu_count": os.cpu_count()})
    torch.manual_seed(0)


def _calibration(s: dict, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (s["samples"], s["seqlen"]), generator=torch.Generator().manual_seed(0))


def in_memory_part(rec: Recorder, shape: str, s: dict, work: Path) -> None:
    """Build the random-weight model on the GPU, decode dense, prune (timed per phase), decode pruned."""
    _start(rec, s)
    device, dtype, vocab = s["device"], getattr(torch, s["dtype"]), speed.SHAPES[shape][-1]
    t = time.perf_counter()
    model = speed.build(shape, dtype, device)
    _sync(device)
    rec.set("build", {"seconds": round(time.perf_counter() - t, 3),
                      "params": sum(p.numel() for p in model.parameters())})
    print(f"[gpu_suite] {shape}: built in {rec.data['build']['seconds']} s", flush=True)

    def decode(m) -> list[dict]:
        return [speed.decode_throughput(m, b, s["new_tokens"], vocab, device, prompt=s["prompt_tokens"])
                for b in s["decode_batch"]]

    rec.set("decode_dense", decode(model))
    print(f"[gpu_suite] {shape}: dense decode {rec.data['decode_dense']}", flush=True)
    with block_progress(rec, speed.SHAPES[shape][2]):
        timed = speed.time_prune(model, _calibration(s, vocab), s["ratio"], device, batch_size=s["batch_size"])
    rec.set("prune", {**phases(timed["timings"], timed["prune_seconds"]), "removed": timed["removed"],
                      "peak_gpu_gib": timed["peak_gpu_gib"], "model_gpu_gib": timed["model_gpu_gib"],
                      "params_after": sum(p.numel() for p in model.parameters())})
    print(f"[gpu_suite] {shape}: pruned in {timed['prune_seconds']:.1f} s, peak GPU {timed['peak_gpu_gib']} GiB",
          flush=True)
    rec.set("decode_pruned", decode(model))
    rec.set("decode_speedup", [round(p["tokens_per_s"] / d["tokens_per_s"], 3)
                               for p, d in zip(rec.data["decode_pruned"], rec.data["decode_dense"])])
    rec.set("peak_rss_gib", _peak_rss_gib())
    print(f"[gpu_suite] {shape}: decode speed-up {rec.data['decode_speedup']}", flush=True)


def streamed_part(rec: Recorder, shape: str, s: dict, work: Path) -> None:
    """Write a random-weight checkpoint of ``shape`` to local disk (bf16 shards), then ``prune_pretrained`` it with
    the blocks pruned on the GPU."""
    from optimum_slimgpt import SlimGPTConfig, prune_pretrained

    _start(rec, s)
    device, dtype = s["device"], getattr(torch, s["dtype"])
    config = speed.llama_config(shape)
    hidden, _, layers, _, _, vocab = speed.SHAPES[shape]
    from transformers import AutoModelForCausalLM

    size = torch.empty(0, dtype=dtype).element_size()
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    # the source, the pruned output (its block shards are hard-linked from the work folder, so they count once), one
    # block's inputs (written after every block) and 1 GiB to spare
    need = params * size * (2 - s["ratio"]) + s["samples"] * s["seqlen"] * hidden * size + GIB
    for folder in (work, SHM / work.name):  # local disk first; RAM-backed /dev/shm only when the disk is too small
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
            rec.set("disk", {"folder": str(folder), "free_gib": round(free / GIB, 1),
                             "needed_gib": round(need / GIB, 1)})
            if free >= need:
                work = folder
                break
    else:
        rec.set("status", "skipped")
        rec.set("reason", f"needs {need / GIB:.1f} GiB free in {work} (or /dev/shm): pass --workdir")
        return
    w = streaming.write_random_checkpoint(work / "src", config, dtype=dtype, device=device)
    rec.set("write", w)
    print(f"[gpu_suite] {shape}: wrote {w['checkpoint_bytes'] / GIB:.1f} GiB in {w['seconds']} s", flush=True)
    cfg = SlimGPTConfig(pruning_ratio=s["ratio"], dataset=None, num_samples=s["samples"], seqlen=s["seqlen"],
                        batch_size=s["batch_size"], device=device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with block_progress(rec, layers):
        res = prune_pretrained(work / "src", work / "out", cfg, calibration=_calibration(s, vocab), overwrite=True)
    _sync(device)
    total = time.perf_counter() - t
    rec.set("prune", {"total_s": round(total, 4), "format": res.format, "params_before": w["params"],
                      "params_after": res.num_parameters, "bytes_after": res.weights_bytes,
                      "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)
                      if device.startswith("cuda") else None})
    rec.set("peak_rss_gib", _peak_rss_gib())
    print(f"[gpu_suite] {shape}: streamed prune in {total:.1f} s", flush=True)


KINDS: dict[str, Callable[[Recorder, str, dict, Path], None]] = {"in_memory": in_memory_part,
                                                                 "streamed": streamed_part}


def _child(fn: Callable, partial: Path, args: tuple) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no tqdm bars in the log
    rec = Recorder(partial)
    try:
        fn(rec, *args)
        if rec.data["status"] == "running":
            rec.set("status", "ok")
    except BaseException as e:  # noqa: BLE001 -- recorded for the JSON, then the child fails
        rec.data["status"] = "error"
        rec.set("error", "".join(traceback.format_exception(e))[-4000:])
        raise SystemExit(1) from None


# ------------------------------------------------------------------------------------------ parent side
def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_parts(parts: list[tuple[str, Callable, tuple, float]], result: dict, out: Path, total_budget: float,
              scratch: Path, poll_s: float = 2.0, cleanup: Optional[Callable[[str], None]] = None,
              start_method: str = "fork", start: Optional[float] = None) -> dict:
    """Run each ``(name, fn, args, budget)`` as ``fn(recorder, *args)`` in a child process under its budget (plus the
    time the parts before it left unused, never past ``total_budget`` seconds from ``start``, a ``time.monotonic()``
    reading, default now), merging its results into
    ``result["parts"][name]`` and rewriting ``out`` every ``poll_s`` seconds and after each part. A child over its
    budget is terminated (then killed); its status is ``"timeout"`` and what it recorded stays. ``start_method``:
    ``"fork"`` (nothing imported twice: the CPU runs) or ``"spawn"`` (the GPU runs: a forked child cannot use CUDA
    once the parent has asked anything of it, and transformers or accelerate may, at import)."""
    ctx = mp.get_context(start_method)
    deadline = (time.monotonic() if start is None else start) + total_budget
    carry = 0.0
    result.setdefault("parts", {})
    for name, fn, args, budget in parts:
        left = deadline - time.monotonic()
        if left < 1.0:
            result["parts"][name] = {"status": "skipped", "reason": "the total time budget was spent",
                                     "budget_s": 0.0, "wall_s": 0.0}
            write_json(out, result)
            continue
        limit = min(budget + carry, left)
        partial = scratch / f"{name}.json"
        partial.unlink(missing_ok=True)
        print(f"[gpu_suite] {name}: starting, budget {limit:.0f} s", flush=True)
        t0 = time.monotonic()
        proc = ctx.Process(target=_child, args=(fn, partial, args), name=f"gpu_suite-{name}")
        proc.start()
        timed_out = False
        while True:
            proc.join(min(poll_s, max(0.0, t0 + limit - time.monotonic())))
            data = _read(partial)
            result["parts"][name] = {**data, "budget_s": round(limit, 1), "wall_s": round(time.monotonic() - t0, 1)}
            write_json(out, result)
            if not proc.is_alive():
                break
            if time.monotonic() >= t0 + limit:
                timed_out = True
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                break
        wall = time.monotonic() - t0
        data = _read(partial)
        if timed_out:
            data["status"] = "timeout"
            data["reason"] = f"stopped after its budget of {limit:.1f} s; the other fields are what it finished"
        elif data.get("status") in (None, "running"):
            data["status"] = "error"
            data["reason"] = f"the child exited with code {proc.exitcode} before reporting"
        if "host" in data and "host" not in result:
            result["host"] = data["host"]
        data.pop("host", None)
        result["parts"][name] = {**data, "budget_s": round(limit, 1), "wall_s": round(wall, 1)}
        write_json(out, result)
        if cleanup is not None:
            cleanup(name)
        carry = max(0.0, limit - wall)
        print(f"[gpu_suite] {name}: {data['status']} in {wall:.1f} s", flush=True)
    return result


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def output_path(arg: Optional[str]) -> Path:
    """The JSON file: the path argument (a folder gets ``gpu_suite.json`` inside it), else ``$OUT/gpu_suite.json``
    when ``$OUT`` is set, else ``bench_out/gpu_suite.json``."""
    if arg:
        p = Path(arg)
        return p / "gpu_suite.json" if p.is_dir() or arg.endswith("/") else p
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        return out / "gpu_suite.json" if out.is_dir() or not out.suffix else out
    return ROOT / "bench_out" / "gpu_suite.json"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="the JSON file (or a folder for gpu_suite.json); default $OUT or bench_out")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: the same code paths in seconds")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument("--samples", type=int, help="calibration windows per prune (default 32; --tiny 4)")
    ap.add_argument("--seqlen", type=int, help="tokens per window (default 2048; --tiny 64)")
    ap.add_argument("--ratio", type=float, help="pruning ratio (default 0.2)")
    ap.add_argument("--budget", nargs="+", default=[], metavar="PART=SECONDS", help="override a part's time budget")
    ap.add_argument("--total-budget", type=float, help="seconds for everything, counted from the driver's start "
                                                       "(default 440; --tiny 240)")
    ap.add_argument("--workdir", default=None, help="local-disk folder for the streamed checkpoint and the parts' "
                                                    "files (default: bench_out/.gpu_suite-work in the checkout, not "
                                                    "beside the JSON, which may be a folder that is copied back; the "
                                                    "13B needs ~46 GiB free)")
    ap.add_argument("--start-method", choices=["fork", "spawn"], help="how the parts' processes start (default: spawn "
                                                                      "on the GPU, fork on the CPU)")
    a = ap.parse_args(argv)
    s = dict(TINY if a.tiny else FULL)
    for k in ("samples", "seqlen", "ratio"):
        if getattr(a, k) is not None:
            s[k] = getattr(a, k)
    if a.total_budget is not None:
        s["total_budget_s"] = a.total_budget
    budgets = {name: (60.0 if a.tiny else PARTS[name][3]) for name in PARTS}
    for item in a.budget:
        name, _, sec = item.partition("=")
        if name not in PARTS or not sec:
            ap.error(f"--budget takes PART=SECONDS with PART one of {', '.join(PARTS)}: got {item!r}")
        budgets[name] = float(sec)
    out = output_path(a.out)
    scratch = Path(a.workdir) if a.workdir else ROOT / "bench_out" / ".gpu_suite-work"
    scratch.mkdir(parents=True, exist_ok=True)
    shapes = {name: PARTS[name][1 if a.tiny else 0] for name in PARTS}
    result: dict[str, Any] = {
        "suite": "benchmarks/gpu_suite.sh", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**s, "tiny": a.tiny, "method": "slimgpt", "shapes": {n: {"shape": shapes[n], "hidden, ffn, "
                     "layers, heads, kv_heads, vocab": list(speed.SHAPES[shapes[n]])} for n in a.parts},
                     "budgets_s": {n: budgets[n] for n in a.parts}, "calibration": NOTE.format(**s)},
    }
    parts = [(n, KINDS[PARTS[n][2]], (shapes[n], s, scratch / n), budgets[n]) for n in a.parts]

    def cleanup(name: str) -> None:  # what a killed part left (the streamed checkpoint: up to ~50 GB)
        shutil.rmtree(scratch / name, ignore_errors=True)
        shutil.rmtree(SHM / name, ignore_errors=True)

    run_parts(parts, result, out, s["total_budget_s"], scratch, cleanup=cleanup,
              start_method=a.start_method or ("spawn" if s["device"].startswith("cuda") else "fork"), start=_T_START)
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out, result)
    for f in scratch.glob("*.json"):
        f.unlink()
    with contextlib.suppress(OSError):
        scratch.rmdir()
    print(f"[gpu_suite] wrote {out}", flush=True)
    return 0 if all(p.get("status") == "ok" for p in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
