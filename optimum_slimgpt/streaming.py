"""Prune checkpoints larger than memory: blocks streamed from the safetensors shards, resumable after a crash.

:func:`prune_pretrained` runs the same block loop as :meth:`SlimGPTPruner.prune_model` (the pruner's
``_prune_blocks``) over a model *skeleton* on the meta device:

1. The checkpoint's shards are checked (present, complete headers, sizes that match them) and fingerprinted.
2. The model is built on the meta device from its config; the tensors outside the decoder blocks that the
   calibration forward needs (the embeddings; never the output head) are loaded from the memory-mapped shards, the
   calibration inputs of block 0 and every block's keyword arguments are captured, and the embeddings are freed.
3. Each block is loaded just before its turn, pruned on ``config.device``, written to the work folder as one
   safetensors shard, and freed (back to the meta device). The inputs of the next block and the run's state are
   written after it, so a run killed at any point resumes from the last finished block (``resume=True``) and
   gives the same bytes as a run that was never interrupted.
4. The output checkpoint is assembled in a temporary folder beside ``output_dir`` (the block shards are
   hard-linked from the work folder, the other tensors copied from the source shards) by the same exporter
   that :func:`~optimum_slimgpt.save_pruned_model` uses (``per_layer`` or ``uniform``), with the model card, and
   renamed into place; the work folder is removed.

The work folder is ``.<output name>.slimgpt-work`` beside the output (:func:`work_dir`). It holds ``state.json``
(the fingerprint of model, config and calibration, the finished blocks' reports), ``block-NNNNN.safetensors`` and
``inputs.safetensors``. A run that finds it refuses to start unless ``resume=True``, and refuses to resume when
the fingerprint differs. A run that stops (an error, ``KeyboardInterrupt``, SIGTERM) logs where the work folder is and
that ``resume=True`` continues it; a resumed run may replace the output folder without ``overwrite`` (the run was
aimed at it).

A GGUF source (``model_path`` a ``.gguf`` file, or a folder with ``gguf_file=``) is converted once, by transformers'
own GGUF loader, into a safetensors work copy in ``<work folder>/source`` (in the dtype of the computation, float32
by default: the dequantised weights exactly), which the run then streams like any checkpoint; the copy goes with the
work folder when the run is done, and a resumed run reuses it. The conversion holds the dequantised model in memory
once, before the pruning starts.

Saved dtype: ``save_dtype="auto"`` writes the source checkpoint's dtype (bf16 for a GGUF source), whatever dtype the
blocks are pruned in, exactly as ``prune_model`` + ``save`` does.

Host memory: about one block (in the checkpoint's dtype) plus the calibration activations, the embeddings during
the capture and the non-block tensors during the assembly; GPU memory: one block plus its Hessians and the
activations (``offload_activations=True`` keeps those on the CPU).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import signal
import struct
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from . import __version__
from .calibration import get_calibration_data
from .config import PruningConfig
from .families import get_adapter
from .pruner import ActivationStore, LayerReport, SlimGPTPruner, Stopwatch, _Run
from .modeling import PruningRecord
from .saving import SaveResult, check_output_dir, save_pruned_model

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "ShardedCheckpoint", "prune_pretrained", "STOP_AFTER_ENV", "fits_in_memory", "work_dir",
           "work_state", "describe_work_dir"]

#: test hook: kill the process (SIGKILL) right after this many blocks are checkpointed; ``"k:TERM"`` sends SIGTERM
STOP_AFTER_ENV = "SLIMGPT_STOP_AFTER_BLOCKS"
_STATE_VERSION = 2
#: the work copy of a GGUF source inside the work folder, and the file that says which GGUF it was made from
_SOURCE_COPY, _SOURCE_STAMP = "source", "slimgpt-source.json"


class CheckpointError(ValueError):
    """The source checkpoint is incomplete or corrupt, or a work folder belongs to another run."""


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _read_header(path: Path) -> dict:
    """The safetensors header of ``path``, checked against the file's size (a truncated file is refused)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise CheckpointError(f"{path} is corrupt or truncated: its header claims {n} bytes of a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is corrupt: unreadable safetensors header ({e})") from e
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"{path} is truncated or corrupt: its header describes {8 + n + end} bytes, the file "
                              f"has {size}")
    return header


