"""SmolLM2-135M in vLLM on CPU: generation throughput of dense, per-layer pruned, uniform and padded checkpoints.

Models (pruned by SlimGPT on WikiText-2 validation, saved with their tokenizer in ``--work``, reused when their
settings match): ``dense``; ``per-layer-20`` and ``per-layer-50`` (per-layer sizes, served by the package's vLLM
plugin); ``uniform-20`` (pruned 20 % with ``schedule="uniform"``, every layer the same size, saved as the plain
Llama architecture); ``padded-20`` (``per-layer-20`` zero-padded to its largest layer, plain Llama).

For each model and each ``--batches`` size: ``vllm.LLM`` (``--dtype``, ``--max-model-len``, eager unless
``--compile``), a warm-up, then ``--repeats`` timed runs of ``batch`` prompts (the first ``--prompt-tokens`` tokens
of WikiText-2 test lines) each generating exactly ``--new-tokens`` tokens (greedy, ``ignore_eos``); output
tokens/s = batch x new tokens / the best wall time. Next to it: the speed-up over dense at the same batch and the
model's weight bytes (its ``*.safetensors``) as a ratio to dense. Every model runs with the same threads:
``--cores`` sets vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` (e.g. ``0-1``).

Run it in the vLLM virtual environment (README, "Serving with vLLM"):

    VLLM_CPU_KVCACHE_SPACE=4 ~/.cache/optimum-slimgpt/venv-vllm/bin/python benchmarks/vllm_throughput.py \\
        --cores 0-1 --batches 1 16 --new-tokens 128 --repeats 3 --out bench_out/vllm_throughput.json

Smoke run (minutes, numbers meaningless): ``--samples 2 --seqlen-calib 32 --batches 1 2 --new-tokens 4 --repeats 1``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from pathlib import Path

MODELS = ("dense", "per-layer-20", "per-layer-50", "uniform-20", "padded-20")


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def prepare(args, work: Path) -> dict[str, Path]:
    """Prune and save the checkpoints that are not in ``work`` yet (with these settings); returns their folders."""
    import torch

    from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner, save_pruned_model
    from optimum_slimgpt.evaluation import wikitext2_validation_rows
    from optimum_slimgpt.modeling import _forget_dequantized_gguf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import WIKI, load_smollm2

    settings = {"samples": args.samples, "seqlen_calib": args.seqlen_calib, "method": "slimgpt", "seed": 0}
    folders = {name: work / name for name in args.models}
    stamp = work / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(
            (f / "config.json").is_file() for f in folders.values()):
        return folders
    work.mkdir(parents=True, exist_ok=True)
    dense, tok = load_smollm2(args.torch_threads)
    rows = wikitext2_validation_rows(WIKI)
    pruned: dict[tuple, object] = {}

    def prune(ratio: float, schedule: str):
        if (ratio, schedule) not in pruned:
            cfg = SlimGPTConfig(pruning_ratio=ratio, dataset=rows, num_samples=args.samples, seqlen=args.seqlen_calib,
                                batch_size=8, seed=0, schedule=schedule)
            t0 = time.perf_counter()
            pruned[ratio, schedule] = SlimGPTPruner(cfg).prune_model(copy.deepcopy(dense), tok)
            print(f"pruned {ratio:.0%} ({schedule}) in {time.perf_counter() - t0:.0f} s", flush=True)
        return pruned[ratio, schedule]

    for name, folder in folders.items():
        if name == "dense":
            _forget_dequantized_gguf(dense)  # loaded dequantized from the GGUF file: a plain model to save
            dense.save_pretrained(folder)
            tok.save_pretrained(folder)
            continue
        kind, ratio = name.rsplit("-", 1)
        model = prune(int(ratio) / 100, "uniform" if kind == "uniform" else "log_increase")
        fmt = {"per-layer": "per_layer", "uniform": "uniform", "padded": "padded"}[kind]
        res = save_pruned_model(model, folder, tokenizer=tok, export_format=fmt, overwrite=True)
        assert res.format == fmt, (name, res.format)
    stamp.write_text(json.dumps(settings))
    del dense, pruned
    gc.collect()
    torch.set_num_threads(args.torch_threads)
    return folders


def prompts(tok, n: int, length: int) -> list[list[int]]:
    """The first ``length`` tokens of the first ``n`` WikiText-2 test lines that have that many."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import WIKI

    out = []
    for line in (WIKI / "wiki.test.tokens").read_text(encoding="utf-8").splitlines():
        ids = tok(line.strip(), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == n:
            return out
    raise RuntimeError(f"WikiText-2 test has fewer than {n} lines of {length} tokens")


def measure(args, folders: dict[str, Path]) -> list[dict]:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tok = AutoTokenizer.from_pretrained(folders["dense"] if "dense" in folders else next(iter(folders.values())))
    batch_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts(tok, max(args.batches), args.prompt_tokens)]
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    rows = []
    for name, folder in folders.items():
        t0 = time.perf_counter()
        llm = LLM(str(folder), dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=not args.compile,
                  seed=0, max_num_seqs=max(args.batches))
        startup = time.perf_counter() - t0
        for batch in args.batches:
            llm.generate(batch_prompts[:batch], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                         use_tqdm=False)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                outs = llm.generate(batch_prompts[:batch], params, use_tqdm=False)
                best = min(best, time.perf_counter() - t0)
                assert all(len(o.outputs[0].token_ids) == args.new_tokens for o in outs)
            row = dict(model=name, batch=batch, new_tokens=args.new_tokens, seconds=round(best, 3),
                       output_tok_s=round(batch * args.new_tokens / best, 2), weight_bytes=weight_bytes(folder),
                       startup_s=round(startup, 1), dtype=args.dtype, cores=args.cores,
                       mode="compiled" if args.compile else "eager")
            rows.append(row)
            print(json.dumps(row), flush=True)
        del llm
        gc.collect()
    dense = {r["batch"]: r for r in rows if r["model"] == "dense"}
    for r in rows:
        if r["batch"] in dense:
            d = dense[r["batch"]]
            r["speedup"] = round(r["output_tok_s"] / d["output_tok_s"], 3)
            r["weight_bytes_ratio"] = round(r["weight_bytes"] / d["weight_bytes"], 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--samples", type=int, default=32, help="calibration windows (WikiText-2 validation)")
    ap.add_argument("--seqlen-calib", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--cores", default=None, help="VLLM_CPU_OMP_THREADS_BIND for every model (e.g. 0-1); "
                                                  "default: vLLM's own choice")
    ap.add_argument("--compile", action="store_true",
                    help="vLLM's default execution on CPU (torch.compile with inductor, traced once) instead of eager "
                         "mode (enforce_eager=True, the default here: fast start-up)")
    ap.add_argument("--torch-threads", type=int, default=2, help="threads for pruning")
    ap.add_argument("--work", default="bench_out/vllm")
    ap.add_argument("--out", default="bench_out/vllm_throughput.json")
    ap.add_argument("--prepare-only", action="store_true",
                    help="prune and save the checkpoints into --work, time nothing (so the timed run can start on "
                         "idle cores with the pruning done)")
    args = ap.parse_args()
    if args.cores:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.cores
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    if "dense" not in args.models:
        args.models = ["dense", *args.models]  # the reference of the ratios
    folders = prepare(args, Path(args.work))
    if args.prepare_only:
        print("\n".join(f"{name}: {folder}" for name, folder in folders.items()))
        return
    rows = measure(args, folders)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print("\n| model | batch | output tok/s | speed-up vs dense | weight bytes / dense |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['output_tok_s']} | {r.get('speedup', '')} | "
              f"{r.get('weight_bytes_ratio', '')} |")


if __name__ == "__main__":
    main()
