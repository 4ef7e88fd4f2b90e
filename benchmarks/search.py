"""The evolutionary allocation search (``schedule="search"``, issue 31) against the fixed schedules, SmolLM2-135M.

Same protocol as ``benchmarks/quality.py`` (64 windows x 512 tokens of WikiText-2 validation for calibration, seed 0;
perplexity on the first 65,536 tokens of the WikiText-2 raw test text in windows of 2048; the zero-shot sets of
quality.py, ``--zero-shot-set big`` by default: full PIQA, 1,000 HellaSwag, full ARC-Easy, 1,000 BoolQ, OpenBookQA,
mean ± s.e.). Every row uses SlimGPT's solver (OBS selection and compensation); only the per-layer sizes differ.

Rows per ratio ``R`` in ``--ratios`` (default 20 50):

- ``search-stitched-R``: the search's best candidate itself (every part as the level database pruned it, on the
  inputs of ``--database-inputs``: by default propagated through the starting candidate's pruned model, stitched)
- ``search-reprune-R``: the block loop re-pruned at the found sizes (propagated inputs); this is the searched
  profile used as an explicit schedule, which gives the same model as ``search_final="reprune"`` (tested)
- ``log_increase-R``, ``layer_importance-R``: the package's fixed schedules
- ``flap_alloc-R``: FLAP's global allocation (its standardised fluctuation scores ranked across layers: FLAP's
  per-layer sizes) with SlimGPT's solver

The search runs once per ratio (its row records its wall time, its generations and KL history). The baselines are
pruned at the ratio the search actually removed (``removed`` of the search row, within one ladder step above
``R``), so that every row removes the same parameters up to each schedule's rounding (``removed`` is in every
row). Without a search row in ``--out`` they use ``R``.

    python benchmarks/search.py --out bench_out/search.jsonl                  # all rows (see docs/benchmarks.md)
    python benchmarks/search.py --table bench_out/search.jsonl                # the markdown tables
    python benchmarks/search.py --ratios 50 --rows search log_increase --zero-shot-set none --minutes 8 \\
        --out bench_out/search_check.jsonl                                     # a short check at 50%

Appends one JSON line per row, so an interrupted run resumes with ``--rows``. Zero-shot only, for the searched
sizes of an earlier run and the best fixed schedule (``--skip-ppl``: no perplexity):

    python benchmarks/search.py --ratios 50 --rows profile log_increase --profiles bench_out/search4.jsonl \
        --skip-ppl --zero-shot-set small --zero-shot-dtype float32 --out bench_out/search4_zs.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, WIKI, append_row, load_smollm2, searched_profile  # noqa: E402
from quality import ZERO_SHOT_SETS, mean_accuracy  # noqa: E402

from optimum_slimgpt import FLAPConfig, SlimGPTConfig, SlimGPTPruner, get_adapter  # noqa: E402
from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text, wikitext2_validation_rows, zero_shot  # noqa: E402

ROWS = ("search", "log_increase", "layer_importance", "flap_alloc")


def _base(args, ratio: float, **kw) -> dict:
    return dict(pruning_ratio=ratio, num_samples=args.num_samples, seqlen=args.seqlen, seed=0, **kw)


def _sizes_row(pruner) -> dict:
    s = pruner.summary
    return dict(removed=round(s.achieved_ratio, 5), block_params_removed=s.block_params_before - s.block_params_after,
                prune_seconds=round(s.seconds, 1), heads=[r.heads[1] for r in s.layers],
                kv_heads=[r.kv_heads[1] for r in s.layers], channels=[r.channels[1] for r in s.layers])


def _prune(dense, tok, config, calib):
    model = copy.deepcopy(dense)
    pruner = SlimGPTPruner(config)
    pruner.prune_model(model, tok, calibration=calib)
    return model, pruner


def _flap_schedule(dense, tok, args, ratio: float, calib) -> list[list[float]]:
    """FLAP's per-layer sizes (its global allocation) as an explicit ``[attention_ratio, ffn_ratio]`` schedule that
    SlimGPT's plan rounds back to the same heads and channels."""
    _, flap = _prune(dense, tok, FLAPConfig(**_base(args, ratio, dataset=None)), calib)
    adapter = get_adapter(dense)
    out = []
    for block, lp in zip(adapter.get_blocks(dense), flap.plan.layers):
        g = adapter.geometry(block, dense.config)
        removed = g.attention_params - lp.heads * g.params_per_head - lp.kv_heads * g.params_per_kv_head
        out.append([removed / g.attention_params, (g.channels - lp.channels) / g.channels])
    return out