class ShardedCheckpoint:
    """The safetensors weights of a checkpoint folder (one file, or shards with ``model.safetensors.index.json``),
    read lazily: only headers on construction, tensors on :meth:`load` (memory-mapped, one shard at a time)."""

    def __init__(self, folder: Union[str, os.PathLike]) -> None:
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"{self.folder} is not a model folder (no config.json)")
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (KeyError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from e
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.folder} has no *.safetensors weights (other formats cannot be streamed)")
            weight_map = None
        missing = [f for f in files if not (self.folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{self.folder}: shard(s) {', '.join(missing)} listed in the index are missing")
        self.files = files
        self.where: dict[str, str] = {}
        self.info: dict[str, tuple[str, tuple]] = {}
        for f in files:
            for name, v in _read_header(self.folder / f).items():
                if name == "__metadata__":
                    continue
                self.where[name] = f
                self.info[name] = (v["dtype"], tuple(v["shape"]))
        if weight_map is not None:
            absent = sorted(k for k, f in weight_map.items() if self.where.get(k) != f)
            if absent:
                raise CheckpointError(f"{self.folder}: tensor {absent[0]} is listed in the index for "
                                      f"{weight_map[absent[0]]} but that shard does not hold it")

    @property
    def nbytes(self) -> int:
        return sum((self.folder / f).stat().st_size for f in self.files)

    def dtype(self) -> torch.dtype:
        """The floating-point dtype of most weights."""
        counts: dict[str, int] = {}
        for dt, shape in self.info.values():
            counts[dt] = counts.get(dt, 0) + 1
        floats = [d for d in sorted(counts, key=lambda d: -counts[d]) if d in ("F32", "F16", "BF16", "F64")]
        return _DTYPES[floats[0]] if floats else torch.float32

    def fingerprint(self) -> str:
        """Changes with the config or any tensor's name, dtype, shape, shard or the shards' sizes."""
        h = hashlib.sha256((self.folder / "config.json").read_bytes())
        h.update(json.dumps(sorted((k, *self.info[k], self.where[k]) for k in self.info)).encode())
        h.update(json.dumps([(f, (self.folder / f).stat().st_size) for f in self.files]).encode())
        return h.hexdigest()

    def load(self, names, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        missing = [n for n in names if n not in self.where]
        if missing:
            raise CheckpointError(f"{self.folder}: tensor {missing[0]} is missing from the checkpoint")
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        for f, ns in by_file.items():
            try:
                with safe_open(self.folder / f, framework="pt") as st:
                    for n in ns:
                        t = st.get_tensor(n)
                        out[n] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
            except SafetensorError as e:
                raise CheckpointError(f"{self.folder / f} is corrupt: {e}") from e
        return out


def fits_in_memory(model_path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None,
                   margin: float = 1.3) -> bool:
    """Whether loading the checkpoint whole (in ``dtype``) leaves room in the available host memory."""
    import psutil

    ckpt = ShardedCheckpoint(model_path)
    scale = 1.0 if dtype is None else torch.empty(0, dtype=dtype).element_size() / \
        torch.empty(0, dtype=ckpt.dtype()).element_size()
    return ckpt.nbytes * scale * margin < psutil.virtual_memory().available


# ------------------------------------------------------------------------------------------------ work folder
def work_dir(output_dir: Union[str, os.PathLike]) -> Path:
    """The work folder of a streamed run into ``output_dir``: ``.<output name>.slimgpt-work`` beside it."""
    out = Path(output_dir).expanduser().absolute()
    return out.parent / f".{out.name}.slimgpt-work"


def work_state(output_dir: Union[str, os.PathLike]) -> Optional[dict]:
    """The ``state.json`` of an interrupted streamed run into ``output_dir`` (``None`` when there is none, or it
    is unreadable)."""
    try:
        return json.loads((work_dir(output_dir) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def describe_work_dir(output_dir: Union[str, os.PathLike]) -> Optional[str]:
    """One phrase on the work folder beside ``output_dir``, or ``None`` when there is none: its path, the finished
    blocks and its size (``/x/.out.slimgpt-work (2 of 30 blocks done, 122.4 MB)``)."""
    work = work_dir(output_dir)
    if not work.is_dir():
        return None
    state = work_state(output_dir)
    parts = []
    if state is not None:
        n = state.get("num_blocks")
        parts.append(f"{state.get('blocks_done', 0)}{f' of {n}' if n else ''} blocks done")
    else:
        parts.append("no finished block")
    if (work / _SOURCE_COPY / _SOURCE_STAMP).is_file():
        parts.append("a safetensors work copy of the GGUF source")
    size = _folder_bytes(work)
    parts.append(f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB")
    return f"{work} ({', '.join(parts)})"


def _gguf_work_copy(gguf: Path, work: Path, dtype: torch.dtype) -> Path:
    """A safetensors copy of the GGUF checkpoint ``gguf`` in ``work/source``, in ``dtype``, written by transformers'
    own GGUF loader (dequantised as ``from_pretrained(..., gguf_file=...)`` does) and ``save_pretrained``; reused
    when an earlier run made it from the same file in the same dtype."""
    import errno
    import shutil

    st = gguf.stat()
    stamp = {"gguf": gguf.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": str(dtype)}
    folder, tmp = work / _SOURCE_COPY, work / f"{_SOURCE_COPY}.partial"
    try:
        if json.loads((folder / _SOURCE_STAMP).read_text(encoding="utf-8")) == stamp:
            logger.info("reusing the safetensors work copy of %s in %s (made by an earlier run)", gguf.name, folder)
            return folder
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s once to a safetensors work copy in %s (%s, dequantised by transformers; removed when "
                "the run is done)", gguf.name, folder, str(dtype).removeprefix("torch."))
    from transformers import AutoModelForCausalLM

    from .modeling import _forget_dequantized_gguf

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    _forget_dequantized_gguf(model)
    needed = sum(t.numel() * t.element_size() for t in {id(t): t for t in model.state_dict().values()}.values())
    free = shutil.disk_usage(work).free
    if free < needed * 1.05:
        raise OSError(errno.ENOSPC, f"not enough disk space for the safetensors work copy of {gguf.name} in {work}: "
                                    f"{needed / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free")
    try:
        model.save_pretrained(tmp, max_shard_size="2GB")
        del model
        _trim_heap()
        (tmp / _SOURCE_STAMP).write_text(json.dumps(stamp), encoding="utf-8")
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("work copy of %s written: %.1f MB", gguf.name, _folder_bytes(folder) / 1e6)
    return folder


def _check_gguf_file(gguf: Path) -> None:
    if not gguf.is_file():
        raise CheckpointError(f"{gguf}: no such GGUF file")
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{gguf} is not a GGUF file (it does not start with the bytes 'GGUF')")


# ------------------------------------------------------------------------------------------------ helpers
def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, rename to ``path``: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    _atomic_write(path, lambda p: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(p),
                                            metadata={"format": "pt"}))


def _report_from_dict(d: dict) -> LayerReport:
    d = dict(d)
    for k in ("heads", "kv_heads", "channels", "params", "head_option"):
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    return LayerReport(**d)


def _free(module: nn.Module) -> None:
    """Back to the meta device (shapes kept, memory released, and returned to the OS)."""
    module.to("meta")
    _trim_heap()


def _glibc() -> Any:
    """glibc through ctypes, or ``False`` off glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def _trim_heap() -> None:
    """Hand the heap's free memory back to the OS (glibc ``malloc_trim``): without it the freed pages of one block
    stay in the process, fragmented, and the peak RSS creeps up block after block. A no-op off glibc."""
    if _glibc():
        _LIBC.malloc_trim(0)


#: glibc's ``M_MMAP_THRESHOLD`` (``mallopt``) and the value the streamed path sets: every allocation of 64 KiB or
#: more gets its own mapping and goes back to the OS when freed
_M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 64 * 1024


def _tune_allocator() -> None:
    """Fix glibc's mmap threshold at 64 KiB for this process (what ``MALLOC_MMAP_THRESHOLD_=65536`` does). By
    default glibc raises the threshold each time a mapped chunk is freed (up to 32 MiB), after which tensors of a
    few MiB land in the heap, whose fragments stay in the process between blocks. A no-op off glibc."""
    if _glibc():
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_LIBC: Any = None


def _refuse_search(config: PruningConfig, model_path: Optional[Path], dtype: Optional[torch.dtype],
                   output_dir: Path) -> None:
    """``schedule="search"`` on the streamed path, before any work: the level database would have to live on disk
    (``search_offload_dir``, else beside the output), so a database larger than the free disk is refused with that
    reason; otherwise the search's whole-model forwards are what this path cannot do yet. ``model_path=None`` (a GGUF
    source, not converted yet) skips the database size check."""
    from .methods import get_method
    from .search import check_database_room, database_bytes, search_ladders

    if model_path is not None:
        skeleton = _skeleton(model_path, dtype)
        adapter = get_adapter(skeleton)
        blocks = adapter.get_blocks(skeleton)
        ladders = search_ladders(adapter, blocks, skeleton.config, config)
        nbytes = database_bytes(adapter, blocks, skeleton.config, ladders, bias=get_method(config).output_bias(config),
                                dtype=dtype)
        check_database_room(nbytes, config, streamed=True, folder=output_dir.parent)
    raise ValueError("schedule='search' is not available on the streamed path yet (its fitness runs the whole model "
                     "at once): search with prune_model where the model fits, then stream with the profile it found as "
                     "an explicit schedule (schedule=searched_schedule(pruned_model), or --schedule PRUNED_FOLDER)")


def _skeleton(model_path: Path, dtype: torch.dtype) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    import optimum_slimgpt  # noqa: F401  (the pruned classes, for checkpoints pruned before)

    cfg = AutoConfig.from_pretrained(model_path)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.tie_weights()  # as from_pretrained does: a tied head is the embedding's parameter
    model.config.name_or_path = str(model_path)
    return model.eval()


# ------------------------------------------------------------------------------------------------ entry point
@torch.no_grad()
def prune_pretrained(
    model_path: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    config: PruningConfig,
    *,
    tokenizer: Any = None,
    calibration: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    save_dtype: Union[str, torch.dtype, None] = "auto",
    gguf_file: Optional[str] = None,
    export_format: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    max_shard_size: Union[int, str] = "5GB",
    model_card: bool = True,
    tune_allocator: bool = True,
) -> SaveResult:
    """Prune the checkpoint in ``model_path`` block by block from disk and write the pruned checkpoint.

    The result is what ``SlimGPTPruner(config).prune_model(AutoModelForCausalLM.from_pretrained(model_path,
    dtype=dtype), tokenizer)`` followed by ``pruner.save(model, output_dir)`` writes, tensor for tensor and bit for
    bit, without ever holding more than one decoder block in memory (see the module docstring).

    Args:
        model_path: A local folder with ``config.json`` and safetensors weights (sharded or not), or a ``.gguf``
            file (converted once into a safetensors work copy in the work folder, see the module docstring).
        output_dir: The output checkpoint folder; it appears atomically when the run is complete.
        config: The pruning config (any method; ``schedule="layer_importance"`` and ``"search"`` are not supported
            here; a searched profile is, as an explicit schedule).
        tokenizer: For text calibration data (default: ``AutoTokenizer`` from ``model_path`` when the data need one);
            saved with the checkpoint.
        calibration: ``(samples, seqlen)`` token ids overriding ``config.dataset``.
        dtype: The dtype to prune in (default: the checkpoint's; float32 for a GGUF source).
        save_dtype: The dtype of the saved weights: ``"auto"`` (default) the source checkpoint's (bf16 for a GGUF
            source; a pruned checkpoint's recorded source dtype), ``None`` the one pruned in (``dtype``), or a dtype
            or its name. As ``save_pruned_model(dtype=...)``.
        gguf_file: The GGUF file inside the folder ``model_path`` (as transformers' ``gguf_file``).
        export_format: ``"auto"``, ``"per_layer"`` or ``"uniform"`` (``"padded"`` needs every layer at once).
        overwrite: Replace a non-empty ``output_dir``.
        resume: Continue an interrupted run from its work folder (the fingerprints of model, config and
            calibration must match). A resumed run may replace ``output_dir`` without ``overwrite``.
        max_shard_size: Upper bound of the non-block shard (each block is one shard).
        model_card: Write the ``README.md`` model card.
        tune_allocator: Fix glibc's mmap threshold at 64 KiB for the rest of the process (``mallopt``), so freed
            tensors go back to the OS instead of staying in the heap as fragments (about 100 MiB less at the peak of
            a 3B model; a no-op off glibc). It is a process-wide setting: pass ``False`` to leave the allocator alone.

    Returns:
        The :class:`~optimum_slimgpt.saving.SaveResult` of the written checkpoint.

    When the run stops after its work folder holds finished blocks (an error, ``KeyboardInterrupt``, or SIGTERM,
    which is turned into a ``KeyboardInterrupt`` while it runs in the main thread), it logs where that folder is and
    re-raises; ``resume=True`` continues it.
    """
    from .saving import _terminate_as_interrupt

    started: dict = {}
    with _terminate_as_interrupt():
        try:
            return _prune_pretrained(model_path, output_dir, config, tokenizer, calibration, dtype, save_dtype,
                                     gguf_file, export_format, overwrite, resume, max_shard_size, model_card,
                                     tune_allocator, started)
        except BaseException as e:
            where = describe_work_dir(output_dir) if started else None
            if where is not None:
                logger.warning("the streamed run stopped (%s); its work folder stays: %s; resume=True (CLI: --resume) "
                               "continues from the last finished block", type(e).__name__, where)
                try:
                    e.slimgpt_work_dir = where  # (the CLI prints its resume command for such a stop)
                except AttributeError:
                    pass
            raise


def _prune_pretrained(model_path, output_dir, config: PruningConfig, tokenizer, calibration, dtype, save_dtype,
                      gguf_file, export_format, overwrite, resume, max_shard_size, model_card, tune_allocator,
                      started: dict) -> SaveResult:
    from .calibration import check_dataset_source
    from .saving import parse_dtype

    t_start = time.perf_counter()
    model_path, output_dir = Path(model_path).expanduser().absolute(), Path(output_dir).expanduser().absolute()
    gguf = model_path / gguf_file if gguf_file else model_path if model_path.suffix == ".gguf" else None
    if not (isinstance(save_dtype, str) and save_dtype == "auto"):
        save_dtype = parse_dtype(save_dtype)
    if config.schedule == "layer_importance":
        raise ValueError("schedule='layer_importance' needs a dense pass over every block before pruning; "
                         "prune_pretrained does not stream that pass yet: use prune_model or another schedule")
    from .methods import get_method

    if get_method(config).plans_globally(config):
        raise ValueError(f"method {config.method_name!r} sets the per-layer sizes from a dense pass over every block "
                         "(global allocation), which prune_pretrained does not stream yet: use prune_model, or "
                         "global_allocation=False")
    if export_format == "padded":
        raise ValueError("export_format='padded' pads every layer to the largest one, which is only known at the end; "
                         "prune_pretrained writes 'per_layer' or 'uniform' ('auto')")
    if calibration is None:
        check_dataset_source(config.dataset, config.dataset_text_field)
    if gguf is not None:
        _check_gguf_file(gguf)
        ckpt = None
    else:
        ckpt = ShardedCheckpoint(model_path)
    work = work_dir(output_dir)
    state_file = work / "state.json"
    if state_file.exists() and not resume:
        raise FileExistsError(f"{work} holds an interrupted run: pass resume=True (--resume) to continue it, or delete "
                              "the folder to start again")
    if resume and not state_file.exists():
        logger.info("nothing to resume in %s: starting a new run", work)
    resuming = resume and state_file.exists()
    if resuming and not overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        logger.warning("resuming into %s, which is not empty: the resumed run replaces it when it is done "
                       "(atomically)", output_dir)
    # (the output may not be the source, lie inside it or contain it; for a GGUF, its folder: the model's name)
    check_output_dir(output_dir, overwrite=overwrite or resuming, sources=[gguf.parent if gguf else model_path])
    overwrite = overwrite or resuming
    if config.schedule == "search":
        _refuse_search(config, None if gguf is not None else model_path, dtype or (ckpt.dtype() if ckpt else None),
                       output_dir)

    if tune_allocator:  # after the checks: a refused call leaves the process's allocator alone
        _tune_allocator()
    if gguf is not None:
        started["work"] = work  # (a stop from here on keeps the work copy: say so)
        dtype = dtype or torch.float32
        ckpt = ShardedCheckpoint(_gguf_work_copy(gguf, work, dtype))
    dtype = dtype or ckpt.dtype()
    model = _skeleton(ckpt.folder, dtype)
    if gguf is not None:
        model.config.name_or_path = str(gguf.parent)  # as from_pretrained(folder, gguf_file=...) names it
    pruner = SlimGPTPruner(config)
    prev = PruningRecord.of(model.config)
    # the source's dtype (a pruned checkpoint's own record says its base's); what save_dtype="auto" writes
    pruner.source_dtype = parse_dtype(prev.source_dtype) if prev is not None and prev.source_dtype else \
        torch.bfloat16 if gguf is not None else ckpt.dtype()
    out_dtype = pruner.source_dtype if isinstance(save_dtype, str) else save_dtype or dtype
    pruner.mask_only = False
    c = pruner.config
    c.validate()
    adapter = get_adapter(model)
    blocks = adapter.get_blocks(model)
    device = pruner._resolve_device(torch.device("cpu"))
    pruner._check_seqlen(model, adapter, calibration.shape[1] if isinstance(calibration, torch.Tensor) else None)
    pruner.plan = pruner.plan_model(model)
    export = pruner._check_export(model, adapter, blocks, pruner.plan, export_format)
    if export.format == "padded":
        raise ValueError(f"this plan can only be saved as 'padded' ({export.reason}), which prune_pretrained cannot "
                         "write: use prune_model")

    # the tensors of the calibration forward: everything outside the blocks but the output head
    head = model.get_output_embeddings()
    head_names = {f"{n}.{k}" for n, m in model.named_modules() if m is head for k, _ in m.named_parameters()}
    prefix = adapter.layout.blocks + "."
    front = [k for k in model.state_dict() if not k.startswith(prefix) and k not in head_names]
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    model.load_state_dict(ckpt.load(front, dtype), strict=False, assign=True)
    if tied:
        model.tie_weights()
    pruner._check_finite(model.get_input_embeddings())

    if calibration is not None:
        data = calibration
    else:
        if tokenizer is None and not isinstance(c.dataset, torch.Tensor):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name) if gguf is not None else \
                AutoTokenizer.from_pretrained(model_path)
        data = get_calibration_data(c, tokenizer, model=model)
    pruner._check_tokens(model, data)
    pruner._check_seqlen(model, adapter, data.shape[1])
    data_hash = hashlib.sha256(data.detach().cpu().long().contiguous().numpy().tobytes()).hexdigest()
    fingerprint = {"model": ckpt.fingerprint(), "config": json.loads(c.to_json_string()), "calibration": data_hash,
                   "dtype": str(dtype), "save_dtype": str(out_dtype), "export_format": export_format,
                   "version": _STATE_VERSION}

    state: dict[str, Any] = {"fingerprint": fingerprint, "blocks_done": 0, "num_blocks": len(blocks), "reports": [],
                             "kept": [], "mlp_tail": None, "package": __version__}
    if state_file.exists():
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        diff = sorted(k for k in fingerprint if saved.get("fingerprint", {}).get(k) != fingerprint[k])
        if diff:
            raise CheckpointError(f"{work} belongs to another run (different {', '.join(diff)} from this one): "
                                  "resume with the same model, config and calibration, or delete the folder")
        state = saved
        logger.info("resuming after block %d of %d from %s", state["blocks_done"], len(blocks), work)
    work.mkdir(parents=True, exist_ok=True)
    started["work"] = work

    clock = Stopwatch("hessian_attn", "head_solve", "hessian_ffn", "ffn_solve", "surgery", "forward_out", "load",
                      "write")
    run = _Run(model, adapter, blocks, pruner.method, ActivationStore(device, c.offload_activations), clock)
    run.spill_dir = os.fspath(work)  # the FFN solve inverts in its Hessian's storage (a copy waits on disk for a retry)
    run.start, run.mlp_tail = state["blocks_done"], state["mlp_tail"]
    total_before = sum(p.numel() for p in model.parameters())
    stop_value, _, stop_signal = os.environ.get(STOP_AFTER_ENV, "").partition(":")
    stop_after = int(stop_value or 0)

    def block_names(i: int, block: nn.Module) -> list[str]:
        return [f"{prefix}{i}.{k}" for k in block.state_dict()]

    def load_block(i: int, block: nn.Module) -> None:
        block.load_state_dict({k.removeprefix(f"{prefix}{i}."): v for k, v in ckpt.load(block_names(i, block),
                                                                                         dtype).items()},
                              strict=True, assign=True)
        pruner._check_finite(block)

    def finish_block(i: int, block: nn.Module, outputs: list, report: LayerReport, kept: dict) -> None:
        # (in the saved dtype: the cast that saving the in-memory model makes)
        _save_tensors(work / f"block-{i:05d}.safetensors",
                      {n: t.to(out_dtype) if t.is_floating_point() else t
                       for n, t in zip(block_names(i, block), block.state_dict().values())})
        if i < len(blocks) - 1:
            _save_tensors(work / "inputs.safetensors", {f"batch{b}": x for b, x in enumerate(outputs)})
        state.update(blocks_done=i + 1, mlp_tail=run.mlp_tail)
        state["reports"].append(dataclasses.asdict(report))
        state["kept"].append(kept)
        _atomic_write(state_file, lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))
        _free(block)
        if stop_after and i + 1 == stop_after:
            logger.warning("%s=%s: killing the process after block %d (test hook)", STOP_AFTER_ENV,
                           os.environ[STOP_AFTER_ENV], i)
            os.kill(os.getpid(), signal.SIGTERM if stop_signal.upper() == "TERM" else signal.SIGKILL)

    run.load_block, run.finish_block = load_block, finish_block
    was_cache = getattr(model.config, "use_cache", None)
    if was_cache is not None:
        model.config.use_cache = False
    try:
        with clock("capture"):
            inps, layer_kwargs = pruner._capture(run, data)
        _free(model.get_input_embeddings())
        if tied:  # to("meta") made a new parameter: the head shares it again (saved once, as before)
            model.tie_weights()
        done = []
        if run.start:
            from safetensors.torch import load_file

            saved_inps = load_file(work / "inputs.safetensors")
            inps = run.store.keep_all([run.store.keep(saved_inps[f"batch{b}"]) for b in range(len(inps))])
            done = [(_report_from_dict(r), k) for r, k in zip(state["reports"], state["kept"])]
            for i in range(run.start):  # the finished blocks take their pruned shapes (on the meta device)
                _reshape_done_block(adapter, blocks[i], model.config, state["kept"][i],
                                    _header_shapes(work / f"block-{i:05d}.safetensors"), f"{prefix}{i}.")
        reports = pruner._prune_blocks(run, inps, layer_kwargs, done=done)
        del inps, layer_kwargs
        pruner._finish(run, reports, data, calibration is not None, total_before, t_start)
    finally:
        if was_cache is not None:
            model.config.use_cache = was_cache

    def write_weights(folder: Path, names: list[str]) -> None:
        # output biases that to_pruned_model gave the blocks written before it (zeros: pruned_out_bias), and the
        # zero q/k/v/gate/up biases of a uniform export that holds them through attention_bias/mlp_bias
        shapes = dict(model.state_dict())

        def shape_of(n: str) -> torch.Tensor:
            return shapes[n] if n in shapes else shapes[n[: -len("bias")] + "weight"][:, 0]

        zeros = {n: torch.zeros(shape_of(n).shape, dtype=out_dtype) for n in names if n.startswith(prefix)
                 and n.endswith(".bias") and not any(n in _header_shapes(work / f"block-{i:05d}.safetensors")
                                                     for i in [int(n[len(prefix):].split(".")[0])])}
        _write_output_shards(folder, names, ckpt, work, blocks, prefix, dtype, out_dtype, max_shard_size, zeros)

    result = save_pruned_model(model, output_dir, tokenizer=tokenizer, export_format=export.format, overwrite=overwrite,
                               model_card=model_card, write_weights=write_weights, dtype=out_dtype)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: streamed pruning of %s done in %.1f s (%s, %s); removed the work folder %s%s", pruner.label,
                (gguf or model_path).name, time.perf_counter() - t_start, result.format, result.dtype, work,
                " and the GGUF's work copy in it" if gguf is not None else "")
    return result


def _header_shapes(path: Path) -> dict[str, tuple]:
    return {k: tuple(v["shape"]) for k, v in _read_header(path).items() if k != "__metadata__"}


def _reshape_done_block(adapter, block: nn.Module, config, kept: dict, shard_shapes: dict, block_prefix: str) -> None:
    """Give a block finished by an earlier (interrupted) run its pruned shapes, on the meta device, from its kept
    indices (and the output biases its method added), and check them against its shard in the work folder."""
    lay = adapter.head_layout(block, config)
    if len(kept["heads"]) < lay.num_heads or len(kept["kv_heads"]) < lay.num_kv_heads:
        adapter.prune_heads(block, config, kept["heads"], kept["kv_heads"])
    if len(kept["channels"]) < adapter.num_channels(block):
        adapter.prune_channels(block, kept["channels"])
    for out in (adapter.attn_out_proj(block), adapter.mlp_out_proj(block)):
        path = next(n for n, m in block.named_modules() if m is out)
        if out.bias is None and f"{block_prefix}{path}.bias" in shard_shapes:
            adapter.set_output_bias(out, torch.zeros(out.out_features, device="meta"))
    want = {f"{block_prefix}{k}": tuple(t.shape) for k, t in block.state_dict().items()}
    if want != shard_shapes:
        raise CheckpointError(f"the work folder's shard of a finished block does not match its kept indices "
                              f"({sorted(set(want.items()) ^ set(shard_shapes.items()))[:3]}): delete the work folder")


def _write_output_shards(folder: Path, names: list[str], ckpt: ShardedCheckpoint, work: Path, blocks, prefix: str,
                         dtype, out_dtype, max_shard_size, extra: dict[str, torch.Tensor]) -> None:
    """The output's tensors: each block's shard hard-linked (or copied) from the work folder, the other tensors
    copied from the source checkpoint (read in ``dtype``, the dtype pruned in, and saved in ``out_dtype``: the casts
    of loading and saving the model in memory), ``extra`` (given tensors) in a shard of their own; with the index
    that ``from_pretrained`` reads."""
    import shutil

    from transformers.utils.hub import convert_file_size_to_int

    limit = convert_file_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    wanted = set(names)
    block_shards = [(work / f"block-{i:05d}.safetensors") for i in range(len(blocks))]
    per_block = [set(_header_shapes(p)) for p in block_shards]
    rest = [n for n in names if not n.startswith(prefix)]
    covered = set().union(*per_block) | set(rest) | set(extra)
    if covered != wanted:
        raise CheckpointError(f"the streamed tensors do not match the checkpoint format: missing "
                              f"{sorted(wanted - covered)[:3]}, unexpected {sorted(covered - wanted)[:3]}")
    groups: list[list[str]] = [[]]
    size = 0
    for n in rest:  # the non-block tensors, in shards of at most max_shard_size
        dt, shape = ckpt.info[n]
        nbytes = int(torch.Size(shape).numel()) * torch.empty(0, dtype=out_dtype).element_size()
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nbytes
    groups = [g for g in groups if g]
    total = len(groups) + len(block_shards) + bool(extra)
    weight_map: dict[str, str] = {}
    total_size = 0
    k = 0
    for g in groups:
        k += 1
        fname = f"model-{k:05d}-of-{total:05d}.safetensors"
        tensors = {k: t.to(out_dtype) if t.is_floating_point() else t for k, t in ckpt.load(g, dtype).items()}
        _save_tensors(folder / fname, tensors)
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(g, fname))
        del tensors
    if extra:
        k += 1
        fname = f"model-{k:05d}-of-{total:05d}.safetensors"
        _save_tensors(folder / fname, extra)
        total_size += sum(t.numel() * t.element_size() for t in extra.values())
        weight_map.update(dict.fromkeys(extra, fname))
    for p, keys in zip(block_shards, per_block):
        k += 1
        fname = f"model-{k:05d}-of-{total:05d}.safetensors"
        try:
            os.link(p, folder / fname)
        except OSError:  # another file system
            shutil.copyfile(p, folder / fname)
        for name, v in _read_header(p).items():
            if name != "__metadata__":
                total_size += v["data_offsets"][1] - v["data_offsets"][0]
        weight_map.update(dict.fromkeys(keys, fname))
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
