"""Opening the models named on the command line: a folder with ``config.json``, a hub id, a ``.gguf`` file or a
folder holding one; dtype names; devices. Every problem is a :class:`~optimum_slimgpt.cli_args.CLIError`
(one ``error:`` line)."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from pathlib import Path
from typing import Optional

from .cli_args import CLIError

__all__ = ["check_device", "dtype_arg", "load_model", "load_tokenizer", "resolve_model_path", "save_dtype_arg",
           "torch_dtype"]


def torch_dtype(name):
    """A dtype flag's value (``float32``, ``bf16``, ``auto``...) as a torch dtype; the flags convert it once, at
    parse time, so that a bad name fails before anything is loaded."""
    import torch

    if not isinstance(name, str):
        return name
    table = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise CLIError(f"unknown dtype {name!r}; choose from {sorted(table)}")
    return table[name]


def dtype_arg(name: str):
    """:func:`torch_dtype` as an argparse ``type``: a dtype flag is converted once, while parsing, so that a bad
    name fails before anything is loaded."""
    import argparse

    try:
        return torch_dtype(name)
    except CLIError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def save_dtype_arg(value: Optional[str]):
    """A ``--save-dtype`` value as ``save_pruned_model``'s ``dtype``: ``"auto"`` (the source checkpoint's dtype),
    ``None`` for ``compute`` (the dtype pruned in), or a dtype; an unknown name is a ``CLIError`` before anything is
    loaded."""
    from .saving import parse_dtype

    if value in ("auto", None):
        return "auto"
    if value == "compute":
        return None
    try:
        return parse_dtype(value)
    except ValueError as e:
        raise CLIError(f"--save-dtype: {e}") from None


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
        _check_gguf_magic(p)
        return str(p.parent), p.name, p
    if not p.exists():
        if os.sep in path or path.startswith(".") or path.startswith("~"):
            raise CLIError(f"model path {path!r} does not exist")
        return path, gguf_file, p  # a hub id (the Hub is only reached if the environment allows it)
    if gguf_file:
        if not (p / gguf_file).is_file():
            raise CLIError(f"--gguf-file {gguf_file!r} is not a file in {path}")
        _check_gguf_magic(p / gguf_file)
        return str(p), gguf_file, p / gguf_file
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(f.name for f in p.glob("*.gguf"))
        if len(ggufs) == 1:
            logging.getLogger(__name__).info("using %s (the only GGUF file in %s)", ggufs[0], path)
            _check_gguf_magic(p / ggufs[0])
            return str(p), ggufs[0], p / ggufs[0]
        if ggufs:
            raise CLIError(f"{path} has no config.json and several GGUF files ({', '.join(ggufs)}): choose one with "
                           "--gguf-file")
        raise CLIError(f"{path} is not a model folder: no config.json and no .gguf file in it")
    if p.is_dir():
        _check_model_folder(p)
    return str(p), None, p


def _check_gguf_magic(file: Path) -> None:
    with open(file, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CLIError(f"--model {file} is not a GGUF file (it does not start with the bytes 'GGUF')")


def _check_model_folder(folder: Path) -> None:
    """A model folder's ``config.json`` is a JSON object with a ``model_type`` transformers knows, and the folder
    holds weights: checked before anything is loaded (``CLIError`` naming the file)."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import optimum_slimgpt  # noqa: F401  (registers the pruned model types)

    file = folder / "config.json"
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"--model {file} is not a readable JSON file ({e})") from e
    if not isinstance(cfg, dict):
        raise CLIError(f"--model {file} holds a JSON {type(cfg).__name__}, not a model config (an object)")
    model_type = cfg.get("model_type")
    if not model_type:
        raise CLIError(f"--model {file} has no 'model_type': not a transformers model config")
    if model_type not in CONFIG_MAPPING:
        raise CLIError(f"--model {file}: model_type {model_type!r} is not one this transformers knows")
    weights = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
    if not any(any(folder.glob(w)) for w in weights):
        raise CLIError(f"--model {folder} has a config.json but no weights (*.safetensors or *.bin)")


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers parses a GGUF file once for the config, once for the tokenizer and once for the weights, and
    rebuilds gguf's tensor-name map for each of hundreds of modules (most of a SmolLM2 load). Inside this block each
    is done once: the same read-only reader and map are handed out again, and the metadata transformers reads
    without tensors (a copy of it each time) is parsed once (patched only while loading). The reader parses a plain
    read-only array over the file's memory map rather than the map itself: the same bytes, without numpy's memmap
    bookkeeping on each of the ~150k small slices a 49k-token vocabulary takes (SmolLM2's reader: 3.6 -> 1.2 CPU s)."""
    try:
        import gguf
        import numpy as np
    except ImportError:  # transformers says what is missing
        yield
        return
    orig_reader, orig_map = gguf.GGUFReader, gguf.get_tensor_name_map

    class PlainArrayReader(orig_reader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):  # the np.memmap gguf opens, seen as an ndarray (still backed by the map)
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = PlainArrayReader(path, *args, **kwargs)
        return readers[key]

    try:
        from transformers import modeling_gguf_pytorch_utils as hf_gguf
    except ImportError:
        hf_gguf = None
    orig_checkpoint = getattr(hf_gguf, "load_gguf_checkpoint", None)
    metadata: dict = {}

    def checkpoint(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return orig_checkpoint(path, return_tensors, *args, **kwargs)
        key = os.fspath(path)
        if key not in metadata:
            metadata[key] = orig_checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])  # callers may edit what they get

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(orig_map)
    if orig_checkpoint is not None:
        hf_gguf.load_gguf_checkpoint = checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = orig_reader, orig_map
        if orig_checkpoint is not None:
            hf_gguf.load_gguf_checkpoint = orig_checkpoint


def _tokenizer_or_none(path, kw: dict):
    """``AutoTokenizer.from_pretrained(path, **kw)``, or ``None`` with a warning when there is none to load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **kw)
    except Exception as e:  # noqa: BLE001 - a model without a tokenizer can still be pruned with token-id data
        logging.getLogger(__name__).warning("no tokenizer loaded from %s: %s", path,
                                            str(e).splitlines()[0] if str(e) else e)
        return None


def load_tokenizer(path: str, gguf_file: Optional[str] = None):
    """The tokenizer of a folder/hub id (optionally a GGUF file in it; the file parsed once), or ``None`` with a
    warning when it has none."""
    with gguf_parsed_once() if gguf_file else contextlib.nullcontext():
        return _tokenizer_or_none(path, {"gguf_file": gguf_file} if gguf_file else {})


def load_model(path: str, gguf_file: Optional[str] = None, dtype="float32", device: Optional[str] = None):
    """Load a causal LM and its tokenizer from a folder/hub id (optionally a GGUF file in it)."""
    import optimum_slimgpt  # noqa: F401  (registers the pruned model classes)
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(dtype)
    check_device(device)
    path, gguf_file, _ = resolve_model_path(path, gguf_file)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    with gguf_parsed_once() if gguf_file else contextlib.nullcontext():
        tok = _tokenizer_or_none(path, kw)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
        except (OSError, ValueError, RuntimeError) as e:
            raise CLIError(f"cannot load a model from {path!r}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if device:
        model.to(device)
    return model.eval(), tok
