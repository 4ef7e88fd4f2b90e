"""Calibration windows: determinism, sources (names via datasets, local files, lists, tensors), errors."""

import json

import pytest
import torch

from optimum_slimgpt.calibration import (
    DATASETS,
    DatasetSpec,
    get_calibration_data,
    load_texts,
    sample_windows,
    tokenize_stream,
)
from optimum_slimgpt.config import SlimGPTConfig


class CharTokenizer:
    """A stand-in tokenizer: one id per character, BOS=1 only with add_special_tokens."""

    def __call__(self, texts, add_special_tokens=True):
        out = []
        for t in texts:
            ids = [2 + (ord(ch) % 250) for ch in t]
            out.append(([1] if add_special_tokens else []) + ids)
        return {"input_ids": out}


DOCS = [f"Document number {i}: " + "lorem ipsum dolor sit amet " * 5 for i in range(40)]


def test_windows_are_deterministic_distinct_and_contiguous():
    stream = torch.arange(1000)
    a = sample_windows(stream, 16, 50, seed=0)
    b = sample_windows(stream, 16, 50, seed=0)
    c = sample_windows(stream, 16, 50, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    starts = a[:, 0].tolist()
    assert len(set(starts)) == 16
    assert torch.equal(a - a[:, :1], torch.arange(50).expand(16, 50))


def test_stream_has_no_special_tokens_and_joins_documents():
    ids = tokenize_stream(CharTokenizer(), ["ab", "", "cd"], "\n\n")
    assert 1 not in ids.tolist()
    assert ids.tolist() == [2 + ord(c) % 250 for c in "ab\n\ncd\n\n"]


def test_too_short_or_empty_text_fails_clearly():
    with pytest.raises(ValueError, match="fewer than one window of seqlen=64"):
        sample_windows(torch.arange(30), 4, 64)
    with pytest.raises(ValueError, match="fewer than num_samples=50"):
        sample_windows(torch.arange(60), 50, 30)
    with pytest.raises(ValueError, match="empty"):
        tokenize_stream(CharTokenizer(), ["", "  "])
    cfg = SlimGPTConfig(dataset=["tiny text"], num_samples=2, seqlen=512)
    with pytest.raises(ValueError, match="too short"):
        get_calibration_data(cfg, CharTokenizer())
    with pytest.raises(ValueError, match="tokenizer is needed"):
        get_calibration_data(SlimGPTConfig(dataset=DOCS, num_samples=2, seqlen=16), None)


def test_list_and_tensor_sources():
    cfg = SlimGPTConfig(dataset=DOCS, num_samples=8, seqlen=64, seed=5)
    x = get_calibration_data(cfg, CharTokenizer())
    assert x.shape == (8, 64) and x.dtype == torch.long
    assert torch.equal(x, get_calibration_data(cfg, CharTokenizer()))
    t = torch.randint(0, 100, (3, 10))
    assert torch.equal(get_calibration_data(SlimGPTConfig(dataset=t), None), t)


def test_local_files_through_datasets(tmp_path):
    jl = tmp_path / "calib.jsonl"
    jl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)))
    txt = tmp_path / "calib.txt"
    txt.write_text("\n\n".join(DOCS))
    docs, joiner = load_texts(str(jl))
    assert docs == DOCS and joiner == "\n\n"
    docs, _ = load_texts(str(txt))
    assert len(docs) == 1 and docs[0].startswith("Document number 0")
    x = get_calibration_data(SlimGPTConfig(dataset=str(jl), num_samples=4, seqlen=32), CharTokenizer())
    assert x.shape == (4, 32)
    with pytest.raises(ValueError, match="no column 'content'"):
        load_texts(str(jl), text_field="content")
    with pytest.raises(ValueError, match="unknown calibration dataset"):
        load_texts(str(tmp_path / "missing.txt"))


