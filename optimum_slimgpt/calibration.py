"""Calibration data: deterministic random windows of a tokenised text stream.

As in the official SlimGPT code, each document is tokenised *without special tokens* with ``"\\n\\n"``
appended, the documents are concatenated into one stream, and ``num_samples`` windows of ``seqlen``
tokens are cut at distinct random offsets drawn by ``random.Random(seed)``.

Sources (``PruningConfig.dataset``):

* a registered name (:data:`DATASETS`: ``"wikitext2"``, ``"c4"``, ``"ptb"``), read with
  ``datasets.load_dataset``; register more with :func:`register_dataset`;
* a path to a local ``.txt`` file (read as one document) or a ``.json``/``.jsonl``/``.csv``/``.parquet``
  file or dataset folder (read with ``datasets.load_dataset``, column ``dataset_text_field``);
* a list of strings (one document each);
* a ``LongTensor`` of token ids ``(samples, seqlen)``, used as is.

:func:`check_dataset_source` checks a local file before anything is loaded (the CLI calls it first, the pruner's
preflight too): it exists, is readable, is UTF-8 text (or parquet), is not empty, and its records have the text field.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .config import PruningConfig

__all__ = ["DatasetSpec", "DATASETS", "register_dataset", "load_texts", "tokenize_stream", "sample_windows",
           "get_calibration_data", "describe_source", "check_dataset_source"]


@dataclass
class DatasetSpec:
    """How to read a named dataset with ``datasets.load_dataset``.

    ``path``/``name``/``data_files`` go to ``load_dataset``; ``text_field`` is the column; ``max_docs``
    truncates (the official C4 pool is the first 200,000 documents of one shard); ``joiner`` is
    appended to each document before tokenisation.
    """

    path: str
    name: Optional[str] = None
    text_field: str = "text"
    data_files: Any = None
    max_docs: Optional[int] = None
    joiner: str = "\n\n"
    load_kwargs: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {
    "wikitext2": DatasetSpec("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "c4": DatasetSpec(
        "allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz",
                                  "validation": "en/c4-validation.00000-of-00008.json.gz"},
        max_docs=200_000,
    ),
    "ptb": DatasetSpec("ptb_text_only", "penn_treebank", text_field="sentence", joiner=" "),
}

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def register_dataset(name: str, spec: DatasetSpec) -> None:
    """Make ``name`` usable as ``PruningConfig(dataset=name)``."""
    DATASETS[name] = spec


def _load_with_datasets(path: str, name=None, split="train", data_files=None, text_field="text", max_docs=None, **kw) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split, data_files=data_files, **kw)
    except Exception as e:  # network, missing split, bad file: say which dataset
        raise ValueError(f"could not load calibration dataset {path!r} (config {name!r}, split {split!r}): {e}") from e
    if text_field not in ds.column_names:
        raise ValueError(f"calibration dataset {path!r} has no column {text_field!r} (columns: {ds.column_names})")
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    return [t for t in ds[text_field] if isinstance(t, str)]


def load_texts(dataset, split: str = "train", text_field: str = "text") -> tuple[list[str], str]:
    """Return ``(documents, joiner)`` for a dataset name, path or list of strings."""
    if isinstance(dataset, (list, tuple)):
        return list(dataset), "\n\n"
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if not isinstance(dataset, str):
        raise TypeError(f"cannot read texts from {type(dataset).__name__}")
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        docs = _load_with_datasets(spec.path, spec.name, split, spec.data_files, spec.text_field, spec.max_docs, **spec.load_kwargs)
        return docs, spec.joiner
    if os.path.isfile(dataset):
        ext = os.path.splitext(dataset)[1].lower()
        if ext in _FILE_BUILDERS:
            return _load_with_datasets(_FILE_BUILDERS[ext], data_files=dataset, split="train", text_field=text_field), "\n\n"
        with open(dataset, encoding="utf-8") as f:
            return [f.read()], ""
    if os.path.isdir(dataset):
        return _load_with_datasets(dataset, split=split, text_field=text_field), "\n\n"
    raise ValueError(
        f"unknown calibration dataset {dataset!r}: not a registered name ({', '.join(sorted(DATASETS))}) "
        "and not an existing file or folder"
    )


# ------------------------------------------------------------------------------------------------ input checks
#: how much of a file the structural checks read (UTF-8 is checked over the whole file, in chunks)
_HEAD_BYTES = 1 << 20
_JSON_WHOLE_LIMIT = 64 << 20  # a .json file up to this size is parsed whole (an array of records)


def _scan_text(path: Path) -> tuple[str, bool]:
    """``(the first ~1 MiB as text, whether the file has non-blank text)``; ``ValueError`` naming the file and the
    offending byte when it is not UTF-8 text (undecodable bytes, or NUL bytes: a binary file)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    head: list[str] = []
    nonblank = False
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise ValueError(f"dataset file {path} is binary, not text (a NUL byte at offset {offset + nul}): give a "
                                 ".txt/.json/.jsonl/.csv/.parquet file of text")
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(f"dataset file {path} is not UTF-8 text: byte 0x{chunk[e.start]:02x} at offset "
                                 f"{offset + e.start} cannot be decoded (a binary file?): give a "
                                 ".txt/.json/.jsonl/.csv/.parquet file of UTF-8 text") from None
            nonblank = nonblank or bool(text.strip())
            if offset < _HEAD_BYTES:
                head.append(text)
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"dataset file {path} is not UTF-8 text: it ends inside a multi-byte character "
                             "(truncated?)") from None
    return "".join(head), nonblank


