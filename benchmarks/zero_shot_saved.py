"""The zero-shot sets of ``benchmarks/quality.py`` on saved checkpoints (no pruning, no perplexity).

For models that another benchmark already pruned and saved (``benchmarks/recovery.py --work``), e.g. the searched and
the ``log_increase`` 50% models of the allocation-search benchmark:

    python benchmarks/zero_shot_saved.py bench_out/recovery/slimgpt-50 bench_out/recovery/slimgpt-50-search-reprune-50 \\
        --zero-shot-set big --limit 200 --out bench_out/zs_saved.jsonl

Each model gets one JSON line: per task ``acc`` / ``acc_norm`` with standard errors and ``n``, and the mean over the
tasks with its standard error (``quality.mean_accuracy``). ``--limit`` scores the first N items of every task.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, append_row  # noqa: E402
from quality import ZERO_SHOT_SETS, mean_accuracy  # noqa: E402

from optimum_slimgpt.evaluation import zero_shot  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="saved checkpoint folders")
    ap.add_argument("--zero-shot-set", choices=list(ZERO_SHOT_SETS), default="big")
    ap.add_argument("--limit", type=int, default=None, help="the first N items of every task (default: the set's)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/zs_saved.jsonl")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tasks = ZERO_SHOT_SETS[args.zero_shot_set]
    for folder in args.models:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
        t = time.perf_counter()
        zs = {}
        for task, n in tasks.items():
            r = zero_shot(model, tok, task, data_dir=SHARED / "data", limit=args.limit or n, batch_size=8,
                          show_progress=False)
            zs[task] = {k: round(r[k], 4) for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n")}
        zs["mean"] = mean_accuracy(zs)
        append_row(Path(args.out), {"model": folder, "zero_shot": zs, "zero_shot_set": args.zero_shot_set,
                                    "limit": args.limit, "dtype": args.dtype, "threads": args.threads,
                                    "seconds": round(time.perf_counter() - t, 1)})
        del model


if __name__ == "__main__":
    main()
