"""SmolLM2-135M in llama.cpp: GGUF exports of dense, 20 % and 50 % SlimGPT-pruned models (per-layer sizes,
llama.cpp's ``deci`` architecture), perplexity and decode speed.

For each model (dense, then each ``--ratios``) and each type (f16, q8_0, Q4_K_M: f16 exported, then llama.cpp's
own quantiser):

* perplexity on the first ``--tokens`` tokens of WikiText-2 test in llama.cpp (llama-cpp-python, all logits,
  non-overlapping ``--seqlen`` windows, no BOS), next to the transformers perplexity of the same fp32 model on
  the same windows;
* decode speed in llama.cpp: batch 1, ``--new-tokens`` greedy tokens after a short prompt, ``--threads``
  threads, best of ``--repeats``; next to the **bandwidth limit** of the speed-up, dense weight bytes read per
  token / pruned weight bytes read per token (every tensor but the embedding table, of which one row is read;
  with tied embeddings the table is the output matrix and is read whole).

    python benchmarks/llama_cpp_gguf.py --ratios 0.2 0.5 --samples 32 --seqlen-calib 256 --tokens 16384 --threads 2 \\
        --out bench_out/gguf.json

Every row also counts the 2-D weight tensors that llama.cpp's quantiser could not give the requested K-quant
(``fallback``: a row length not a multiple of 256, stored as Q5_0/Q5_1/Q8_0 instead) and those it had to leave in
F16 (``f16_fallback``: not even a multiple of 32), and the fraction of *all* the model's parameters removed.
``--sizes-only`` writes only the Q4_K_M files and checks the issue's rule: each pruned Q4_K_M file is smaller
than the dense one by at least 0.9 x the fraction of all parameters removed, with no F16 fallback (no perplexity,
no decode; the pruning uses the package defaults, ``channel_multiple="auto"`` included):

    python benchmarks/llama_cpp_gguf.py --sizes-only --ratios 0.2 0.5 --samples 16 --seqlen-calib 256 \\
        --out bench_out/gguf_sizes.json

The pruned checkpoints are kept in ``--work`` (default ``bench_out/gguf``) and reused when their settings match.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WIKI, load_smollm2  # noqa: E402

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner, export_gguf, save_pruned_model  # noqa: E402
from optimum_slimgpt.evaluation import wikitext2_test_text, wikitext2_validation_rows  # noqa: E402
from optimum_slimgpt.gguf_export import open_in_llama_cpp  # noqa: E402

TYPES = (("f16", "f16", None), ("q8_0", "q8_0", None), ("Q4_K_M", "f16", "Q4_K_M"))
#: the types of llama.cpp's K-quant mixes; a 2-D weight of a K-quant file in another type fell back
K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}


def windows(ids: list[int], seqlen: int) -> list[list[int]]:
    return [ids[i:i + seqlen] for i in range(0, len(ids) - seqlen + 1, seqlen)]


@torch.no_grad()
def hf_ppl(model, wins) -> float:
    nll, n = 0.0, 0
    for w in wins:
        x = torch.tensor([w])
        logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        nll -= logp.gather(1, x[0, 1:, None]).sum().item()
        n += len(w) - 1
    return math.exp(nll / n)


def cpp_ppl(path: Path, wins, seqlen: int, threads: int) -> float:
    llm = open_in_llama_cpp(path, n_ctx=seqlen, threads=threads, f32_kv_cache=False)
    nll, n = 0.0, 0
    try:
        for w in wins:
            llm.reset()
            llm.eval(w)
            logits = torch.from_numpy(llm.scores[: len(w) - 1].copy()).double()
            logp = torch.log_softmax(logits, -1)
            nll -= logp.gather(1, torch.tensor(w[1:])[:, None]).sum().item()
            n += len(w) - 1
    finally:
        llm.close()
    return math.exp(nll / n)


def cpp_decode(path: Path, prompt: list[int], new_tokens: int, threads: int, repeats: int) -> float:
    """Tokens per second of greedy decoding, batch 1 (the prompt is evaluated first and not timed)."""
    llm = open_in_llama_cpp(path, n_ctx=len(prompt) + new_tokens + 8, threads=threads, logits_all=False,
                            f32_kv_cache=False)
    best = 0.0
    try:
        for _ in range(repeats):
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
            best = max(best, new_tokens / (time.perf_counter() - t0))
    finally:
        llm.close()
    return best


def bytes_per_token(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    tied = "output.weight" not in names
    return sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight" or tied)


def tensor_types(path: Path) -> dict[str, dict]:
    """Per tensor of a GGUF file: its type, row length (``ne[0]``) and rank."""
    import gguf

    return {t.name: {"type": t.tensor_type.name, "row": int(t.shape[0]), "dims": int(sum(1 for d in t.shape if d > 1))}
            for t in gguf.GGUFReader(path).tensors}


def fallbacks(path: Path, quantize: str | None) -> dict:
    """The 2-D weights of a quantised file that did not get a K-quant (``fallback``) and those left in F16
    (``f16_fallback``), with the count of every type; empty counts for an unquantised file."""
    types = tensor_types(path)
    mats = {n: t for n, t in types.items() if t["dims"] >= 2}
    counts: dict[str, int] = {}
    for t in mats.values():
        counts[t["type"]] = counts.get(t["type"], 0) + 1
    out = {"matrices": len(mats), "type_counts": dict(sorted(counts.items()))}
    if quantize and quantize.upper().startswith("Q") and "_K" in quantize.upper():
        out["fallback"] = sum(t["type"] not in K_TYPES for t in mats.values())
        out["f16_fallback"] = sorted(n for n, t in mats.items() if t["type"] in ("F16", "BF16", "F32"))
    return out


def num_params(model) -> int:
    """Every parameter once (a tied embedding/output matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def decode_only(args) -> None:
    from transformers import AutoTokenizer

    from _common import GGUF, MODEL_DIR

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    prompt = tok("The history of the city begins", add_special_tokens=False)["input_ids"]
    paths = [Path(p) for p in args.decode_only]
    best = {p: 0.0 for p in paths}
    for _ in range(args.repeats):
        for p in paths:
            best[p] = max(best[p], cpp_decode(p, prompt, args.new_tokens, args.threads, 1))
    ref = paths[0]
    print("| file | bytes per token | decode tok/s | speed-up | bandwidth limit | of limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in paths:
        limit = bytes_per_token(ref) / bytes_per_token(p)
        up = best[p] / best[ref]
        print(f"| {p.name} | {bytes_per_token(p):,} | {best[p]:.1f} | {up:.3f} | {limit:.3f} | {up / limit:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--samples", type=int, default=32, help="calibration windows (WikiText-2 validation)")
    ap.add_argument("--seqlen-calib", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=16384, help="first N tokens of WikiText-2 test")
    ap.add_argument("--seqlen", type=int, default=1024, help="perplexity window")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pruned", nargs="*", default=None,
                    help="saved pruned checkpoints to measure instead of pruning (--ratios is then ignored)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense rows (they are in an earlier --out)")
    ap.add_argument("--dense-from", default=None, help="JSONL with the dense rows of an earlier run (for the ratios)")
    ap.add_argument("--work", default="bench_out/gguf")
    ap.add_argument("--out", default="bench_out/gguf.json")
    ap.add_argument("--channel-multiple", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="the pruning config's channel_multiple: 'auto' (the default) or an int (1 = whole channels)")
    ap.add_argument("--sizes-only", action="store_true",
                    help="only the Q4_K_M files: sizes, fallback tensors and the issue's size rule (no perplexity, "
                         "no decode)")
    ap.add_argument("--decode-only", nargs="*", default=None,
                    help="only time the decode of these .gguf files, in interleaved rounds (best of --repeats), so "
                         "that a busy machine slows every file alike; the first file is the reference")
    args = ap.parse_args()
    if args.decode_only:
        return decode_only(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense, tok = load_smollm2(args.threads)
    ids = tok(wikitext2_test_text(WIKI), add_special_tokens=False)["input_ids"][: args.tokens]
    wins = windows(ids, args.seqlen)
    dense_params = num_params(dense)
    types = TYPES[2:] if args.sizes_only else TYPES
    prompt = tok("The history of the city begins", add_special_tokens=False)["input_ids"]
    rows = []
    models = [] if args.no_dense else [("dense", None)]
    if args.pruned is not None:
        models += [(Path(d).name, d) for d in args.pruned]
    else:
        models += [(f"pruned-{int(r * 100)}", r) for r in args.ratios]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.dense_from:
        rows += [json.loads(ln) for ln in Path(args.dense_from).read_text().splitlines() if ln.strip()]
    for name, ratio in models:
        model, info = dense, {"removed": 0.0}
        if isinstance(ratio, str):  # a saved checkpoint
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(ratio, dtype=torch.float32).eval()
            rec = model.config.pruning_config
            info = {"removed": rec.get("achieved_ratio"), "calibration": rec.get("calibration"),
                    "method": rec.get("pruning_method")}
        elif ratio is not None:
            cfg = SlimGPTConfig(pruning_ratio=ratio, dataset=wikitext2_validation_rows(WIKI), num_samples=args.samples,
                                seqlen=args.seqlen_calib, batch_size=8, seed=0,
                                channel_multiple=args.channel_multiple)
            t0 = time.perf_counter()
            pruner = SlimGPTPruner(cfg)
            model = pruner.prune_model(copy.deepcopy(dense), tok)
            info = {"removed": round(pruner.summary.achieved_ratio, 4), "prune_seconds": round(time.perf_counter() - t0, 1),
                    "heads": [r.heads[1] for r in pruner.summary.layers],
                    "channels": [r.channels[1] for r in pruner.summary.layers]}
            save_pruned_model(model, work / name, tokenizer=tok, overwrite=True)
        info["params"] = num_params(model)
        info["removed_all_params"] = round(1 - info["params"] / dense_params, 5)
        if "channels" not in info:
            info["channels"] = [layer.mlp.down_proj.in_features for layer in model.model.layers]
        ref = None
        if not args.sizes_only:
            t0 = time.perf_counter()
            ref = hf_ppl(model, wins)
            print(f"{name}: transformers fp32 perplexity {ref:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for label, outtype, q in types:
            path = work / f"{name}-{label}.gguf"
            res = export_gguf(model, path, tokenizer=tok, outtype=outtype, quantize=q, overwrite=True,
                              require_record=ratio is not None, threads=args.threads)
            ppl = tps = None
            if not args.sizes_only:
                ppl = cpp_ppl(path, wins, args.seqlen, args.threads)
                if label in ("f16", "Q4_K_M"):
                    tps = cpp_decode(path, prompt, args.new_tokens, args.threads, args.repeats)
            row = dict(model=name, type=label, arch=res.arch, file_bytes=res.file_bytes,
                       file_mib=round(res.file_bytes / 2**20, 2), bytes_per_token=bytes_per_token(path),
                       ppl_llama_cpp=round(ppl, 3) if ppl else None, ppl_transformers=round(ref, 3) if ref else None,
                       decode_tok_s=round(tps, 1) if tps else None, tokens=len(wins) * args.seqlen,
                       **fallbacks(path, q), **info)
            rows.append(row)
            with out.with_suffix(".jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in ("heads", "channels")}), flush=True)
    dense_rows = {r["type"]: r for r in rows if r["model"] == "dense"}
    for r in rows:
        d = dense_rows[r["type"]]
        r["bandwidth_limit"] = round(d["bytes_per_token"] / r["bytes_per_token"], 3)
        r["smaller_than_dense"] = round(1 - r["file_bytes"] / d["file_bytes"], 5) if "file_bytes" in d else None
        if r["model"] != "dense" and r["smaller_than_dense"] is not None and "f16_fallback" in r:
            # the rule: at least 0.9 x the fraction of all parameters removed, and no F16 fallback
            r["size_rule_met"] = (r["smaller_than_dense"] >= 0.9 * r["removed_all_params"]
                                  and not r["f16_fallback"])
        if r["decode_tok_s"] and d["decode_tok_s"]:
            r["speedup"] = round(r["decode_tok_s"] / d["decode_tok_s"], 3)
            r["of_limit"] = round(r["speedup"] / r["bandwidth_limit"], 3)
    out.write_text(json.dumps(rows, indent=1))
    if args.sizes_only:
        print("\n| model | type | file MB | smaller than dense | all params removed | 0.9 x removed | fallback "
              "(of 2-D weights) | F16 fallback | rule met |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            s_, rem = r["smaller_than_dense"], r["removed_all_params"]
            print(f"| {r['model']} | {r['type']} | {r['file_bytes'] / 1e6:.2f} | {100 * s_:.2f}% | {100 * rem:.2f}% | "
                  f"{90 * rem:.2f}% | {r.get('fallback')} of {r['matrices']} | {len(r.get('f16_fallback', []))} | "
                  f"{r.get('size_rule_met', '')} |")
        return
    print("\n| model | type | file MiB | ppl llama.cpp | ppl transformers (fp32) | decode tok/s | speed-up | bandwidth limit | of limit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['type']} | {r['file_mib']} | {r['ppl_llama_cpp']} | {r['ppl_transformers']} | "
              f"{r['decode_tok_s'] or ''} | {r.get('speedup', '')} | {r['bandwidth_limit']} | {r.get('of_limit', '')} |")


if __name__ == "__main__":
    main()
