"""SlimGPT x SlimLLM on SmolLM2-135M: method (head/channel selection + repair) and layer schedule, crossed.

``method`` (``slimgpt``: OBS selection and compensation; ``slimllm``: holistic Pearson/PCA importance and
regression recovery) and ``schedule`` (``log_increase``: SlimGPT's incremental ratios;
``layer_importance``: SlimLLM's cosine-ranked softmax ratios) are independent arguments; this script
measures the four combinations at 20% and 50%, plus SlimLLM ablations (official "keep the lowest 1% of
FFN channels" rule, no regression recovery, no swap search).

Protocol: calibration = 32 windows x 256 tokens of WikiText-2 *validation* (``wiki.valid.tokens`` rows as
documents, seed 0); perplexity on the first 16 x 512 tokens of the WikiText-2 raw *test* text (rows of
``wiki.test.raw.nonempty-crlf.txt`` split on CRLF, joined with blank lines, tokenised without special
tokens).

    python benchmarks/slimllm_combos.py --out bench_out/slimllm_combos.jsonl [--settings dense gpt-log-20 ...]

Writes one JSON line per setting (appending, so an interrupted run can be resumed with --settings).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WIKI, append_row, load_smollm2, setting_row  # noqa: E402

from optimum_slimgpt.evaluation import perplexity  # noqa: E402

SETTINGS: dict[str, dict | None] = {"dense": None}
for _r in (20, 50):
    for _m, _mn in (("gpt", "slimgpt"), ("llm", "slimllm")):
        for _s, _sn in (("log", "log_increase"), ("imp", "layer_importance")):
            SETTINGS[f"{_m}-{_s}-{_r}"] = dict(method=_mn, schedule=_sn, pruning_ratio=_r / 100)
    SETTINGS[f"llm-log-{_r}-keep1"] = dict(method="slimllm", schedule="log_increase", pruning_ratio=_r / 100,
                                           keep_lowest=0.01)
    SETTINGS[f"llm-log-{_r}-norec"] = dict(method="slimllm", schedule="log_increase", pruning_ratio=_r / 100,
                                           recovery=False)
    SETTINGS[f"llm-log-{_r}-noswap"] = dict(method="slimllm", schedule="log_increase", pruning_ratio=_r / 100,
                                            swap_search=False)
DEFAULT = ["dense"] + [f"{m}-{s}-{r}" for r in (20, 50) for m in ("gpt", "llm") for s in ("log", "imp")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=DEFAULT, help=f"any of {list(SETTINGS)}")
    ap.add_argument("--out", default="bench_out/slimllm_combos.jsonl")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")

    dense, tok = load_smollm2(args.threads)
    rows = (WIKI / "wiki.test.raw.nonempty-crlf.txt").read_text(encoding="utf-8").split("\r\n")
    need = args.eval_windows * args.eval_seqlen
    ids = tok("\n\n".join(rows), add_special_tokens=False, return_tensors="pt").input_ids[0][:need]
    calib_rows = (WIKI / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    for name in args.settings:
        model, row = setting_row(dense, tok, name, SETTINGS[name], calib_rows, args.num_samples, args.seqlen)
        t1 = time.perf_counter()
        row["ppl"] = round(perplexity(model, None, ids, seqlen=args.eval_seqlen, batch_size=4, show_progress=False), 3)
        row["eval_seconds"] = round(time.perf_counter() - t1, 1)
        append_row(args.out, row)
        del model


if __name__ == "__main__":
    main()
