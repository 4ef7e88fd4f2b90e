"""Does a pruned chat model still chat? SmolLM2-135M-Instruct pruned with chat-aware vs WikiText-2 calibration.

Protocol (issue 32, "What it must show"):

- **Model:** SmolLM2-135M-Instruct from ``../shared/models`` (GGUF Q4_1, dequantised to float32).
- **Calibration** (``--samples`` x ``--seqlen``, default 64 x 512, seed 0, SlimGPT, log_increase):
  ``chat-20``: ``dataset="self-chat"`` (the model answers the 100 built-in instructions in its chat template);
  ``wiki-20``, ``wiki-30``: WikiText-2 *validation* rows as documents (the baseline of the issue: today's models).
- **Chat check** (:func:`optimum_slimgpt.evaluation.chat_check`): greedy answers to the first ``--n`` (50) of the
  held-out instructions in ``optimum_slimgpt/data/chat_check.txt`` (never used for calibration), ``--max-new-tokens``
  (64) each: the share that are non-empty (target: at least 90% of dense's), and the KL from the dense model over
  the dense model's own answers, teacher-forced (nats per answer token).
- **Perplexity:** the first ``--ppl-tokens`` (65,536) tokens of the WikiText-2 raw test text, windows of 2048.
- ``--recover-steps N``: each pruned row is also recovered for N steps of KD from the dense model on chat data
  (``RecoveryConfig(dataset="self-chat")``: conversations the dense model writes; windows of 512, batch 1, lr 1e-4,
  full fine-tuning) and checked again (rows ``<name>+rec<N>``). The dense model writes the recovery conversations
  once; every row trains on the same windows.
- ``--save-dir DIR``: each pruned row is also saved with ``pruner.save`` (the source's dtype: bf16 for the GGUF
  source) and its bytes are recorded.

    python benchmarks/chat.py --out bench_out/chat.jsonl                       # dense, chat-20, wiki-20, wiki-30
    python benchmarks/chat.py --out bench_out/chat.jsonl --recover-steps 100   # and each after 100 recovery steps
    python benchmarks/chat.py --table bench_out/chat.jsonl                     # the markdown table

Appends one JSON line per row (an interrupted run resumes with ``--settings``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WIKI, append_row, load_smollm2, prune_copy  # noqa: E402

from optimum_slimgpt.evaluation import chat_check, perplexity, wikitext2_test_text, wikitext2_validation_rows  # noqa: E402

SETTINGS = {
    "dense": None,
    "chat-20": dict(pruning_ratio=0.20, dataset="self-chat"),
    "wiki-20": dict(pruning_ratio=0.20),
    "wiki-30": dict(pruning_ratio=0.30),
}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    dense = next((r for r in rows if r["setting"] == "dense"), None)
    ref = dense["non_empty_share"] if dense else None
    out = ["| setting | calibration | removed | non-empty answers | vs dense | KL from dense (nats/token) | "
           "WikiText-2 ppl | prune s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r['non_empty_share'] / ref:.0%}" if ref else "-"
        kl = "-" if r.get("kl") is None else f"{r['kl']:.4f}"
        out.append(f"| {r['setting']} | {r.get('calibration', '-')} | {r.get('removed', 0):.1%} | "
                   f"{r['non_empty']}/{r['n']} | {rel} | {kl} | {r['ppl']:.2f} | {r.get('prune_seconds', 0):.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/chat.jsonl"))
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--samples", type=int, default=64, help="calibration windows (both sources)")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    ap.add_argument("--n", type=int, default=50, help="held-out instructions of the chat check")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length of the chat check")
    ap.add_argument("--ppl-tokens", type=int, default=65536, help="WikiText-2 test tokens for the perplexity")
    ap.add_argument("--ppl-seqlen", type=int, default=2048)
    ap.add_argument("--recover-steps", type=int, default=0, help="also recover each pruned row N steps on chat data")
    ap.add_argument("--recover-seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-dir", type=Path, default=None,
                    help="also save each pruned row there with pruner.save (the source's dtype) and record its bytes")
    ap.add_argument("--table", type=Path, default=None, help="print the markdown table of a results file and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dense, tok = load_smollm2(args.threads)
    print(f"loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    test_text = wikitext2_test_text(WIKI)
    calib_rows = wikitext2_validation_rows(WIKI)
    common = dict(date=time.strftime("%Y-%m-%d"), machine=f"{platform.node()} {platform.processor() or ''}".strip(),
                  threads=args.threads, samples=args.samples, seqlen=args.seqlen,
                  command="python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    # the dense model's answers once: every row is compared with the same ones
    t = time.perf_counter()
    ref = chat_check(dense, tok, dense, n=args.n, max_new_tokens=args.max_new_tokens)
    print(f"dense answers in {time.perf_counter() - t:.0f} s: {ref.summary()}", flush=True)

    def evaluate(model, row: dict) -> None:
        t = time.perf_counter()
        res = chat_check(model, tok, dense, n=args.n, max_new_tokens=args.max_new_tokens,
                         reference_answers=ref.reference_answer_ids)
        row.update(n=res.n, non_empty=res.non_empty, non_empty_share=res.non_empty_share, kl=res.kl,
                   kl_tokens=res.kl_tokens, dense_non_empty_share=res.reference_non_empty_share,
                   max_new_tokens=args.max_new_tokens, answers=res.answers[:5], check_seconds=round(time.perf_counter() - t, 1))
        t = time.perf_counter()
        row["ppl"] = perplexity(model, tok, test_text, seqlen=args.ppl_seqlen, max_tokens=args.ppl_tokens)
        row.update(ppl_tokens=args.ppl_tokens, ppl_seconds=round(time.perf_counter() - t, 1))

    rec_data, rec_gen_seconds = None, None
    for name in args.settings:
        settings = SETTINGS[name]
        if settings is None:
            row = {"setting": name, "calibration": "-", "removed": 0.0, **common}
            evaluate(dense, row)
            append_row(args.out, row)
            continue
        model, pruner, info = prune_copy(dense, tok, settings, calib_rows, args.samples, args.seqlen)
        calibration = "self-chat" if settings.get("dataset") == "self-chat" else "WikiText-2 validation"
        row = {"setting": name, "calibration": calibration, **info, **common}
        if args.save_dir is not None:
            res = pruner.save(model, args.save_dir / name, tokenizer=tok, overwrite=True)
            row["saved"] = dict(dtype=str(getattr(res, "dtype", "")), format=str(getattr(res, "format", "")),
                                weight_bytes=sum(f.stat().st_size for f in (args.save_dir / name).glob("*.safetensors")),
                                folder_bytes=sum(f.stat().st_size for f in (args.save_dir / name).rglob("*") if f.is_file()))
        evaluate(model, row)
        append_row(args.out, row)
        if args.recover_steps:
            from optimum_slimgpt import RecoveryConfig, recover

            if rec_data is None:  # the dense model's conversations, written once and used for every row
                from optimum_slimgpt.recovery import recovery_windows

                t = time.perf_counter()
                rec_data = recovery_windows(RecoveryConfig(dataset="self-chat", max_steps=args.recover_steps,
                                                           seqlen=args.recover_seqlen, batch_size=1, seed=0), tok, dense)
                rec_gen_seconds = round(time.perf_counter() - t, 1)
                print(f"recovery data: {tuple(rec_data.shape)} self-chat tokens in {rec_gen_seconds} s", flush=True)
            rc = RecoveryConfig(dataset=rec_data, max_steps=args.recover_steps, seqlen=args.recover_seqlen,
                                batch_size=1, learning_rate=1e-4, loss="kd", lora_r=0, seed=0, logging_steps=10)
            t = time.perf_counter()
            recover(model, dense, tok, rc)
            rec = {"setting": f"{name}+rec{args.recover_steps}", "calibration": calibration,
                   "removed": info["removed"], "prune_seconds": info["prune_seconds"],
                   "recover": dict(steps=args.recover_steps, dataset="self-chat", loss="kd", seqlen=args.recover_seqlen,
                                   seconds=round(time.perf_counter() - t, 1), data_seconds=rec_gen_seconds), **common}
            evaluate(model, rec)
            append_row(args.out, rec)
        del model
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