def test_registered_name_is_read_with_datasets(tmp_path, monkeypatch):
    """The 'wikitext2' spec goes through datasets.load_dataset; point it at a local parquet file."""
    import datasets

    rows = ["", " = Title = ", "", " First paragraph . ", " Second paragraph . "] * 20
    path = tmp_path / "wikitext-validation.parquet"
    datasets.Dataset.from_dict({"text": rows}).to_parquet(str(path))
    monkeypatch.setitem(DATASETS, "wikitext2", DatasetSpec("parquet", data_files={"validation": str(path)}))
    docs, joiner = load_texts("wikitext2", split="validation")
    assert docs == rows and joiner == "\n\n"
    cfg = SlimGPTConfig(dataset="wikitext2", dataset_split="validation", num_samples=4, seqlen=32)
    x = get_calibration_data(cfg, CharTokenizer())
    assert x.shape == (4, 32)
    with pytest.raises(ValueError, match="could not load calibration dataset"):
        load_texts("wikitext2", split="train")


def test_real_tokenizer_adds_no_special_tokens(smollm2):
    _, tok = smollm2
    ids = tokenize_stream(tok, ["Hello world.", "Second document."])
    assert tok.bos_token_id not in ids.tolist()
    assert ids.tolist() == tok("Hello world.\n\n", add_special_tokens=False).input_ids + tok(
        "Second document.\n\n", add_special_tokens=False).input_ids


def test_check_dataset_source_names_the_file_and_the_problem(tmp_path):
    """Every local format the loader reads is checked before anything loads; good files pass, and the names of
    registered, generated and in-memory sources are left to their readers."""
    import re

    import datasets

    from optimum_slimgpt.calibration import check_dataset_source

    good = {"a.txt": "Once upon a time. " * 100, "a.jsonl": "\n".join(json.dumps({"text": d}) for d in DOCS),
            "a.json": json.dumps([{"text": d} for d in DOCS]), "a.csv": "text,id\nhello,1\n"}
    for name, text in good.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        check_dataset_source(tmp_path / name)
    datasets.Dataset.from_dict({"text": DOCS}).to_parquet(str(tmp_path / "a.parquet"))
    check_dataset_source(str(tmp_path / "a.parquet"))
    check_dataset_source(str(tmp_path / "a.jsonl"), ("messages", "text"))  # any of several fields
    for source in ("wikitext2", "self", DOCS, torch.zeros(2, 4, dtype=torch.long)):
        check_dataset_source(source)
    # a multi-byte character split by the 1 MiB read is still text; a truncated one is not
    (tmp_path / "big.txt").write_bytes(b"a" * ((1 << 20) - 1) + "é".encode("utf-8") * 10)
    check_dataset_source(tmp_path / "big.txt")
    (tmp_path / "cut.txt").write_bytes(b"abc" + "é".encode("utf-8")[:1])
    bad = {
        "cut.txt": "ends inside a multi-byte character",
        "list.json": ("is an empty JSON list", "[]"),
        "nofield.json": ("has no 'text' or 'messages' field in its records (they have ['body'])", json.dumps([{"body": "x"}])),
        "number.json": ("holds a JSON int", "42"),
        "lines.jsonl": ("line 2 is not valid JSON", '{"text": "a"}\n{oops\n'),
        "strings.jsonl": ("line 1 is a JSON str, not an object", '"just text"\n'),
        "header.csv": ("has a header but no rows", "text\n"),
    }
    for name, what in bad.items():
        message = what if isinstance(what, str) else what[0]
        if not isinstance(what, str):
            (tmp_path / name).write_text(what[1], encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(f"dataset file {tmp_path / name}") + ".*" + re.escape(message)):
            check_dataset_source(tmp_path / name)
    datasets.Dataset.from_dict({"body": DOCS}).to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(ValueError, match="b.parquet has no 'text' column"):
        check_dataset_source(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="c.parquet is not a readable parquet file"):
        check_dataset_source(tmp_path / "c.parquet")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="dataset folder .*folder holds no files"):
        check_dataset_source(tmp_path / "folder")
    with pytest.raises(ValueError, match="no such file or folder, and not a registered name"):
        check_dataset_source("wikitext3")
