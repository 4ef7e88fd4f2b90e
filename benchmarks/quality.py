"""Quality benchmark on SmolLM2-135M: SlimGPT, SlimLLM and the baselines, same protocol for all.

Protocol (the core issue's benchmark protocol, shared by every row):

- **Model:** SmolLM2-135M-Instruct from ``../shared/models`` (GGUF Q4_1, dequantised to float32).
- **Calibration:** 64 windows x 512 tokens from WikiText-2 *validation* (``wiki.valid.tokens`` rows as
  documents, seed 0), or text sampled from the model itself (``dataset="self"``) for the ``self-*`` rows.
- **Perplexity:** the first 65,536 tokens of the WikiText-2 raw *test* text (rows joined with blank lines,
  :func:`optimum_slimgpt.evaluation.wikitext2_test_text`), non-overlapping windows of 2048.
- **Zero-shot** (rows in ``ZERO_SHOT_SETTINGS``): the first 200 PIQA validation items, 100 HellaSwag
  validation items and 200 ARC-Easy test items (MosaicML jsonl), ``acc`` and ``acc_norm``.

Rows (``--settings``, default all, in this order):

- ``dense``
- ``slimgpt-{20,50}``: SlimGPT (OBS selection + compensation, log_increase schedule)
- ``uniform-{20,50}``: the same with a uniform schedule (baseline)
- ``nocomp-{20,50}``: the same OBS selection without compensation (baseline)
- ``magnitude-{20,50}``: structured magnitude, L2 of heads/channels, no compensation, log_increase (baseline)
- ``slimllm-{20,50}``: SlimLLM (Pearson/PCA importance + regression recovery, log_increase)
- ``slimgpt-imp-{20,50}``: SlimGPT's solver with SlimLLM's layer-importance ratios
- ``slimgpt-18.5``, ``slimgpt-47.3``: the removed fractions of the official code's two settings
- ``self-20``: SlimGPT 20% calibrated on 64 x 512 tokens sampled from the model itself
- ``slimgpt-m64-{20,50}``: SlimGPT with every layer's kept FFN channels rounded to a multiple of 64
- ``slimgpt-m1-{20,50}``: SlimGPT with whole FFN channels (``channel_multiple=1``, the default before
  ``"auto"``; every other row uses the default ``channel_multiple="auto"``: multiples of 256 on SmolLM2)
- ``affine-{20,50}``: SlimGPT with affine OBS compensation (``bias_compensation=True``)
- ``flap-{20,50}``: FLAP (fluctuation metric, global adaptive structure, bias compensation)
- ``flap-sched-{20,50}``: FLAP's metric and bias with the log_increase per-layer sizes (no global allocation)

``--zero-shot-set big`` replaces the zero-shot subsets by the evaluation big enough to rank methods: full PIQA
validation (1,838), 1,000 HellaSwag items, full ARC-Easy (2,376), the first 1,000 of BoolQ's 3,270, OpenBookQA
(500), and the mean accuracy over those tasks with its standard error (``--zero-shot-tasks`` runs only some of
them). ``--zero-shot-dtype bfloat16`` scores the zero-shot tasks with the model cast to bfloat16 (about 2.5x
faster on a CPU with AMX; perplexity stays float32); the row records the dtype.

    python benchmarks/quality.py --out bench_out/quality.jsonl [--settings dense slimgpt-20 ...]
    python benchmarks/quality.py --table bench_out/quality.jsonl     # print the markdown tables

Appends one JSON line per setting, so an interrupted run resumes with ``--settings``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, WIKI, append_row, load_smollm2, setting_row  # noqa: E402

from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text, wikitext2_validation_rows, zero_shot  # noqa: E402

ZERO_SHOT = {"piqa": 200, "hellaswag": 100, "arc_easy": 200}
#: the evaluation big enough to rank methods (issue 17): full PIQA validation, 1,000 HellaSwag items, full
#: ARC-Easy and OpenBookQA, the first 1,000 BoolQ items (``None``: every item); there is no WinoGrande in ../shared
ZERO_SHOT_BIG = {"piqa": None, "hellaswag": 1000, "arc_easy": None, "boolq": 1000, "openbook_qa": None}
ZERO_SHOT_SETS = {"small": ZERO_SHOT, "big": ZERO_SHOT_BIG}

_MAG = dict(head_selection="magnitude", channel_selection="magnitude", compensate=False)
SETTINGS: dict[str, dict | None] = {"dense": None}
for _r in (20, 50):
    _p = dict(pruning_ratio=_r / 100)
    SETTINGS[f"slimgpt-{_r}"] = dict(_p)
for _r in (20, 50):
    _p = dict(pruning_ratio=_r / 100)
    SETTINGS[f"magnitude-{_r}"] = dict(_p, **_MAG)
    SETTINGS[f"nocomp-{_r}"] = dict(_p, compensate=False)
    SETTINGS[f"uniform-{_r}"] = dict(_p, schedule="uniform")
    SETTINGS[f"slimllm-{_r}"] = dict(_p, method="slimllm")
SETTINGS["slimgpt-18.5"] = dict(pruning_ratio=0.185)
SETTINGS["slimgpt-47.3"] = dict(pruning_ratio=0.473)
SETTINGS["self-20"] = dict(pruning_ratio=0.20, dataset="self")
for _r in (20, 50):
    SETTINGS[f"slimgpt-imp-{_r}"] = dict(pruning_ratio=_r / 100, schedule="layer_importance")
for _r in (20, 50):
    SETTINGS[f"slimgpt-m64-{_r}"] = dict(pruning_ratio=_r / 100, channel_multiple=64)
for _r in (20, 50):
    SETTINGS[f"slimgpt-m1-{_r}"] = dict(pruning_ratio=_r / 100, channel_multiple=1)
for _r in (20, 50):
    SETTINGS[f"affine-{_r}"] = dict(pruning_ratio=_r / 100, bias_compensation=True)
    SETTINGS[f"flap-{_r}"] = dict(pruning_ratio=_r / 100, method="flap")
    SETTINGS[f"flap-sched-{_r}"] = dict(pruning_ratio=_r / 100, method="flap", global_allocation=False)

ZERO_SHOT_SETTINGS = {"dense"} | {f"{k}-{r}" for k in ("slimgpt", "magnitude", "nocomp", "uniform", "slimllm",
                                                          "affine", "flap", "slimgpt-imp") for r in (20, 50)}

LABELS = {
    "dense": "dense",
    "slimgpt": "SlimGPT (OBS + compensation, log_increase)",
    "uniform": "SlimGPT, uniform schedule",
    "nocomp": "OBS selection, no compensation",
    "magnitude": "structured magnitude (L2), no compensation",
    "slimllm": "SlimLLM (log_increase)",
    "slimgpt-imp": "SlimGPT + layer_importance schedule",
    "self": "SlimGPT, self-generated calibration",
    "slimgpt-m64": "SlimGPT, FFN channels kept in multiples of 64",
    "slimgpt-m1": "SlimGPT, whole FFN channels (channel_multiple=1)",
    "affine": "SlimGPT + affine OBS compensation (bias_compensation=True)",
    "flap": "FLAP (fluctuation metric, global adaptive structure, bias compensation)",
    "flap-sched": "FLAP metric + bias compensation, log_increase sizes (global_allocation=False)",
}


def run(args) -> None:
    dense, tok = load_smollm2(args.threads)
    test_text = wikitext2_test_text(WIKI)
    calib_rows = wikitext2_validation_rows(WIKI)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    for name in args.settings:
        model, row = setting_row(dense, tok, name, SETTINGS[name], calib_rows, args.num_samples, args.seqlen)
        t1 = time.perf_counter()
        row["ppl"] = round(perplexity(model, tok, test_text, seqlen=args.eval_seqlen, max_tokens=args.eval_tokens,
                                      show_progress=False), 3)
        row["ppl_seconds"] = round(time.perf_counter() - t1, 1)
        if name in ZERO_SHOT_SETTINGS and not args.no_zero_shot:
            t2 = time.perf_counter()
            if args.zero_shot_dtype != "float32":
                model = model.to(getattr(torch, args.zero_shot_dtype))
                row["zero_shot_dtype"] = args.zero_shot_dtype
            key = "zero_shot" if args.zero_shot_set == "small" else "zero_shot_big"
            row[key] = {}
            tasks = ZERO_SHOT_SETS[args.zero_shot_set]
            for task in args.zero_shot_tasks or tasks:
                r = zero_shot(model, tok, task, data_dir=SHARED / "data", limit=args.zs_limit or tasks[task],
                              batch_size=8, show_progress=False)
                row[key][task] = {k: round(r[k], 4) for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n")}
            if key == "zero_shot_big":
                row[key]["mean"] = mean_accuracy(row[key])
            row[key + "_seconds"] = round(time.perf_counter() - t2, 1)
        append_row(args.out, row)
        del model


def mean_accuracy(results: dict) -> dict:
    """Mean over tasks of ``acc`` and ``acc_norm`` with the standard error of that mean,
    ``sqrt(Σ se_t²) / T`` (tasks scored on disjoint items, errors independent)."""
    tasks = [t for t in results if t != "mean"]
    out = {"tasks": tasks}
    for k in ("acc", "acc_norm"):
        out[k] = round(sum(results[t][k] for t in tasks) / len(tasks), 4)
        out[k + "_stderr"] = round(sum(results[t][k + "_stderr"] ** 2 for t in tasks) ** 0.5 / len(tasks), 4)
    return out


def big_table(rows: dict) -> str:
    """The bigger zero-shot evaluation (rows that have it): per task acc / acc_norm (n), then the mean ± s.e."""
    have = [n for n in SETTINGS if n in rows and "zero_shot_big" in rows[n]]
    if not have:
        return ""
    tasks = [t for t in ZERO_SHOT_BIG if any(t in rows[n]["zero_shot_big"] for n in have)]
    out = ["| setting | WikiText-2 PPL | " + " | ".join(f"{t} acc / acc_norm" for t in tasks)
           + " | mean acc ± s.e. | mean acc_norm ± s.e. |", "|---" * (len(tasks) + 4) + "|"]
    for n in have:
        zs = rows[n]["zero_shot_big"]
        cells = [f"{zs[t]['acc']:.3f} / {zs[t]['acc_norm']:.3f} (n={zs[t]['n']})" if t in zs else "" for t in tasks]
        m = zs.get("mean") or mean_accuracy(zs)
        out.append(f"| {n} | {rows[n]['ppl']:.2f} | " + " | ".join(cells)
                   + f" | {m['acc']:.4f} ± {m['acc_stderr']:.4f} | {m['acc_norm']:.4f} ± {m['acc_norm_stderr']:.4f} |")
    return "\n".join(out)


def table(path: str) -> str:
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "zero_shot_big" in rows.get(r["setting"], {}) and "zero_shot_big" not in r:
                r["zero_shot_big"] = rows[r["setting"]]["zero_shot_big"]  # a later ppl-only run keeps it
            rows[r["setting"]] = r  # the last run of a setting wins
    out = ["| setting | ratio | block params removed | WikiText-2 PPL | PIQA acc / acc_norm | HellaSwag acc / acc_norm"
           " | ARC-Easy acc / acc_norm | prune s |", "|---|---|---|---|---|---|---|---|"]
    for name in SETTINGS:
        if name not in rows:
            continue
        r = rows[name]
        kind, _, ratio = name.rpartition("-") if name != "dense" else ("dense", "", "0")
        zs = r.get("zero_shot", {})
        cells = [f"{zs[t]['acc']:.3f} / {zs[t]['acc_norm']:.3f}" if t in zs else "" for t in ZERO_SHOT]
        out.append(f"| {LABELS.get(kind, kind)} | {ratio}% | {100 * r['removed']:.1f}% | {r['ppl']:.2f} | "
                   + " | ".join(cells) + f" | {r.get('prune_seconds', 0):.0f} |")
    big = big_table(rows)
    return "\n".join(out) + ("\n\n" + big if big else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), help=f"any of {list(SETTINGS)}")
    ap.add_argument("--out", default="bench_out/quality.jsonl")
    ap.add_argument("--table", default=None, help="print the markdown table of a results file and exit")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--no-zero-shot", action="store_true")
    ap.add_argument("--zs-limit", type=int, default=None, help="override the item counts (smoke runs)")
    ap.add_argument("--zero-shot-set", choices=list(ZERO_SHOT_SETS), default="small",
                    help="small: the first 200 PIQA / 100 HellaSwag / 200 ARC-Easy items (the core protocol); big: "
                         "full PIQA, 1,000 HellaSwag, full ARC-Easy, BoolQ, OpenBookQA, with the mean ± s.e.")
    ap.add_argument("--zero-shot-tasks", nargs="*", default=None,
                    help="only these tasks of the chosen set (the CPU cannot always afford all of them)")
    ap.add_argument("--zero-shot-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype the model is cast to for the zero-shot tasks (perplexity is always float32)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    bad = [t for t in args.zero_shot_tasks or [] if t not in ZERO_SHOT_SETS[args.zero_shot_set]]
    if bad:
        ap.error(f"unknown tasks {bad} for --zero-shot-set {args.zero_shot_set}; "
                 f"choose from {list(ZERO_SHOT_SETS[args.zero_shot_set])}")
    run(args)


if __name__ == "__main__":
    main()