def _has_field(path: Path, records: list, fields: tuple[str, ...], where: str) -> None:
    for n, r in records:
        if not isinstance(r, dict):
            raise ValueError(f"dataset file {path}: {where} {n} is a JSON {type(r).__name__}, not an object with a "
                             f"{fields[0]!r} field")
    if not any(r.get(f) is not None for _, r in records for f in fields):
        keys = sorted({k for _, r in records for k in r})[:12]
        want = " or ".join(repr(f) for f in fields)
        raise ValueError(f"dataset file {path} has no {want} field in its records (they have {keys}): set "
                         "dataset_text_field to the field that holds the text")


def _check_json(path: Path, head: str, fields: tuple[str, ...], whole: bool) -> None:
    import json

    if path.suffix.lower() == ".json" and whole:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = None  # JSON lines in a .json file: checked below
        if isinstance(data, list):
            if not data:
                raise ValueError(f"dataset file {path} is an empty JSON list")
            _has_field(path, list(enumerate(data[:1000], 1)), fields, "item")
            return
        if isinstance(data, dict):
            _has_field(path, [(1, data)], fields, "object")
            return
        if data is not None:
            raise ValueError(f"dataset file {path} holds a JSON {type(data).__name__}, not records with a "
                             f"{fields[0]!r} field")
    lines = head.splitlines()
    if len(head.encode("utf-8")) >= _HEAD_BYTES and lines:
        lines = lines[:-1]  # the head may end inside a line
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset file {path}: line {n} is not valid JSON ({e.msg}); a .jsonl file holds one JSON "
                             "object per line") from None
        if len(records) >= 1000:
            break
    _has_field(path, records, fields, "line")


def _check_csv(path: Path, head: str, fields: tuple[str, ...]) -> None:
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(head)))[:3]
    except csv.Error as e:
        raise ValueError(f"dataset file {path} is not valid CSV ({e})") from None
    header = rows[0] if rows else []
    if not any(f in header for f in fields):
        raise ValueError(f"dataset file {path} has no {fields[0]!r} column (its header is {header[:12]}): set "
                         "dataset_text_field to the column that holds the text")
    if len(rows) < 2:
        raise ValueError(f"dataset file {path} has a header but no rows")


def _check_parquet(path: Path, fields: tuple[str, ...]) -> None:
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        names, rows = meta.schema_arrow.names, meta.metadata.num_rows
    except ImportError:
        return  # datasets brings pyarrow; without it the reader reports
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types
        raise ValueError(f"dataset file {path} is not a readable parquet file ({str(e).splitlines()[0]})") from None
    if not any(f in names for f in fields):
        raise ValueError(f"dataset file {path} has no {fields[0]!r} column (it has {names[:12]}): set "
                         "dataset_text_field to the column that holds the text")
    if rows == 0:
        raise ValueError(f"dataset file {path} is empty (0 rows)")


