"""``optimum-slimgpt``: prune, evaluate and inspect models from a terminal.

    optimum-slimgpt prune --model PATH --ratio 0.2 --dataset wikitext2 --output OUT
    optimum-slimgpt eval  --model OUT --wikitext-dir ../shared/data/wikitext-2 --tasks piqa --limit 100
    optimum-slimgpt info  --model OUT
    optimum-slimgpt export --model OUT --format gguf --outtype f16 --quantize Q4_K_M --output model.gguf
    optimum-slimgpt recover --model OUT --teacher PATH --dataset wikitext2 --steps 200 --output OUT-RECOVERED
    optimum-slimgpt demo  [--output DIR]

Bad input ends with exit status 2 and a one-line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .cli_args import CLIError, HelpFormatter, Parser, peek, read_config_file
from .loading import check_device, dtype_arg, load_model, resolve_model_path, save_dtype_arg


# ----------------------------------------------------------------------------------- commands
def _config_from_args(args):
    """The pruning config of ``prune``: the method's defaults, then ``--config FILE``, then the flags given."""
    from .config import config_class_for, fields_from_record

    base = fields_from_record(read_config_file(args.config)) if args.config else {}
    method = args.method or base.get("method") or "slimgpt"
    cls = config_class_for(method)
    if base.pop("method", method) != method:  # another method's config: only the fields this one shares
        base = {k: v for k, v in base.items() if k in cls.__dataclass_fields__}
    return args.pruning_flags.build(cls, args, base, what=f"--method {method}")


def _recovery_config(args, flags, base: dict):
    """The :class:`RecoveryConfig` of ``base`` and the flags given; ``--epochs`` alone replaces the step count."""
    from .recovery import RecoveryConfig

    given = flags.given(args)
    if "num_epochs" in given and "max_steps" not in given:
        base = {**base, "max_steps": None}
    return flags.build(RecoveryConfig, args, base)


def _recover_config_from_args(args):
    """The config of ``recover``: the defaults, then ``--config FILE``, then the flags given."""
    from .recovery import fields_from_record

    base = fields_from_record(read_config_file(args.config)) if args.config else {}
    return _recovery_config(args, args.recovery_flags, base)


def _prune_recovery_config(args, cfg):
    """The :class:`RecoveryConfig` of ``prune --recover-steps N`` (``None`` without it), checked before loading;
    its data, split, seed and window length follow the pruning config's unless given."""
    flags = args.recover_flags
    given = [flags.flag(args, n) for n in flags.given(args)]
    if not {"max_steps", "num_epochs"} & set(flags.given(args)):
        if given or args.recover_teacher_dtype is not None:
            raise CLIError(f"{(given or ['--recover-teacher-dtype'])[0]} needs --recover-steps N")
        return None
    return _recovery_config(args, flags, {"dataset": cfg.dataset, "dataset_split": cfg.dataset_split, "batch_size": 1,
                                          "dataset_text_field": cfg.dataset_text_field, "seed": cfg.seed,
                                          "seqlen": min(cfg.seqlen, 512)})


