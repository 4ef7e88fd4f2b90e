"""Built-in zero-shot scorer vs lm-evaluation-harness, item by item (issue 28, "one scorer or two that agree").

For SmolLM2-135M dense and pruned by 20% (SlimGPT defaults, as ``quality.py``'s ``slimgpt-20``), on the first
``--limit`` items of PIQA, ARC-Easy, HellaSwag, BoolQ and OpenBookQA (the local files of ``../shared/data``), this
scores every item twice:

- the built-in scorer: ``optimum_slimgpt.evaluation.zero_shot`` (``MCItem`` loaders, ``loglikelihoods``);
- lm-eval 0.4.13: ``evaluate_lm_eval`` = ``lm_eval.simple_evaluate`` with ``HFLM`` on the same in-memory model and
  the task YAMLs of ``optimum_slimgpt.lm_eval_tasks`` (lm-eval's own prompts, rendered by lm-eval);

and reports, per task: whether the prompts are identical strings (lm-eval's request arguments against the built-in
items), acc and acc_norm of both (and lm-eval's own reported numbers), the share of items with the same chosen answer
(acc and acc_norm choice), the largest log-likelihood difference, and every item where a choice differs with both
scorers' log-likelihoods. Target (issue 28): same acc / acc_norm and the same choice on >= 99.5% of the items.

Full run (the lead runs it on idle cores; ~200 items per task, dense and pruned)::

    python benchmarks/scorer_agreement.py --models dense slimgpt-20 --limit 200 --threads 2 \\
        --out bench_out/scorer_agreement.json

Smoke run: ``--models dense --limit 10``. Prompts of every item, no model (about a minute)::

    python benchmarks/scorer_agreement.py --prompts-only --limit 0 --out bench_out/scorer_prompts.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not another installed copy

from _common import SHARED, WIKI, load_smollm2, setting_row  # noqa: E402

from optimum_slimgpt import evaluation as ev  # noqa: E402
from optimum_slimgpt.lm_eval_tasks import TASK_ALIASES  # noqa: E402

TASKS = ["piqa", "arc_easy", "hellaswag", "boolq", "openbookqa"]  # lm-eval names
BUILTIN_NAME = {v: k for k, v in TASK_ALIASES.items()}  # openbookqa -> openbook_qa
MODELS = {"dense": None, "slimgpt-20": dict(pruning_ratio=0.2)}


def _argmax(values):
    return ev.first_argmax(values)


def compare_task(items, builtin_ll, samples, lm_results) -> dict:
    """Per-item comparison of one task: ``items`` (built-in MCItems), ``builtin_ll`` (per item, per choice),
    ``samples`` (lm-eval's logged samples, sorted by doc_id), ``lm_results`` (lm-eval's results row)."""
    n = len(items)
    assert len(builtin_ll) == n == len(samples), (len(builtin_ll), n, len(samples))
    prompt_diffs, disagree = [], []
    same_acc_choice = same_norm_choice = 0
    hits = {"builtin": [0, 0], "lm_eval": [0, 0]}
    max_diff = 0.0
    for i, (it, ll_b, s) in enumerate(zip(items, builtin_ll, samples)):
        args = [tuple(a) for a in s["arguments"]]
        if args != [(it.context, c) for c in it.choices]:
            prompt_diffs.append({"doc_id": s["doc_id"], "lm_eval": args, "builtin": [(it.context, c) for c in it.choices]})
        ll_l = [float(r[0]) for r in s["filtered_resps"]]
        gold_l = int(s["target"])
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(ll_b, ll_l)))
        lens = [ev.choice_length(c) for c in it.choices]  # lm-eval: len(doc_to_choice), delimiter not counted
        pick = {"builtin": (_argmax(ll_b), _argmax([v / k for v, k in zip(ll_b, lens)])),
                "lm_eval": (_argmax(ll_l), _argmax([v / k for v, k in zip(ll_l, lens)]))}
        for who, gold in (("builtin", it.gold), ("lm_eval", gold_l)):
            hits[who][0] += pick[who][0] == gold
            hits[who][1] += pick[who][1] == gold
        same_acc_choice += pick["builtin"][0] == pick["lm_eval"][0]
        same_norm_choice += pick["builtin"][1] == pick["lm_eval"][1]
        if pick["builtin"] != pick["lm_eval"] or it.gold != gold_l:
            disagree.append({"doc_id": s["doc_id"], "gold": [it.gold, gold_l], "builtin_ll": ll_b, "lm_eval_ll": ll_l,
                             "builtin_pick": pick["builtin"], "lm_eval_pick": pick["lm_eval"],
                             "context_tail": it.context[-120:], "choices": it.choices})
    return {
        "n": n,
        "prompts_identical": n - len(prompt_diffs),
        "acc": {"builtin": hits["builtin"][0] / n, "lm_eval": hits["lm_eval"][0] / n,
                "lm_eval_reported": lm_results.get("acc,none")},
        "acc_norm": {"builtin": hits["builtin"][1] / n, "lm_eval": hits["lm_eval"][1] / n,
                     "lm_eval_reported": lm_results.get("acc_norm,none")},
        "same_acc_choice": same_acc_choice / n,
        "same_acc_norm_choice": same_norm_choice / n,
        "max_abs_loglik_diff": max_diff,
        "disagreements": disagree,
        "prompt_differences": prompt_diffs[:20],
    }


def check_prompts(tasks, limit=None) -> dict:
    """Without a model: lm-eval's rendered context, choices (with its target delimiter) and gold of every document
    against the built-in items; ``{task: {"n", "identical", "first_differences"}}``."""
    import tempfile

    from lm_eval.tasks import TaskManager

    from optimum_slimgpt.lm_eval_tasks import write_lm_eval_tasks

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = TaskManager(include_path=str(write_lm_eval_tasks(tmp, tasks=tasks, data_dir=SHARED / "data")),
                             include_defaults=False).load(list(tasks))["tasks"]
        for task in tasks:
            t = loaded[task]
            items = ev.load_task(BUILTIN_NAME.get(task, task), data_dir=SHARED / "data", limit=limit)
            docs = list(t.eval_docs)[: len(items)]
            diffs = []
            for i, (doc, it) in enumerate(zip(docs, items)):
                got = (t.fewshot_context(doc, num_fewshot=0),
                       [t.config.target_delimiter + c for c in t.doc_to_choice(doc)], int(t.doc_to_target(doc)))
                if got != (it.context, it.choices, it.gold):
                    diffs.append({"i": i, "lm_eval": got, "builtin": (it.context, it.choices, it.gold)})
            out[task] = {"n": len(items), "n_lm_eval_docs": len(list(t.eval_docs)), "identical": len(items) - len(diffs),
                         "first_differences": diffs[:10]}
            print(f"  prompts {task:<11} {out[task]['identical']}/{out[task]['n']} identical "
                  f"(lm-eval docs: {out[task]['n_lm_eval_docs']})", flush=True)
    return out


def run_model(model, tok, tasks, limit, batch_size) -> dict:
    out = {}
    t0 = time.perf_counter()
    raw = ev.evaluate_lm_eval(model, tok, tasks, limit=limit, data_dir=SHARED / "data", batch_size=batch_size,
                              return_raw=True, log_samples=True)
    t_lm = time.perf_counter() - t0
    for task in tasks:
        t1 = time.perf_counter()
        name = BUILTIN_NAME.get(task, task)
        items = ev.load_task(name, data_dir=SHARED / "data", limit=limit)
        b = ev.zero_shot(model, tok, items, batch_size=batch_size, return_details=True, show_progress=False)
        samples = sorted(raw["samples"][task], key=lambda d: d["doc_id"])
        row = compare_task(items, b["logliks"], samples, raw["results"][task])
        row["builtin_seconds"] = round(time.perf_counter() - t1, 1)
        out[task] = row
        print(f"  {task:<11} n={row['n']:<4} prompts identical {row['prompts_identical']}/{row['n']}  "
              f"acc {row['acc']['builtin']:.4f} / {row['acc']['lm_eval']:.4f}  "
              f"acc_norm {row['acc_norm']['builtin']:.4f} / {row['acc_norm']['lm_eval']:.4f}  "
              f"same choice {row['same_acc_choice']:.4f} / {row['same_acc_norm_choice']:.4f}  "
              f"max |dll| {row['max_abs_loglik_diff']:.2e}  disagreements {len(row['disagreements'])}", flush=True)
    out["_lm_eval_seconds_all_tasks"] = round(t_lm, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--limit", type=int, default=200, help="first N items of each task (issue 28: at least 200)")
    ap.add_argument("--batch-size", type=int, default=8, help="for both scorers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=64, help="calibration windows for the pruned model")
    ap.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    ap.add_argument("--out", default="bench_out/scorer_agreement.json")
    ap.add_argument("--prompts-only", action="store_true",
                    help="no model: compare lm-eval's rendered prompts with the built-in items on every item "
                         "(--limit still applies; 0 = all)")
    args = ap.parse_args()
    if args.prompts_only:
        res = check_prompts(args.tasks, limit=args.limit or None)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "prompts": res}, indent=1))
        print(f"wrote {args.out}")
        return

    dense, tok = load_smollm2(args.threads)
    calib = ev.wikitext2_validation_rows(WIKI)
    result = {"command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()} {platform.processor() or ''} torch threads {torch.get_num_threads()}",
              "limit": args.limit, "batch_size": args.batch_size, "models": {}}
    for name in args.models:
        model, row = setting_row(dense, tok, name, MODELS[name], calib, args.num_samples, args.seqlen)
        print(f"{name}: removed {row['removed']:.3f}", flush=True)
        result["models"][name] = {"setting": row, "tasks": run_model(model, tok, args.tasks, args.limit, args.batch_size)}
    rows = [t for m in result["models"].values() for k, t in m["tasks"].items() if not k.startswith("_")]
    n = sum(t["n"] for t in rows)
    result["summary"] = {
        "items": n,
        "same_acc_choice": sum(t["same_acc_choice"] * t["n"] for t in rows) / n,
        "same_acc_norm_choice": sum(t["same_acc_norm_choice"] * t["n"] for t in rows) / n,
        "acc_equal_everywhere": all(t["acc"]["builtin"] == t["acc"]["lm_eval"] == t["acc"]["lm_eval_reported"]
                                    for t in rows),
        "acc_norm_equal_everywhere": all(t["acc_norm"]["builtin"] == t["acc_norm"]["lm_eval"]
                                         == t["acc_norm"]["lm_eval_reported"] for t in rows),
        "prompts_identical": sum(t["prompts_identical"] for t in rows),
    }
    print(json.dumps(result["summary"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
