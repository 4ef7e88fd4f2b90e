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

Chat models (see :func:`resolve_dataset` and :mod:`optimum_slimgpt.selfgen`):

* ``"self-chat"``: conversations the model writes itself with its own chat template, answering seed
  instructions (a built-in varied set, or ``PruningConfig.chat_instructions``);
* a chat file: a ``.jsonl`` file (or a ``.json`` list) whose rows hold ``messages`` (a list of ``{"role",
  "content"}`` dicts), each conversation formatted with the tokenizer's chat template;
* ``"auto"`` (the default): ``"self-chat"`` when the tokenizer has a chat template and the whole model is there to
  write with, else ``"wikitext2"`` (with a warning saying why, for a chat model).

Chat conversations are *packed* (:func:`pack_conversations`): every window starts at the beginning of a
conversation, as every real chat does, and holds whole conversations until the next one does not fit; that one is
cut at the window's end and starts the next window again, whole. So nothing generated is lost and no window starts
in the middle of a turn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from .config import PruningConfig

logger = logging.getLogger(__name__)

__all__ = ["DatasetSpec", "DATASETS", "register_dataset", "load_texts", "tokenize_stream", "sample_windows",
           "get_calibration_data", "describe_source", "check_dataset_source", "resolve_dataset", "has_chat_template", "read_instructions",
           "builtin_instructions", "read_chat_file", "is_chat_file", "format_conversations", "pack_conversations",
           "AUTO", "SELF_CHAT"]

#: the default calibration source: chat-formatted for a chat model, WikiText-2 otherwise (:func:`resolve_dataset`)
AUTO = "auto"
#: conversations the model writes with its own chat template (:mod:`optimum_slimgpt.selfgen`)
SELF_CHAT = "self-chat"


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
    if not isinstance(dataset, str) or dataset in DATASETS or dataset in _GENERATORS or dataset in (AUTO, SELF_CHAT):
        return
    fields = (text_field,) if isinstance(text_field, str) else tuple(text_field)
    fields += ("messages",)  # a chat file (is_chat_file): conversations, formatted with the chat template
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
    """The ``(num_samples, seqlen)`` token-id tensor described by ``config`` (``"auto"`` resolved by
    :func:`resolve_dataset`; a chat file packed conversation by conversation, see the module doc)."""
    d = resolve_dataset(config.dataset, tokenizer, model)
    if d is None:
        raise ValueError("no calibration dataset given (PruningConfig.dataset is None)")
    if isinstance(d, torch.Tensor):
        if d.numel() == 0 or d.shape[0] == 0:
            raise ValueError("the calibration token tensor is empty")
        return d.long()
    if isinstance(d, str) and d in _GENERATORS:
        if model is not None and any(p.device.type == "meta" for p in model.parameters()):
            raise ValueError(f"dataset={d!r} generates text with the whole model, which a streamed (low-memory) run "
                             "never loads: calibrate on a text or chat file instead")
        return _GENERATORS[d](config if d == config.dataset else dataclasses.replace(config, dataset=d), tokenizer,
                              model)
    if is_chat_file(d):
        convs = format_conversations(tokenizer, read_chat_file(d), source=os.fspath(d))
        return pack_conversations(_reshuffled(convs, config.seed), config.num_samples, config.seqlen)
    docs, joiner = load_texts(d, config.dataset_split, config.dataset_text_field)
    _warn_plain_text_for_chat(tokenizer, d)
    stream = tokenize_stream(tokenizer, docs, joiner)
    return sample_windows(stream, config.num_samples, config.seqlen, config.seed)