def cmd_prune(args) -> int:
    """prune a model and save it

    Prune a causal LM (a folder with config.json, a .gguf file or a folder holding one) and save the smaller model.
    Everything is checked before the work starts. 'prune --method NAME --help' lists that method's own options."""
    from .calibration import check_dataset_source
    from .estimate import print_estimate
    from .low_memory import prune_streamed, too_big_for_memory, warn_stale_work_dir
    from .pruner import SlimGPTPruner
    from .recovery import describe_recovery, recover
    from .saving import check_output_dir
    from .streaming import work_state

    cfg = _config_from_args(args)
    rcfg = _prune_recovery_config(args, cfg)
    save_dtype = save_dtype_arg(args.save_dtype)
    check_device(cfg.device)
    # before loading anything: the data, the model's files, the output folder (not the source, writable; the disk
    # space once the plan is known)
    check_dataset_source(cfg.dataset, cfg.dataset_text_field)
    if rcfg is not None:
        check_dataset_source(rcfg.dataset, rcfg.dataset_text_field)
    path, gguf_file, source = resolve_model_path(args.model, args.gguf_file)
    out = Path(args.output)
    if args.resume and not args.low_memory:
        raise CLIError("--resume continues an interrupted --low-memory run: add --low-memory")
    resuming = args.resume and work_state(out) is not None  # a resumed run may replace --output (it was aimed there)
    # (the model's name is its folder, for a GGUF file too: the pruner refuses an output inside it, and so do we, now)
    src = source.parent if gguf_file else source
    check_output_dir(out, overwrite=args.overwrite or resuming, sources=[src] if src.exists() else [])
    argv = getattr(args, "argv", None)  # (set by main: the resume command of a stopped streamed run repeats it)
    streamed = args.low_memory or too_big_for_memory(path, gguf_file, args.dtype)
    if streamed and rcfg is not None:
        raise CLIError("--recover-steps trains the whole model next to its dense teacher: it cannot be combined with "
                       "--low-memory (prune streamed, then run 'optimum-slimgpt recover' where the model fits)")
    if streamed:
        res = prune_streamed(path, gguf_file, out, cfg, dtype=args.dtype, save_dtype=save_dtype,
                             export_format=args.format, overwrite=args.overwrite, resume=args.resume, argv=argv)
        print(f"saved to {out} ({res.format} format, {res.dtype}, streamed block by block: {res.reason})")
        return 0
    warn_stale_work_dir(out, argv)
    model, tok = load_model(args.model, args.gguf_file, args.dtype)
    teacher = None
    if rcfg is not None:
        teacher = copy.deepcopy(model)  # the dense model, before pruning
        if args.recover_teacher_dtype not in (None, "auto"):
            teacher.to(args.recover_teacher_dtype)
    pruner = SlimGPTPruner(cfg)
    print_estimate(pruner, model, tok)
    pruner.prune_model(model, tok, save_dir=out, export_format=args.format, overwrite=args.overwrite)
    print(pruner.summary.table())
    if rcfg is not None:
        recover(model, teacher, tok, rcfg)
        del teacher
        print(describe_recovery(model))
    res = pruner.save(model, out, tokenizer=tok, export_format=args.format, overwrite=args.overwrite, dtype=save_dtype)
    print(f"saved to {out} ({res.format} format{f', {res.dtype}' if res.dtype else ''}: {res.reason})")
    return 0


def cmd_recover(args) -> int:
    """fine-tune a pruned model towards its dense teacher (KD or LM, LoRA or full)

    Recover what pruning cost: distil the dense --teacher into the pruned --model on transformers' Trainer (chunked
    KL over the sequence), with LoRA (merged) or full fine-tuning, and save it like any pruned model. For several
    GPUs run it under 'accelerate launch' (see the README)."""
    from .modeling import PruningRecord
    from .recovery import describe_recovery, recover
    from .saving import check_output_dir, save_pruned_model

    rcfg = _recover_config_from_args(args)
    check_device(args.device)
    check_device(args.teacher_device)
    teacher_dtype = args.teacher_dtype or args.dtype
    save_dtype = save_dtype_arg(args.save_dtype)
    from .calibration import check_dataset_source

    check_dataset_source(rcfg.dataset, rcfg.dataset_text_field)
    _, _, source = resolve_model_path(args.model, args.gguf_file)
    if args.teacher is None and rcfg.needs_teacher:
        raise CLIError(f"--loss {rcfg.loss}" + (" with --dataset self" if rcfg.loss == "lm" else "")
                       + " needs --teacher (the dense model the student was pruned from)")
    teacher_src = resolve_model_path(args.teacher, args.teacher_gguf_file)[2] if args.teacher else None
    out = Path(args.output)
    check_output_dir(out, overwrite=args.overwrite, sources=[p for p in (source, teacher_src) if p and p.exists()])
    model, tok = load_model(args.model, args.gguf_file, args.dtype, args.device)
    if PruningRecord.of(model.config) is None:
        raise CLIError(f"{args.model} is not a pruned model (its config has no pruning_config): prune it first")
    teacher = None
    if args.teacher:
        teacher, ttok = load_model(args.teacher, args.teacher_gguf_file, teacher_dtype, args.teacher_device)
        tok = tok or ttok
    if tok is None and not rcfg.dataset == "self" and isinstance(rcfg.dataset, str):
        raise CLIError(f"no tokenizer found in {args.model} (or --teacher) to tokenise --dataset {rcfg.dataset}")
    recover(model, teacher, tok, rcfg)
    print(describe_recovery(model))
    res = save_pruned_model(model, out, tokenizer=tok, export_format=args.format, overwrite=args.overwrite,
                            dtype=save_dtype)
    print(f"saved to {out} ({res.format} format{f', {res.dtype}' if res.dtype else ''}: {res.reason})")
    return 0


