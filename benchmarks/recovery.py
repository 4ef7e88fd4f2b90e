"""Recovery benchmark on SmolLM2-135M: SlimGPT-pruned, then fine-tuned with ``optimum_slimgpt.recovery.recover``.

Protocol:

- **Pruning:** the quality table's SlimGPT rows (``benchmarks/quality.py``: 64 windows x 512 tokens of
  WikiText-2 *validation*, seed 0, ``log_increase``), at 50% and 20%. The pruned model is saved once under
  ``--work`` and reloaded by later runs.
- **Recovery data:** WikiText-2 *validation* (``wiki.valid.tokens`` rows), non-overlapping windows of
  ``--seqlen`` tokens in a seeded order, or ``dataset="self"`` (text sampled from the dense teacher).
  Never the test split.
- **Evaluation:** the quality table's protocol: perplexity on the first 65,536 tokens of the WikiText-2 raw
  *test* text in windows of 2048; zero-shot on the first 200 PIQA, 100 HellaSwag and 200 ARC-Easy items.
- **Budget:** ``--steps`` optimizer steps of ``--batch-size`` windows (the same for every run it is given to),
  or ``--minutes``: the step count that a 4-step timing run says fits in that many minutes.

Runs (``--runs``, in order): ``pruned-{50,20}`` (no recovery), ``kd-{50,20}`` (KD, full fine-tuning),
``lm-50`` (next-token loss, full fine-tuning), ``kd-lora-50`` (KD, LoRA r=16 merged), ``kd-self-50`` (KD on text
sampled from the teacher), ``kdlm-50`` (KD + next-token), ``pruned-search-50`` / ``kd-search-50`` (the same at the
per-layer sizes that ``schedule="search"`` found: the ``search-reprune-50`` row of ``--profiles``, a
``benchmarks/search.py`` output).

    python benchmarks/recovery.py --runs pruned-50 kd-50 lm-50 --steps 120 --out bench_out/recovery.jsonl
    python benchmarks/recovery.py --table bench_out/recovery.jsonl
    python benchmarks/recovery.py --step-cost --out bench_out/step_cost.jsonl   # seconds per step of each variant

``--teacher-dtype bfloat16`` distils from a bfloat16 copy of the dense model (it only runs forward) and
``--freeze-embeddings`` leaves the embeddings and the tied head out of full fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import SHARED, WIKI, append_row, load_smollm2, prune_copy, searched_profile  # noqa: E402

from optimum_slimgpt import RecoveryConfig, recover, save_pruned_model  # noqa: E402
from optimum_slimgpt.evaluation import perplexity, wikitext2_test_text, wikitext2_validation_rows, zero_shot  # noqa: E402

ZERO_SHOT = {"piqa": 200, "hellaswag": 100, "arc_easy": 200}

RUNS = {
    "pruned-50": dict(ratio=50, recover=None),
    "pruned-20": dict(ratio=20, recover=None),
    "kd-50": dict(ratio=50, recover=dict(loss="kd")),
    "lm-50": dict(ratio=50, recover=dict(loss="lm")),
    "kd-lora-50": dict(ratio=50, recover=dict(loss="kd", lora_r=16)),
    "kd-self-50": dict(ratio=50, recover=dict(loss="kd", dataset="self")),
    "kdlm-50": dict(ratio=50, recover=dict(loss="kd+lm")),
    "kd-20": dict(ratio=20, recover=dict(loss="kd")),
    # the searched per-layer sizes (``--profiles``: the ``search-reprune-50`` row of benchmarks/search.py's output)
    "pruned-search-50": dict(ratio=50, recover=None, profile="search-reprune-50"),
    "kd-search-50": dict(ratio=50, recover=dict(loss="kd"), profile="search-reprune-50"),
}


def pruned_model(dense, tok, ratio: int, work: Path, calib_rows, schedule=None, tag: str = ""):
    """The SlimGPT-pruned model at ``ratio`` percent: pruned once (the quality table's settings; ``schedule``: an
    explicit per-layer schedule instead of ``log_increase``, kept under a folder named with ``tag``) and saved."""
    from transformers import AutoModelForCausalLM

    folder = work / (f"slimgpt-{ratio}" + (f"-{tag}" if tag else ""))
    if not (folder / "config.json").exists():
        settings = dict(pruning_ratio=ratio / 100, **({"schedule": schedule} if schedule is not None else {}))
        model, _, info = prune_copy(dense, tok, settings, calib_rows, 64, 512)
        save_pruned_model(model, folder, tokenizer=tok, overwrite=True)
        (folder / "prune_info.json").write_text(json.dumps(info))
        return model
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def evaluate(model, tok, test_text, zs: bool, zs_limit) -> dict:
    t0 = time.perf_counter()
    out = {"ppl": round(perplexity(model, tok, test_text, seqlen=2048, max_tokens=65_536, show_progress=False), 3)}
    out["ppl_seconds"] = round(time.perf_counter() - t0, 1)
    if zs:
        t1 = time.perf_counter()
        out["zero_shot"] = {}
        for task, limit in ZERO_SHOT.items():
            r = zero_shot(model, tok, task, data_dir=SHARED / "data", limit=zs_limit or limit, batch_size=8,
                          show_progress=False)
            out["zero_shot"][task] = {k: round(r[k], 4) for k in ("acc", "acc_norm", "n")}
        out["zero_shot_seconds"] = round(time.perf_counter() - t1, 1)
    return out


def recovery_config(args, overrides: dict, steps: int) -> RecoveryConfig:
    kw = dict(dataset=args.valid_rows, seqlen=args.seqlen, max_steps=steps, batch_size=args.batch_size,
              gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="cosine",
              warmup_steps=min(10, steps // 10), temperature=1.0, seed=0, logging_steps=max(1, steps // 20),
              num_samples=args.self_samples if overrides.get("dataset") == "self" else None, dtype=args.dtype,
              freeze_embeddings=args.freeze_embeddings)
    kw.update(overrides)
    if kw.get("lora_r"):
        kw["learning_rate"] = args.lora_lr
    return RecoveryConfig(**kw)


def seconds_per_step(student, teacher, tok, args, overrides: dict, steps: int = 4) -> float:
    """Median seconds of steps 2..``steps`` of a short recovery run on a copy of ``student`` (the first step
    carries one-off costs: allocations, the data loader)."""
    from transformers import TrainerCallback

    ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append(time.perf_counter())

    probe = copy.deepcopy(student)
    cfg = recovery_config(args, {**overrides, "dataset": args.valid_rows}, steps)
    recover(probe, teacher, tok, cfg, callbacks=[StepTimes()])
    del probe
    gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
    return gaps[len(gaps) // 2]


def timed_steps(student, teacher, tok, args, overrides) -> int:
    """Steps that fit in ``args.minutes``, from a 4-step run (:func:`seconds_per_step`, same data path and loss)."""
    per_step = seconds_per_step(student, teacher, tok, args, overrides)
    steps = max(1, int(args.minutes * 60 / per_step))
    print(f"timing: {per_step:.1f} s/step -> {steps} steps in {args.minutes} min", flush=True)
    return steps


def step_cost(args) -> None:
    """Seconds per optimizer step of the 50% model for the KD and LM losses, with a float32 or bfloat16 teacher and
    with or without frozen embeddings (``--steps`` steps each, default 6; the median of all but the first)."""
    dense, tok = load_smollm2(args.threads)
    args.valid_rows = wikitext2_validation_rows(WIKI)
    student = pruned_model(dense, tok, 50, Path(args.work), args.valid_rows)
    bf16 = copy.deepcopy(dense).to(torch.bfloat16)
    variants = [("kd", "float32", False), ("kd", "bfloat16", False), ("kd", "float32", True), ("kd", "bfloat16", True),
                ("lm", None, False), ("lm", None, True)]
    for loss, teacher_dtype, freeze in variants:
        teacher = None if loss == "lm" else (bf16 if teacher_dtype == "bfloat16" else dense)
        sec = seconds_per_step(student, teacher, tok, args, {"loss": loss, "freeze_embeddings": freeze},
                               steps=args.steps or 6)
        append_row(args.out, {"step_cost": loss, "teacher_dtype": teacher_dtype, "freeze_embeddings": freeze,
                              "threads": args.threads, "batch": args.batch_size, "seqlen": args.seqlen,
                              "seconds_per_step": round(sec, 2)})


def run(args) -> None:
    dense, tok = load_smollm2(args.threads)
    # the teacher only runs forward: a bfloat16 copy is cheaper where bf16 matmuls are fast (the student stays float32)
    teacher = dense if args.teacher_dtype == "float32" else copy.deepcopy(dense).to(getattr(torch, args.teacher_dtype))
    test_text = wikitext2_test_text(WIKI)
    args.valid_rows = wikitext2_validation_rows(WIKI)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    steps = args.steps
    for name in args.runs:
        spec = RUNS[name]
        t0 = time.perf_counter()
        profile = spec.get("profile")
        if profile is not None and args.profiles is None:
            raise SystemExit(f"{name} needs --profiles (a benchmarks/search.py output with a '{profile}' row)")
        schedule = None if profile is None else searched_profile(args.profiles, profile)
        student = pruned_model(dense, tok, spec["ratio"], work, args.valid_rows, schedule=schedule,
                               tag="" if profile is None else profile)
        row = {"run": name, "ratio": spec["ratio"]}
        if profile is not None:
            row.update(profile=profile, profiles=args.profiles, schedule=schedule)
        if spec["recover"] is not None:
            if steps is None:
                steps = timed_steps(student, teacher, tok, args, spec["recover"])
            cfg = recovery_config(args, spec["recover"], steps)
            t1 = time.perf_counter()
            recover(student, teacher, tok, cfg)
            rec = student.config.pruning_config["recovery"][-1]
            row.update(steps=steps, tokens=rec["tokens"], loss=cfg.loss, lora_r=cfg.lora_r, lr=cfg.learning_rate,
                       dtype=cfg.dtype, teacher_dtype=args.teacher_dtype, freeze_embeddings=cfg.freeze_embeddings,
                       threads=args.threads,
                       dataset="self" if cfg.dataset == "self" else "wikitext2-validation",
                       windows=rec["data"]["num_samples"], final_train_loss=rec["final_train_loss"],
                       train_seconds=round(time.perf_counter() - t1, 1), data_seconds=rec.get("data_seconds", 0))
        row.update(evaluate(student, tok, test_text, name in args.zero_shot, args.zs_limit))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        append_row(args.out, row)
        del student


def table(path: str) -> str:
    rows = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if "run" in r:  # step-cost rows are printed as they are measured; the last run of a setting wins
            rows[(r["run"], r.get("steps"), r.get("teacher_dtype", "float32"), bool(r.get("freeze_embeddings")))] = r
    out = ["| run | pruned | recovery | data | steps × tokens | train s | WikiText-2 test PPL | PIQA acc / norm | "
           "HellaSwag acc / norm | ARC-Easy acc / norm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (list(RUNS).index(k[0]), k[1] or 0, k[2], k[3])):
        name, r = key[0], rows[key]
        if "loss" in r:
            how = f"{r['loss']}, " + (f"LoRA r={r['lora_r']}" if r["lora_r"] else "full") + f", lr {r['lr']:g}"
            if r.get("freeze_embeddings") and not r["lora_r"]:
                how += ", embeddings frozen"
            if r.get("teacher_dtype", "float32") != "float32" and (r["loss"] != "lm" or r["dataset"] == "self"):
                how += f", {r['teacher_dtype']} teacher"
            data = f"{r['dataset']} ({r['windows']} windows)"
            budget = f"{r['steps']} × {r['tokens'] // r['steps']}"
            gen = r.get("data_seconds", 0)  # recover()'s wall time includes sampling the 'self' text
            secs = f"{r['train_seconds'] - gen:.0f}" + (f" (+{gen:.0f} sampling)" if gen else "")
        else:
            how, data, budget, secs = "none", "", "", ""
        zs = r.get("zero_shot", {})
        cells = [f"{zs[t]['acc']:.3f} / {zs[t]['acc_norm']:.3f}" if t in zs else "" for t in ZERO_SHOT]
        out.append(f"| {name} | {r['ratio']}% | {how} | {data} | {budget} | {secs} | {r['ppl']:.2f} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=["pruned-50", "kd-50", "lm-50"], help=f"any of {list(RUNS)}")
    ap.add_argument("--out", default="bench_out/recovery.jsonl")
    ap.add_argument("--profiles", default=None, help="benchmarks/search.py output whose searched schedule the "
                                                      "*-search-* runs prune at")
    ap.add_argument("--work", default="bench_out/recovery", help="where the pruned models are kept")
    ap.add_argument("--table", default=None, help="print the markdown table of a results file and exit")
    ap.add_argument("--step-cost", action="store_true",
                    help="only time a few steps of each loss / teacher dtype / frozen-embeddings variant (50%% model)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps of every recovery run")
    ap.add_argument("--minutes", type=float, default=10.0, help="without --steps: the training budget of the first "
                                                                "recovery run; later runs use its step count")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4, help="full fine-tuning learning rate")
    ap.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA learning rate")
    ap.add_argument("--self-samples", type=int, default=32, help="windows sampled from the teacher for kd-self")
    ap.add_argument("--zero-shot", nargs="*", default=["pruned-50", "kd-50"], help="runs that get zero-shot")
    ap.add_argument("--zs-limit", type=int, default=None, help="override the item counts (smoke runs)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="recovery compute dtype (bfloat16: Trainer's autocast, float32 master weights)")
    ap.add_argument("--teacher-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the teacher's weights (it only runs forward; bfloat16 is a cast copy of the dense model)")
    ap.add_argument("--freeze-embeddings", action="store_true",
                    help="full fine-tuning leaves the embeddings / tied head as they are "
                         "(RecoveryConfig.freeze_embeddings)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.step_cost:
        step_cost(args)
        return
    unknown = [s for s in args.runs if s not in RUNS]
    if unknown:
        ap.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
    run(args)


if __name__ == "__main__":
    main()