def _evaluate(model, tok, row: dict, args, test_text: str) -> dict:
    if not args.skip_ppl:
        t = time.perf_counter()
        row["ppl"] = round(perplexity(model, tok, test_text, seqlen=args.eval_seqlen, max_tokens=args.eval_tokens,
                                      show_progress=False), 3)
        row["ppl_seconds"] = round(time.perf_counter() - t, 1)
    if args.zero_shot_set != "none":
        t = time.perf_counter()
        m = model if args.zero_shot_dtype == "float32" else copy.deepcopy(model).to(getattr(torch, args.zero_shot_dtype))
        tasks = ZERO_SHOT_SETS[args.zero_shot_set]
        zs = {}
        for task in tasks:
            r = zero_shot(m, tok, task, data_dir=SHARED / "data", limit=args.zs_limit or tasks[task], batch_size=8,
                          show_progress=False)
            zs[task] = {k: round(r[k], 4) for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n")}
        zs["mean"] = mean_accuracy(zs)
        row["zero_shot"], row["zero_shot_set"] = zs, args.zero_shot_set
        row["zero_shot_dtype"] = args.zero_shot_dtype
        row["zero_shot_seconds"] = round(time.perf_counter() - t, 1)
    return row


def _searched_ratio(path: Path, r: int):
    """The removed fraction of the last ``search-reprune-R`` row in ``path`` (None without one)."""
    if not path.exists():
        return None
    found = None
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("setting") == f"search-reprune-{r}":
                found = row["block_params_removed"] / row["block_params_before"]
    return found


def run(args) -> None:
    dense, tok = load_smollm2(args.threads)
    test_text = wikitext2_test_text(WIKI)
    from optimum_slimgpt.calibration import get_calibration_data

    calib = get_calibration_data(SlimGPTConfig(dataset=wikitext2_validation_rows(WIKI), num_samples=args.num_samples,
                                               seqlen=args.seqlen, seed=0), tok)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.dense:
        append_row(out, _evaluate(dense, tok, {"setting": "dense", "removed": 0.0}, args, test_text))
    search_kw = dict(search_levels=args.levels, search_generations=args.generations, search_offspring=args.offspring,
                     search_tokens=args.tokens, search_survivors=args.survivors, search_seed=args.search_seed,
                     search_minutes=args.minutes, search_final="stitched",
                     search_database_inputs=args.database_inputs)
    for r in args.ratios:
        ratio = r / 100
        if "search" in args.rows:
            model, pruner = _prune(dense, tok, SlimGPTConfig(**_base(args, ratio, dataset=None, schedule="search",
                                                                     **search_kw)), calib)
            res = pruner.search_result
            rec = res.to_record("stitched")
            info = dict(search={k: rec[k] for k in ("schedule", "levels", "settings", "budget", "fitness",
                                                   "fitness_history", "start_fitness", "generations", "accepted",
                                                   "out_of_time", "evaluations", "fitness_tokens")},
                        search_seconds=round(res.seconds["database"] + res.seconds["search"], 1),
                        database_seconds=round(res.seconds["database"], 1),
                        block_params_before=pruner.summary.block_params_before)
            row = {"setting": f"search-stitched-{r}", **_sizes_row(pruner), **info}
            append_row(out, _evaluate(model, tok, row, args, test_text))
            del model
            model, again = _prune(dense, tok, SlimGPTConfig(**_base(args, ratio, dataset=None,
                                                                    schedule=res.schedule)), calib)
            row = {"setting": f"search-reprune-{r}", **_sizes_row(again), "schedule": res.schedule,
                   "search_seconds": info["search_seconds"], "block_params_before": again.summary.block_params_before}
            append_row(out, _evaluate(model, tok, row, args, test_text))
            del model
        if "profile" in args.rows:  # the searched sizes of an earlier run, re-pruned and evaluated (no search)
            sched = searched_profile(args.profiles, f"search-reprune-{r}")
            model, again = _prune(dense, tok, SlimGPTConfig(**_base(args, ratio, dataset=None, schedule=sched)), calib)
            row = {"setting": f"search-reprune-{r}", **_sizes_row(again), "schedule": sched,
                   "from_profile": args.profiles, "block_params_before": again.summary.block_params_before}
            append_row(out, _evaluate(model, tok, row, args, test_text))
            del model
        target = (_searched_ratio(out, r) or (_searched_ratio(Path(args.profiles), r) if args.profiles else None)
                  or ratio)
        for kind in ("log_increase", "layer_importance", "flap_alloc"):
            if kind not in args.rows:
                continue
            sched = _flap_schedule(dense, tok, args, target, calib) if kind == "flap_alloc" else kind
            model, pruner = _prune(dense, tok, SlimGPTConfig(**_base(args, target, dataset=None, schedule=sched)),
                                   calib)
            row = {"setting": f"{kind}-{r}", "requested": round(target, 6), **_sizes_row(pruner),
                   "block_params_before": pruner.summary.block_params_before}
            append_row(out, _evaluate(model, tok, row, args, test_text))
            del model


def table(path: str) -> str:
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["setting"]] = r
    head = ("| setting | block params removed | WikiText-2 PPL | mean zero-shot acc ± s.e. | mean acc_norm ± s.e. "
            "| prune s | search s |")
    out = [head, "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        m = r.get("zero_shot", {}).get("mean")
        zs = (f"{m['acc']:.4f} ± {m['acc_stderr']:.4f} | {m['acc_norm']:.4f} ± {m['acc_norm_stderr']:.4f}" if m
              else " | ")
        ppl = f"{r['ppl']:.2f}" if "ppl" in r else ""
        out.append(f"| {name} | {100 * r['removed']:.2f}% | {ppl} | {zs} | {r.get('prune_seconds', 0):.0f} | "
                   f"{r.get('search_seconds', '')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/search.jsonl")
    ap.add_argument("--table", default=None, help="print the markdown table of a results file and exit")
    ap.add_argument("--ratios", type=int, nargs="*", default=[20, 50], help="percent of block parameters to remove")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"any of {list(ROWS)}, or 'profile': re-prune at "
                    "the searched sizes of --profiles instead of searching")
    ap.add_argument("--profiles", default=None, help="an earlier output of this script: its search-reprune-R rows' "
                    "schedules for the 'profile' row, and their removed fractions for the baselines")
    ap.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--levels", type=float, nargs="*", default=[round(0.1 * k, 1) for k in range(10)])
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--tokens", type=int, nargs="*", default=[256, 1024, 4096],
                    help="tokens of each selection step (whole windows of --seqlen, then a prefix of the next)")
    ap.add_argument("--survivors", type=int, nargs="*", default=[2, 1])
    ap.add_argument("--search-seed", type=int, default=0)
    ap.add_argument("--database-inputs", choices=["dense", "propagated"], default="propagated",
                    help="the level database's block inputs (search_database_inputs)")
    ap.add_argument("--minutes", type=float, default=25.0, help="the search's time budget (after the database)")
    ap.add_argument("--skip-ppl", action="store_true", help="no perplexity (e.g. zero-shot only for known rows)")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--zero-shot-set", choices=["none", *ZERO_SHOT_SETS], default="big")
    ap.add_argument("--zero-shot-dtype", default="bfloat16", help="float32 | bfloat16 (quality.py's big-set rows)")
    ap.add_argument("--zs-limit", type=int, default=None, help="override the item counts (smoke runs)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    bad = set(args.rows) - set(ROWS) - {"profile"}
    if bad:
        ap.error(f"unknown --rows {sorted(bad)}; choose from {list(ROWS)} or 'profile'")
    if "profile" in args.rows and not args.profiles:
        ap.error("--rows profile needs --profiles")
    run(args)


if __name__ == "__main__":
    main()
