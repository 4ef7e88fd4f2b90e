"""``optimum-slimgpt prune --low-memory``: when the command line prunes a checkpoint streamed, and the streamed run
with what it tells the user: where the work folder of a stopped or interrupted run is, the command that resumes it
and how to remove it instead. The streaming itself is :func:`optimum_slimgpt.streaming.prune_pretrained`; a bad
combination of flags is a :class:`~optimum_slimgpt.cli_args.CLIError` (one ``error:`` line)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .cli_args import CLIError
from .loading import load_tokenizer

__all__ = ["too_big_for_memory", "prune_streamed", "resume_command", "print_work_dir_hint", "warn_stale_work_dir"]


def too_big_for_memory(path: str, gguf_file: Optional[str], dtype) -> bool:
    """A local safetensors checkpoint that would not fit in the available memory is pruned streamed."""
    from .streaming import CheckpointError, fits_in_memory

    if gguf_file or not Path(path).is_dir():
        return False
    try:
        fits = fits_in_memory(path, None if dtype == "auto" else dtype)
    except CheckpointError:
        return False  # not a safetensors folder: the normal loader reports what is wrong
    if not fits:
        logging.getLogger(__name__).warning("%s does not fit in the available memory: pruning it block by block "
                                            "from disk (--low-memory)", path)
    return not fits


def resume_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that resumes a streamed run: the user's own arguments ``argv`` (default: ``sys.argv[1:]``)
    with ``--low-memory --resume``."""
    import shlex

    argv = list(argv or sys.argv[1:])
    argv += [f for f in ("--low-memory", "--resume") if f not in argv]
    return "optimum-slimgpt " + shlex.join(argv)


def print_work_dir_hint(out: Path, argv: Optional[Sequence[str]], stopped: bool) -> None:
    """Say where the work folder of an interrupted streamed run into ``out`` is, and how to resume (the command line
    ``argv``) or clean it."""
    import shlex

    from .streaming import describe_work_dir, work_dir

    where = describe_work_dir(out)
    if where is None:
        return
    print(("the stopped run's work folder stays: " if stopped else "found the work folder of an interrupted "
           "--low-memory run into this --output: ") + where, file=sys.stderr)
    print(f"  to resume it:  {resume_command(argv)}", file=sys.stderr)
    print(f"  to start again instead, delete it:  rm -r {shlex.quote(str(work_dir(out)))}", file=sys.stderr)


def warn_stale_work_dir(out: Path, argv: Optional[Sequence[str]]) -> None:
    """An in-memory run next to the work folder of an interrupted streamed run into the same output says so."""
    from .streaming import describe_work_dir

    if describe_work_dir(out) is not None:
        print("warning: this run does not use (nor remove) the work folder below", file=sys.stderr)
        print_work_dir_hint(out, argv, stopped=False)


def prune_streamed(path: str, gguf_file: Optional[str], out: Path, cfg, *, dtype, save_dtype="auto",
                   export_format: str = "auto", overwrite: bool = False, resume: bool = False,
                   argv: Optional[Sequence[str]] = None):
    """``prune --low-memory``: :func:`~optimum_slimgpt.streaming.prune_pretrained` (a GGUF source through a
    safetensors work copy); returns its :class:`~optimum_slimgpt.saving.SaveResult`. A stopped run (an error, Ctrl-C,
    SIGTERM) says where its work folder is and prints the command that resumes it (the command line ``argv``); a run
    that finds one without ``resume`` says how to resume or remove it."""
    import signal
    import threading

    from .streaming import prune_pretrained, work_state

    if cfg.dataset == "self":
        raise CLIError("--dataset self generates text with the whole model: it cannot be combined with --low-memory")
    if export_format == "padded":
        raise CLIError("--format padded pads every layer to the largest one, known only at the end: --low-memory "
                       "writes per_layer or uniform (auto)")
    state = work_state(out)
    if state is not None and not resume:
        print_work_dir_hint(out, argv, stopped=False)
        raise CLIError(f"{out}: an interrupted --low-memory run into this folder left its work folder (see above): "
                       "add --resume to continue it, or delete the work folder")
    tok = load_tokenizer(path, gguf_file)  # None (with a warning) when there is none: token-id data need none
    if resume and state is not None:
        n = state.get("num_blocks")
        print(f"resuming the interrupted run: {state.get('blocks_done', 0)}{f' of {n}' if n else ''} blocks are done "
              "(their work folder is beside --output)", file=sys.stderr)

    def terminate(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return prune_pretrained(Path(path) / gguf_file if gguf_file else path, out, cfg, tokenizer=tok,
                                dtype=None if dtype == "auto" else dtype, save_dtype=save_dtype,
                                export_format=export_format, overwrite=overwrite, resume=resume)
    except BaseException as e:
        cause: Optional[BaseException] = e
        while cause is not None and not getattr(cause, "slimgpt_work_dir", None):
            cause = cause.__context__  # (a SIGTERM arrives again as a new KeyboardInterrupt)
        if cause is not None:  # the run had started: its work folder stays
            print_work_dir_hint(out, argv, stopped=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
