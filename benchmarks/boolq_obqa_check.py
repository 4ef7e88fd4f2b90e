"""The two suspicious zero-shot numbers of issue 28, looked at item by item (dense SmolLM2-135M, float32).

1. OpenBookQA, first 20 items: every question with its gold answer (to check the gold indices by eye), the answer
   picked by ``acc`` (largest summed log-likelihood) and by ``acc_norm`` (per character), from the built-in scorer
   and from lm-eval 0.4.13 on the same in-memory model.
2. BoolQ, first ``--boolq-limit`` items: how often the model prefers " yes", the mean log-likelihood of " no" and
   " yes", acc / acc_norm and the always-"yes" baseline, with the MosaicML prompt the built-in task used before
   (``"Passage: {passage}\\nQuestion: {question}?\\nAnswer:"``) and with lm-eval's (no ``"Passage: "``).

    python benchmarks/boolq_obqa_check.py --boolq-limit 200 --threads 2 --out bench_out/boolq_obqa_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import SHARED, load_smollm2  # noqa: E402

from optimum_slimgpt import evaluation as ev  # noqa: E402

DATA = SHARED / "data"


def obqa(model, tok, n: int) -> dict:
    items = ev.load_task("openbook_qa", data_dir=DATA, limit=n)
    ours = ev.zero_shot(model, tok, items, return_details=True, show_progress=False)
    theirs = ev.evaluate_lm_eval(model, tok, ["openbookqa"], limit=n, data_dir=DATA, return_details=True)["openbookqa"]
    rows = []
    for i, (it, ll, ll_l) in enumerate(zip(items, ours["logliks"], theirs["logliks"])):
        norm = [v / ev.choice_length(c) for v, c in zip(ll, it.choices)]
        a, b = ev.first_argmax(ll), ev.first_argmax(norm)
        rows.append({"i": i, "question": it.context, "gold": it.choices[it.gold].strip(),
                     "acc_pick": it.choices[a].strip(), "acc_norm_pick": it.choices[b].strip(),
                     "lm_eval_acc_pick": it.choices[ev.first_argmax(ll_l)].strip(),
                     "logliks": [round(v, 2) for v in ll], "choices": [c.strip() for c in it.choices]})
        print(f"{i:2d} {it.context[-60:]!r:64} gold {rows[-1]['gold']!r:28} acc {rows[-1]['acc_pick']!r:28} "
              f"norm {rows[-1]['acc_norm_pick']!r}")
    print(f"OBQA first {n}: built-in acc {ours['acc']:.3f} acc_norm {ours['acc_norm']:.3f}; "
          f"lm-eval acc {theirs['acc']:.3f} acc_norm {theirs['acc_norm']:.3f}")
    return {"builtin": {k: ours[k] for k in ("acc", "acc_norm", "n")},
            "lm_eval": {k: theirs[k] for k in ("acc", "acc_norm", "n")}, "items": rows}


def boolq(model, tok, n: int, batch_size: int) -> dict:
    items = ev.load_task("boolq", data_dir=DATA, limit=n)  # lm-eval's prompt
    mosaic = [ev.MCItem("Passage: " + it.context, it.choices, it.gold) for it in items]  # the former prompt
    out = {}
    for name, its in (("mosaic_passage_prefix", mosaic), ("lm_eval_prompt", items)):
        t = time.perf_counter()
        r = ev.zero_shot(model, tok, its, batch_size=batch_size, return_details=True, show_progress=False)
        lls = r["logliks"]
        out[name] = {"n": n, "acc": r["acc"], "acc_norm": r["acc_norm"],
                     "picks_yes": sum(ll[1] > ll[0] for ll in lls) / n,
                     "picks_yes_norm": sum(ll[1] / 3 > ll[0] / 2 for ll in lls) / n,
                     "mean_ll_no": sum(ll[0] for ll in lls) / n, "mean_ll_yes": sum(ll[1] for ll in lls) / n,
                     "always_yes_acc": sum(it.gold for it in its) / n,
                     "acc_on_gold_yes": sum(ll[1] > ll[0] for ll, it in zip(lls, its) if it.gold == 1)
                     / max(1, sum(it.gold for it in its)),
                     "acc_on_gold_no": sum(ll[0] >= ll[1] for ll, it in zip(lls, its) if it.gold == 0)
                     / max(1, sum(1 - it.gold for it in its)),
                     "seconds": round(time.perf_counter() - t, 1)}
        print(f"BoolQ {name}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in out[name].items()}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--obqa-limit", type=int, default=20)
    ap.add_argument("--boolq-limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/boolq_obqa_check.json")
    args = ap.parse_args()
    model, tok = load_smollm2(args.threads)
    res = {"command": " ".join(["python", *sys.argv]), "openbookqa": obqa(model, tok, args.obqa_limit)}
    if args.boolq_limit:
        res["boolq"] = boolq(model, tok, args.boolq_limit, args.batch_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