def check_dataset_source(dataset: Any, text_field: Union[str, Sequence[str]] = "text") -> None:
    """Check a local dataset file or folder before anything is loaded; ``ValueError`` naming the file and what is
    wrong with it.

    A file must exist and be readable, and not be empty; a ``.txt`` (or any other non-parquet) file must be UTF-8 text
    (no undecodable or NUL bytes: a binary file is refused here, not after the model has loaded); ``.json``/``.jsonl``
    must hold JSON objects (one per line, or a list) with the ``text_field`` field, ``.csv`` a header with that column
    and at least one row, ``.parquet`` that column and at least one row. A folder must hold files. Registered names
    (:data:`DATASETS`), generated sources (``"self"``), lists of strings and token tensors pass: they are checked where
    they are read.

    Args:
        dataset: The ``dataset`` of a config (a name, a path, texts or token ids).
        text_field: The field/column that holds the text, or several accepted names.
    """
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if not isinstance(dataset, str) or dataset in DATASETS or dataset in _GENERATORS:
        return
    fields = (text_field,) if isinstance(text_field, str) else tuple(text_field)
    path = Path(dataset).expanduser()
    if path.is_dir():
        if not any(p.is_file() for p in path.rglob("*")):
            raise ValueError(f"dataset folder {path} holds no files")
        return
    if not path.exists():
        names = ", ".join(sorted(DATASETS) + sorted(_GENERATORS))
        raise ValueError(f"dataset {dataset!r}: no such file or folder, and not a registered name ({names})")
    if not path.is_file():
        raise ValueError(f"dataset {path} is not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"dataset file {path} cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise ValueError(f"dataset file {path} is empty (0 bytes)")
    ext = path.suffix.lower()
    if ext == ".parquet":
        _check_parquet(path, fields)
        return
    if ext == ".arrow":
        return
    head, nonblank = _scan_text(path)
    if not nonblank:
        raise ValueError(f"dataset file {path} is empty (only whitespace)")
    if ext in (".json", ".jsonl"):
        _check_json(path, head, fields, whole=size <= _JSON_WHOLE_LIMIT)
    elif ext == ".csv":
        _check_csv(path, head, fields)


def tokenize_stream(tokenizer, documents: Sequence[str], joiner: str = "\n\n") -> torch.Tensor:
    """Tokenise each document (with ``joiner`` appended, no special tokens) and concatenate."""
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to tokenise text calibration data (or pass token ids as a tensor)")
    docs = [d + joiner for d in documents if d and d.strip()]
    if not docs:
        raise ValueError("the calibration data is empty (no non-blank documents)")
    ids: list[int] = []
    step = 1000
    for i in range(0, len(docs), step):
        enc = tokenizer(docs[i : i + step], add_special_tokens=False)["input_ids"]
        for e in enc:
            ids.extend(e)
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, num_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``num_samples`` windows of ``seqlen`` tokens at distinct random offsets (``random.Random(seed)``)."""
    n = stream.numel()
    if n < seqlen:
        raise ValueError(
            f"calibration text is too short: {n} tokens, fewer than one window of seqlen={seqlen}; "
            "use more text or a smaller seqlen"
        )
    starts = n - seqlen + 1
    if starts < num_samples:
        raise ValueError(
            f"calibration text of {n} tokens has only {starts} distinct windows of {seqlen} tokens, "
            f"fewer than num_samples={num_samples}"
        )
    rng = random.Random(seed)
    offsets = rng.sample(range(starts), num_samples)
    return torch.stack([stream[o : o + seqlen] for o in offsets])


def get_calibration_data(config: PruningConfig, tokenizer=None, *, model=None) -> torch.Tensor:
    """The ``(num_samples, seqlen)`` token-id tensor described by ``config``."""
    d = config.dataset
    if d is None:
        raise ValueError("no calibration dataset given (PruningConfig.dataset is None)")
    if isinstance(d, torch.Tensor):
        if d.numel() == 0 or d.shape[0] == 0:
            raise ValueError("the calibration token tensor is empty")
        return d.long()
    if isinstance(d, str) and d in _GENERATORS:
        return _GENERATORS[d](config, tokenizer, model)
    docs, joiner = load_texts(d, config.dataset_split, config.dataset_text_field)
    stream = tokenize_stream(tokenizer, docs, joiner)
    return sample_windows(stream, config.num_samples, config.seqlen, config.seed)


# Sources that are produced rather than read (e.g. text generated by the model itself).
_GENERATORS: dict[str, Callable[[PruningConfig, Any, Any], torch.Tensor]] = {}


def register_generator(name: str, fn: Callable[[PruningConfig, Any, Any], torch.Tensor]) -> None:
    """Register a calibration source computed from ``(config, tokenizer, model)``."""
    _GENERATORS[name] = fn


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_source(config: PruningConfig, data: torch.Tensor, *, explicit: bool = False) -> dict[str, Any]:
    """What a run was really calibrated on, JSON-safe and free of local paths (it travels in ``config.json``
    and the model card): the source (a registered name with its split; a local file or folder by its name and,
    for a file, its sha256; in-memory texts by count and hash; token ids by shape), the real window count and
    length, the seed where it chose the windows, and the sha256 of the token ids themselves.

    ``explicit``: ``data`` was passed to ``prune_model(calibration=...)``, overriding ``config.dataset``.
    """
    d = config.dataset
    tokens = data.detach().cpu().long().contiguous()
    out: dict[str, Any] = {}
    seeded = True
    if explicit or isinstance(d, torch.Tensor):
        out["dataset"] = {"type": "token_ids", "shape": list(tokens.shape)}
        seeded = False
    elif isinstance(d, (list, tuple)):
        h = hashlib.sha256("\0".join(d).encode("utf-8")).hexdigest()
        out["dataset"] = {"type": "texts", "count": len(d), "sha256": h}
    else:
        name = os.fspath(d)
        if name in _GENERATORS:
            out["dataset"] = name
        elif name in DATASETS:
            out["dataset"], out["split"] = name, config.dataset_split
        elif os.path.isfile(name):
            out["dataset"] = {"type": "file", "name": os.path.basename(name), "sha256": _sha256_file(name)}
            if os.path.splitext(name)[1].lower() in _FILE_BUILDERS:
                out["dataset"]["text_field"] = config.dataset_text_field
        elif os.path.isdir(name):
            out["dataset"] = {"type": "folder", "name": os.path.basename(os.path.normpath(name)),
                              "text_field": config.dataset_text_field}
            out["split"] = config.dataset_split
        else:  # a source that no longer exists: its name only, never a path
            out["dataset"] = os.path.basename(name)
    out["num_samples"], out["seqlen"] = int(tokens.shape[0]), int(tokens.shape[1])
    if seeded:
        out["seed"] = config.seed
    out["token_ids_sha256"] = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
    return out