# ---------------------------------------------------------------------------------------------- chat sources
def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` formats conversations (a non-empty ``chat_template``)."""
    return bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False


def _usable_for_generation(model) -> bool:
    return model is not None and not any(p.device.type == "meta" for p in model.parameters())


def resolve_dataset(dataset, tokenizer=None, model=None):
    """The calibration source ``dataset`` stands for: ``"auto"`` becomes ``"self-chat"`` when ``tokenizer`` has a
    chat template and ``model`` is loaded (not a streamed skeleton), else ``"wikitext2"``; for a chat model that
    falls back, a warning says why. Any other value is returned as it is."""
    if not (isinstance(dataset, str) and dataset == AUTO):
        return dataset
    if not has_chat_template(tokenizer):
        return "wikitext2"
    if not _usable_for_generation(model):
        logger.warning("the tokenizer has a chat template, but without the whole model loaded (a streamed, "
                       "low-memory run) the model cannot write its own chat calibration: calibrating on plain "
                       "text (wikitext2). A model pruned on prose may stop answering chat prompts: pass a chat "
                       "file (.jsonl with 'messages') as the dataset to keep it a chat model")
        return "wikitext2"
    return SELF_CHAT


def _warn_plain_text_for_chat(tokenizer, dataset) -> None:
    if has_chat_template(tokenizer):
        name = os.path.basename(os.fspath(dataset)) if isinstance(dataset, (str, os.PathLike)) else "a list of texts"
        logger.warning("calibrating a chat model (its tokenizer has a chat template) on plain text (%s): the pruned "
                       "model may stop answering chat prompts. dataset='self-chat' (the model writes its own "
                       "conversations) or a chat file (.jsonl with 'messages') keeps it a chat model", name)


def builtin_instructions(kind: str = "calibration") -> list[str]:
    """The instructions shipped with the package: ``"calibration"`` (100 varied seed instructions of
    ``"self-chat"``) or ``"check"`` (60 others, disjoint from them, for :func:`~optimum_slimgpt.evaluation.chat_check`)."""
    from importlib.resources import files

    names = {"calibration": "chat_calibration.txt", "check": "chat_check.txt"}
    if kind not in names:
        raise ValueError(f"kind must be one of {sorted(names)}, got {kind!r}")
    text = (files("optimum_slimgpt") / "data" / names[kind]).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_instructions(source=None, kind: str = "calibration") -> list[str]:
    """Instructions from ``source``: ``None`` (the built-in set of ``kind``), a list of strings, or a UTF-8 text
    file with one instruction per line (blank lines skipped). Errors name the file."""
    if source is None:
        return builtin_instructions(kind)
    if isinstance(source, (list, tuple)):
        out = [s.strip() for s in source if isinstance(s, str) and s.strip()]
        if len(out) != len(source):
            raise ValueError("chat instructions must be non-empty strings")
        return out
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"chat instructions file {path!r} does not exist (give a text file with one instruction "
                         "per line, or a list of strings)")
    try:
        with open(path, encoding="utf-8") as f:
            out = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"chat instructions file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not out:
        raise ValueError(f"chat instructions file {path!r} has no instructions (one per line)")
    return out


def is_chat_file(dataset) -> bool:
    """A local ``.jsonl``/``.json`` file whose first record has a ``messages`` field (a chat file)."""
    if not isinstance(dataset, (str, os.PathLike)):
        return False
    path = os.fspath(dataset)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".json") or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            if ext == ".jsonl":
                first = next((line for line in f if line.strip()), "")
                rec = json.loads(first) if first else None
            else:
                head = f.read(1 << 16).lstrip()
                if not head.startswith("["):
                    return False
                try:
                    rec = json.loads(head + f.read())
                except json.JSONDecodeError:
                    return False
                rec = rec[0] if isinstance(rec, list) and rec else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # not a readable chat file: the text loader reports what is wrong with it
    return isinstance(rec, dict) and "messages" in rec


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects, got "
                         f"{type(messages).__name__}")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: message {j} must be an object with string 'role' and 'content', got {m!r}"[:300])
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_chat_file(path) -> list[list[dict]]:
    """The conversations of a chat file: one ``messages`` list per JSON line (``.jsonl``) or per element of a JSON
    list (``.json``). Every error names the file and the line (or element)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"chat file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    records: list[tuple[str, Any]] = []
    if path.lower().endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{name} line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"chat file {path!r} line {n}: not valid JSON ({e.msg})") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"chat file {path!r}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, list):
            raise ValueError(f"chat file {path!r}: a .json chat file is a list of {{'messages': [...]}} objects")
        records = [(f"{name} element {i}", r) for i, r in enumerate(data)]
    convs = []
    for where, rec in records:
        if not isinstance(rec, dict) or "messages" not in rec:
            raise ValueError(f"chat file {path!r}: {where.split(' ', 1)[1]} has no 'messages' field")
        convs.append(_check_messages(rec["messages"], f"chat file {path!r}, {where.split(' ', 1)[1]}"))
    if not convs:
        raise ValueError(f"chat file {path!r} has no conversations")
    return convs


def format_conversations(tokenizer, conversations: Sequence[list[dict]], source: str = "the conversations"
                         ) -> list[list[int]]:
    """The token ids of each conversation as the tokenizer's chat template writes it (no generation prompt)."""
    if tokenizer is None:
        raise ValueError(f"a tokenizer is needed to format {source} with its chat template")
    if not has_chat_template(tokenizer):
        raise ValueError(f"{source} holds chat conversations ('messages'), but the tokenizer has no chat template to "
                         "format them with: set tokenizer.chat_template, or give plain text")
    out = []
    for i, conv in enumerate(conversations):
        try:
            text = tokenizer.apply_chat_template(conv, tokenize=False)
        except Exception as e:  # noqa: BLE001 - jinja errors (e.g. a template that requires alternating roles)
            raise ValueError(f"{source}: the chat template cannot format conversation {i}: {e}") from e
        # the template writes the special tokens (BOS, turn markers) as text; they tokenise as themselves
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _reshuffled(conversations: Sequence[list[int]], seed: int) -> Iterator[list[int]]:
    """The conversations in a seeded order, again in a new order when they run out (endless; nothing empty)."""
    items = [c for c in conversations if c]
    if not items:
        raise ValueError("the chat conversations are empty")
    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in order:
            yield items[i]


def pack_conversations(conversations: Iterable[list[int]], num_samples: int, seqlen: int) -> torch.Tensor:
    """``(num_samples, seqlen)`` windows packed from tokenised conversations (taken in order, lazily): each window
    starts with a whole conversation and adds whole ones; the first that does not fit is cut at the window's end
    and starts the next window again (so no conversation is lost, none starts mid-way). A conversation longer than
    a window fills one alone, cut. Raises when the conversations run out first."""
    it = iter(conversations)
    windows: list[torch.Tensor] = []
    cur: list[int] = []
    carry: Optional[list[int]] = None
    while len(windows) < num_samples:
        conv = carry if carry is not None else next(it, None)
        if conv is None:
            raise ValueError(f"the chat conversations fill only {len(windows)} windows of {seqlen} tokens, fewer than "
                             f"num_samples={num_samples}: give more conversations or a smaller num_samples/seqlen")
        carry = None
        room = seqlen - len(cur)
        if len(conv) <= room:
            cur.extend(conv)
        else:
            cur.extend(conv[:room])
            if room < seqlen:
                carry = conv  # starts the next window, whole (cut there only if longer than a window)
        if len(cur) == seqlen:
            windows.append(torch.tensor(cur, dtype=torch.long))
            cur = []
    return torch.stack(windows)


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


def describe_source(config: PruningConfig, data: torch.Tensor, *, explicit: bool = False,
                    source: Any = None) -> dict[str, Any]:
    """What a run was really calibrated on, JSON-safe and free of local paths (it travels in ``config.json``
    and the model card): the source (a registered name with its split; a local file or folder by its name and,
    for a file, its sha256; in-memory texts by count and hash; token ids by shape), the real window count and
    length, the seed where it chose the windows, and the sha256 of the token ids themselves.

    ``explicit``: ``data`` was passed to ``prune_model(calibration=...)``, overriding ``config.dataset``.
    ``source``: what ``config.dataset`` resolved to (:func:`resolve_dataset`; ``"auto"`` is then recorded as the
    source it chose, with ``"auto": true``).
    """
    d = config.dataset
    auto = isinstance(d, str) and d == AUTO and source is not None and not (isinstance(source, str) and source == AUTO)
    if auto:
        d = source
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
            if name == SELF_CHAT:
                from .selfgen import describe_self_chat

                out.update(describe_self_chat(config))
        elif name in DATASETS:
            out["dataset"], out["split"] = name, config.dataset_split
        elif os.path.isfile(name):
            out["dataset"] = {"type": "file", "name": os.path.basename(name), "sha256": _sha256_file(name)}
            if is_chat_file(name):
                out["dataset"]["format"] = "chat (messages, the tokenizer's chat template)"
            elif os.path.splitext(name)[1].lower() in _FILE_BUILDERS:
                out["dataset"]["text_field"] = config.dataset_text_field
        elif os.path.isdir(name):
            out["dataset"] = {"type": "folder", "name": os.path.basename(os.path.normpath(name)),
                              "text_field": config.dataset_text_field}
            out["split"] = config.dataset_split
        else:  # a source that no longer exists: its name only, never a path
            out["dataset"] = os.path.basename(name)
    if auto:
        out["auto"] = True  # the default source, chosen by resolve_dataset
    out["num_samples"], out["seqlen"] = int(tokens.shape[0]), int(tokens.shape[1])
    if seeded:
        out["seed"] = config.seed
    out["token_ids_sha256"] = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
    return out
