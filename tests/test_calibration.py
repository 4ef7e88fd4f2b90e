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
