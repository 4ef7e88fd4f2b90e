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
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from .config import PruningConfig

__all__ = ["DatasetSpec", "DATASETS", "register_dataset", "load_texts", "tokenize_stream", "sample_windows",
           "get_calibration_data", "describe_source"]


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