def cmd_eval(args) -> int:
    """perplexity and zero-shot accuracy of a saved model

    Perplexity on WikiText-2 test or a text file, and zero-shot accuracy on local task files, by the built-in scorer
    or by lm-evaluation-harness (--harness lm-eval)."""
    from .evaluation import evaluate_zero_shot, perplexity, wikitext2_test_text, zero_shot_task_names

    harness = getattr(args, "harness", "builtin")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else []
    known = zero_shot_task_names(harness)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise CLIError(f"unknown zero-shot task(s) {', '.join(unknown)} for --harness {harness}; known: {', '.join(known)}")
    if tasks and harness == "lm-eval" and importlib.util.find_spec("lm_eval") is None:
        raise CLIError("--harness lm-eval needs lm-evaluation-harness: pip install optimum-slimgpt[eval]")
    if not (args.text_file or args.wikitext_dir or tasks or args.chat):
        raise CLIError("nothing to evaluate: give --wikitext-dir, --text-file, --tasks and/or --chat")
    if args.text_file and not Path(args.text_file).is_file():
        raise CLIError(f"--text-file {args.text_file}: no such file")
    if args.reference and not args.chat:
        raise CLIError("--reference is the dense model of --chat: add --chat")
    if args.reference:
        resolve_model_path(args.reference)  # a missing path fails before anything is loaded
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
    if args.chat:
        results["chat"] = _eval_chat(args, model, tok)
    if tasks:
        zs = evaluate_zero_shot(model, tok, tasks, limit=args.limit, data_dir=args.data_dir, harness=harness)
        results["zero_shot"], results["zero_shot_harness"] = zs, harness
        for task, r in zs.items():
            print(f"{task}: acc {r['acc']:.4f} acc_norm {r['acc_norm']:.4f} (n={r['n']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _eval_chat(args, model, tok) -> dict:
    """``eval --chat N [--reference DENSE]``: the chat check (non-empty share; KL from the reference)."""
    from .calibration import has_chat_template
    from .evaluation import chat_check

    if not has_chat_template(tok):
        raise CLIError(f"--chat: the tokenizer of {args.model} has no chat template")
    reference = load_model(args.reference, dtype=args.dtype, device=args.device)[0] if args.reference else None
    res = chat_check(model, tok, reference, n=args.chat, max_new_tokens=args.chat_tokens)
    print(res.summary())
    if reference is None:
        print("(give --reference DENSE_MODEL for the KL of this model from it over its answers)")
    return res.to_dict()


def cmd_info(args) -> int:
    """per-layer layout of a saved model

    The per-layer heads, KV heads and FFN channels as the weights have them, the schedule's ratios and the pruning
    provenance."""
    from .saving import describe_checkpoint

    path = Path(args.model)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CLIError(f"{cfg_file} not found")
    lines, warning = describe_checkpoint(path, read_config_file(cfg_file))
    print("\n".join(lines))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """convert a pruned checkpoint for another runtime (GGUF for llama.cpp)

    Write a saved pruned checkpoint as one GGUF file that llama.cpp (ollama, LM Studio...) loads: per-layer sizes as
    llama.cpp's 'deci' architecture, a uniform model as its plain one; optional quantisation by llama.cpp's own
    quantiser."""
    from .gguf_export import GGUFExportOptions, check_gguf_output, export_gguf

    options = args.export_flags.build(GGUFExportOptions, args)  # bad input first, before anything is loaded
    target = check_gguf_output(args.output, overwrite=args.overwrite)
    path = Path(args.model)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CLIError(f"--model {args.model}: not a saved checkpoint folder (no config.json)")
    cfg = read_config_file(cfg_file)
    if not cfg.get("pruning_config"):
        raise CLIError(f"--model {args.model}: not a pruned checkpoint (its config.json has no pruning_config); "
                       "prune it first with 'optimum-slimgpt prune'")
    model, tok = load_model(str(path), dtype="float32")
    if tok is None:
        raise CLIError(f"no tokenizer found in {args.model}: the GGUF file needs it")
    res = export_gguf(model, target, tokenizer=tok, overwrite=args.overwrite, **vars(options))
    q = f", quantised to {res.quantize}" if res.quantize else ""
    print(f"wrote {res.path} ({res.file_bytes / 2**20:.1f} MiB): llama.cpp '{res.arch}', {res.outtype}{q}; {res.reason}")
    return 0


def cmd_demo(args) -> int:
    """prune SmolLM2-135M-Instruct by 20% with chat calibration it writes itself

    Prune SmolLM2-135M-Instruct with conversations it writes itself in its chat template (no data, no Hub), show a
    chat answer before and after, run the chat check, compare perplexity, save, reload and compare logits, and print
    where the time went."""
    from .demo import run_demo

    return run_demo(args)


# ----------------------------------------------------------------------------------- parser
def _shown_method(argv: Optional[Sequence[str]]) -> type:
    """The config class whose own options ``prune --help`` lists: ``--method``'s, or the ``--config`` file's."""
    from .config import config_class_for, fields_from_record, registered_configs

    method, file = peek(argv, "prune", "--method"), peek(argv, "prune", "--config")
    if method is None and file:
        try:
            method = fields_from_record(read_config_file(file)).get("method")
        except (OSError, ValueError):
            pass  # reported when the command runs
    return config_class_for(method, missing_ok=True) or config_class_for("slimgpt", True) or registered_configs()[0]


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The ``optimum-slimgpt`` parser. The config options are flags generated from the config dataclasses
    (:mod:`optimum_slimgpt.cli_args`); ``argv``, when given, picks the method whose own options ``prune --help``
    lists (every registered method's flags are accepted)."""
    from .cli_args import ConfigFlags
    from .config import PruningConfig, registered_configs
    from .gguf_export import GGUFExportOptions
    from .recovery import RecoveryConfig
    from .saving import EXPORT_FORMATS

    p = Parser(prog="optimum-slimgpt", formatter_class=HelpFormatter,
                description="Structured pruning of Hugging Face causal LMs (SlimGPT, SlimLLM, FLAP). "
                            "Bad input ends with exit status 2 and one 'error:' line.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks on errors)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{prune,recover,eval,info,export,demo}")

    def command(name: str, func, model: Optional[str] = None, output: str = "",
                overwrite: str = "replace a non-empty --output") -> argparse.ArgumentParser:
        """A subcommand: its help and description are ``func``'s docstring; ``--model``/``--output`` flags."""
        help, _, description = inspect.cleandoc(func.__doc__).partition("\n\n")
        sp = sub.add_parser(name, help=help.replace("%", "%%"), description=description, formatter_class=HelpFormatter,
                            usage="%(prog)s --model MODEL --output OUTPUT [options]" if model and output else None)
        sp.set_defaults(func=func)
        if model:
            sp.add_argument("--model", required=True, help=model)
            sp.add_argument("--gguf-file", default=None, help="the GGUF file inside --model when it holds several")
        if output:
            sp.add_argument("--output", required=True, help=output)
            sp.add_argument("--overwrite", action="store_true", help=overwrite)
        return sp

    def config_file(sp, what: str) -> None:
        sp.add_argument("--config", default=None, metavar="FILE.json|yaml",
                        help=f"start from this {what}; the flags given override it")

    dtypes = "float32 | bfloat16 | float16 | auto"
    pr = command("prune", cmd_prune, model="model folder, .gguf file, folder with one .gguf, or hub id",
                 output="folder to write the pruned checkpoint to (not the model's own)",
                 overwrite="replace a non-empty --output (atomically: the old checkpoint stays until the new is complete)")
    pr.add_argument("--method", default=None, help="a registered pruning method: " + " | ".join(
        c.method_name for c in registered_configs()) + " (default: the --config file's, else slimgpt)")
    config_file(pr, "config: a saved PruningConfig JSON, or a pruned checkpoint's config.json or its pruning_config "
                    "record, which repeats that run (its calibration file by --dataset)")
    pr.add_argument("--dtype", default="float32", type=dtype_arg, help=f"dtype to load the model in: {dtypes}")
    pr.add_argument("--low-memory", action="store_true",
                    help="stream the blocks from the safetensors shards (memory: about one block; a GGUF source is "
                         "converted once to a safetensors work copy, removed afterwards); chosen by itself when the "
                         "checkpoint would not fit in the available memory")
    pr.add_argument("--resume", action="store_true",
                    help="with --low-memory: continue an interrupted run from its work folder beside --output "
                         "(.<output>.slimgpt-work); it may replace --output without --overwrite")
    pr.add_argument("--save-dtype", default="auto", choices=["auto", "compute", "float32", "bfloat16", "float16"],
                    help="dtype of the saved weights: auto = the source checkpoint's (bf16 for a GGUF source), "
                         "compute = the --dtype pruned in")
    pr.add_argument("--format", default="auto", choices=list(EXPORT_FORMATS),
                    help="checkpoint format (auto: uniform when every layer has the same sizes, else per_layer); "
                         "checked against the plan before pruning")
    shown = _shown_method(argv)
    pr.set_defaults(pruning_flags=ConfigFlags(
        pr, [shown, *(c for c in registered_configs() if c is not shown)],
        sections=[("pruning options of every method (PruningConfig)", PruningConfig),
                  (f"options of --method {shown.method_name} ({shown.__name__})", shown)]))
    pr.add_argument("--recover-teacher-dtype", default=None, type=dtype_arg, metavar="DTYPE",
                    help=f"with --recover-steps: the dense teacher's dtype ({dtypes}; default: --dtype)")
    pr.set_defaults(recover_flags=ConfigFlags(
        pr, [RecoveryConfig], prefix="recover-",
        sections="recovery after pruning (RecoveryConfig; --recover-steps N turns it on, see 'recover')",
        notes={"max_steps": "none: no recovery", "dataset": "--dataset", "dataset_split": "--split", "seed": "--seed",
               "dataset_text_field": "--dataset-text-field", "seqlen": "min(--seqlen, 512)"}))

    rc = command("recover", cmd_recover, model="the pruned model (a saved optimum-slimgpt checkpoint)",
                 output="folder to write the recovered checkpoint to")
    rc.add_argument("--teacher", default=None,
                    help="the dense model it was pruned from (folder, .gguf file or hub id); needed unless --loss lm")
    rc.add_argument("--teacher-gguf-file", default=None, help="the GGUF file inside --teacher when it holds several")
    config_file(rc, "RecoveryConfig JSON, or a recovered checkpoint's config.json or record (its last recovery)")
    rc.add_argument("--dtype", default="float32", type=dtype_arg, help=f"dtype to load both models in: {dtypes}")
    rc.add_argument("--teacher-dtype", default=None, type=dtype_arg,
                    help="dtype to load the teacher in (default: --dtype); it only runs forward, so bfloat16 is a "
                         "common choice next to a float32 student")
    rc.add_argument("--device", default=None, help="where the student trains, e.g. cuda:0 (default: CPU)")
    rc.add_argument("--teacher-device", default=None, help="where the teacher runs, e.g. cuda:1 (default: CPU)")
    rc.add_argument("--format", default="auto", choices=list(EXPORT_FORMATS), help="checkpoint format of the output")
    rc.add_argument("--save-dtype", default="auto", choices=["auto", "compute", "float32", "bfloat16", "float16"],
                    help="dtype of the saved weights: auto = the dtype of the checkpoint the model was pruned from, "
                         "compute = the --dtype trained in")
    rc.set_defaults(recovery_flags=ConfigFlags(rc, [RecoveryConfig], sections="training (RecoveryConfig)",
                                               notes={"max_steps": "100 unless --epochs is given"}))

    ev = command("eval", cmd_eval, model="model folder, .gguf file or hub id")
    ev.add_argument("--wikitext-dir", default=None, help="folder with the WikiText-2 files (see ../shared/data)")
    ev.add_argument("--text-file", default=None, help="a UTF-8 text file to measure the perplexity on")
    ev.add_argument("--seqlen", type=int, default=2048, help="perplexity window length")
    ev.add_argument("--max-tokens", type=int, default=None, help="only the first N tokens of the text")
    ev.add_argument("--batch-size", type=int, default=1, help="windows per forward")
    ev.add_argument("--tasks", default=None, help="comma-separated zero-shot tasks, e.g. piqa,hellaswag,arc_easy")
    ev.add_argument("--limit", type=int, default=None, help="first N items of each task")
    ev.add_argument("--data-dir", default=None, help="folder with the zero-shot data files")
    ev.add_argument("--harness", default="builtin", choices=["builtin", "lm-eval"],
                    help="zero-shot scorer: the built-in one, or lm-evaluation-harness on the same local files")
    ev.add_argument("--device", default=None, help="e.g. cuda:0 (default: CPU)")
    ev.add_argument("--dtype", default="float32", type=dtype_arg, help=dtypes)
    ev.add_argument("--chat", type=int, nargs="?", const=50, default=None, metavar="N",
                    help="chat check: greedy answers in the chat template to N held-out instructions (50 without N); "
                         "the share that are not empty, and with --reference the KL from it over its own answers")
    ev.add_argument("--chat-tokens", type=int, default=64, help="with --chat: new tokens per answer")
    ev.add_argument("--reference", default=None, help="with --chat: the dense model (folder or .gguf file)")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file")

    command("info", cmd_info).add_argument("--model", required=True, help="a saved checkpoint folder")

    ex = command("export", cmd_export, output="the .gguf file to write (written to a temporary name, then renamed)",
                 overwrite="replace an existing --output")
    ex.add_argument("--model", required=True, help="a pruned checkpoint folder (saved by 'optimum-slimgpt prune')")
    ex.add_argument("--format", default="gguf", choices=["gguf"], help="output format")
    ex.set_defaults(export_flags=ConfigFlags(ex, [GGUFExportOptions], sections="GGUF options"))

    de = command("demo", cmd_demo)
    de.add_argument("--output", default=None, help="where to save the pruned model (default: a new temporary folder)")
    de.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    de.add_argument("--ratio", type=float, default=0.2, help="fraction of decoder-block parameters to remove")
    de.add_argument("--samples", type=int, default=32, help="calibration windows of self-written conversations")
    de.add_argument("--seqlen", type=int, default=256, help="tokens per window")
    de.add_argument("--chat-n", type=int, default=16, help="held-out instructions of the chat check")
    de.add_argument("--chat-tokens", type=int, default=32, help="new tokens per answer of the chat check")
    de.add_argument("--eval-tokens", type=int, default=4096,
                    help="perplexity: the first N WikiText-2 test tokens (windows of 512; more is less noisy, slower)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = build_parser(argv).parse_args(argv)
        args.argv = list(argv)  # (for the resume command of a stopped run)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        # user-facing: bad arguments, files, devices, configs, exports (OSError: missing/unwritable paths, disk)
        if verbose:
            import traceback

            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
