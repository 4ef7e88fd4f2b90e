"""SlimGPT on SmolLM2-135M: the protocol of the core issue's benchmark table.

Calibration: 64 windows x 512 tokens of WikiText-2 *validation* (seed 0). Evaluation: perplexity on the
first 65,536 tokens of the WikiText-2 raw *test* text (rows joined with blank lines), windows of 2048.
Settings: dense; 20% and 50% with log_increase, uniform, and without compensation; and the official
code's removed fractions 18.5% and 47.3% (log_increase).

    python benchmarks/slimgpt_smollm2.py --out bench_out/slimgpt_smollm2.json [--settings log20 uniform20 ...]

Writes one JSON line per setting (appending, so an interrupted run can be resumed with --settings).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner
from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text

SHARED = Path(os.environ.get("SLIMGPT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MODEL_DIR = SHARED / "models" / "smollm2-135m-instruct-q4_1"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI = SHARED / "data" / "wikitext-2"

SETTINGS = {
    "dense": None,
    "log20": dict(pruning_ratio=0.20),
    "uniform20": dict(pruning_ratio=0.20, schedule="uniform"),
    "nocomp20": dict(pruning_ratio=0.20, compensate=False),
    "log50": dict(pruning_ratio=0.50),
    "uniform50": dict(pruning_ratio=0.50, schedule="uniform"),
    "nocomp50": dict(pruning_ratio=0.50, compensate=False),
    "log18.5": dict(pruning_ratio=0.185),
    "log47.3": dict(pruning_ratio=0.473),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--out", default="bench_out/slimgpt_smollm2.jsonl")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    args = ap.parse_args()

    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    dense = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    test_text = wikitext2_test_text(WIKI)
    calib_rows = (WIKI / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    for name in args.settings:
        kw = SETTINGS[name]
        t0 = time.perf_counter()
        row = {"setting": name}
        if kw is None:
            model = dense
            row.update(removed=0.0, prune_seconds=0.0)
        else:
            model = copy.deepcopy(dense)
            cfg = SlimGPTConfig(dataset=calib_rows, num_samples=args.num_samples, seqlen=args.seqlen, seed=0, **kw)
            pruner = SlimGPTPruner(cfg)
            pruner.prune_model(model, tok)
            s = pruner.summary
            row.update(config=kw, removed=round(s.achieved_ratio, 4), prune_seconds=round(s.seconds, 1),
                       heads=[r.heads[1] for r in s.layers], kv_heads=[r.kv_heads[1] for r in s.layers],
                       channels=[r.channels[1] for r in s.layers], timings={k: round(v, 1) for k, v in s.timings.items()})
        t1 = time.perf_counter()
        row["ppl"] = round(perplexity(model, tok, test_text, seqlen=args.eval_seqlen, max_tokens=args.eval_tokens), 3)
        row["eval_seconds"] = round(time.perf_counter() - t1, 1)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        del model


if __name__ == "__main__":
    main()
