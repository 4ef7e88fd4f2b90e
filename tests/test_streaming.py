"""Pruning from disk block by block (``prune_pretrained``, ``optimum-slimgpt prune --low-memory``): the same
checkpoint as the in-memory path, bit for bit; resume after a kill; clear errors for broken inputs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner, SlimLLMConfig, prune_pretrained
from optimum_slimgpt.streaming import STOP_AFTER_ENV, CheckpointError

VOCAB = 96
CALIB = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def _source(folder: Path, *, dtype=torch.bfloat16, tied=False, family="llama", shard="24KB", vocab=VOCAB) -> Path:
    import transformers

    cls, cfg_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config")}[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied)
    getattr(transformers, cls)(cfg).to(dtype).save_pretrained(folder, max_shard_size=shard)
    return folder


def _tensors(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())


def _in_memory(src: Path, out: Path, config, dtype, export_format="auto") -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval()
    pruner = SlimGPTPruner(config)
    pruner.prune_model(model, calibration=CALIB)
    pruner.save(model, out, export_format=export_format)


@pytest.mark.parametrize("case", ["bf16-sharded", "fp16-tied-qwen2", "slimllm-biases", "uniform", "uniform-affine"])
def test_streamed_prune_equals_the_in_memory_prune_and_save(case, tmp_path):
    dtype = {"fp16-tied-qwen2": torch.float16}.get(case, torch.bfloat16)
    src = _source(tmp_path / "src", dtype=dtype, tied=case == "fp16-tied-qwen2",
                  family="qwen2" if case == "fp16-tied-qwen2" else "llama")
    if case != "fp16-tied-qwen2":
        assert json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]  # really sharded
    make = {"slimllm-biases": lambda: SlimLLMConfig(pruning_ratio=0.3, dataset=None, batch_size=4),
            "uniform": lambda: SlimGPTConfig(pruning_ratio=0.3, schedule="uniform", dataset=None, batch_size=4),
            # output biases in a plain Llama checkpoint (attention_bias/mlp_bias, zero q/k/v/gate/up biases)
            "uniform-affine": lambda: SlimGPTConfig(pruning_ratio=0.3, schedule="uniform", dataset=None, batch_size=4,
                                                    bias_compensation=True),
            }.get(case, lambda: SlimGPTConfig(pruning_ratio=0.3, dataset=None, batch_size=4))
    _in_memory(src, tmp_path / "mem", make(), dtype)
    res = prune_pretrained(src, tmp_path / "stream", make(), calibration=CALIB)
    assert res.format == ("uniform" if case.startswith("uniform") else "per_layer")
    if case == "uniform-affine":
        assert json.loads((tmp_path / "stream" / "config.json").read_text())["mlp_bias"] is True
    _assert_same_checkpoint(tmp_path / "mem", tmp_path / "stream")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the work folder is gone
    from transformers import AutoModelForCausalLM

    slim = AutoModelForCausalLM.from_pretrained(tmp_path / "stream")  # loads strictly, and runs
    assert torch.isfinite(slim(CALIB[:1]).logits).all()


def test_cli_low_memory_kill_and_resume(tmp_path, capsys):
    """``prune --low-memory`` SIGKILLed after 2 of 4 blocks (test hook), then ``--resume``: the same checkpoint,
    bit for bit, as an uninterrupted run. A resume with another model, config or calibration is refused."""
    from optimum_slimgpt import cli

    from helpers import tok512_tokenizer

    from helpers import TINYSTORIES_TXT, have_shared

    if not have_shared(TINYSTORIES_TXT):
        pytest.skip("../shared TinyStories missing")
    src = _source(tmp_path / "src", vocab=512, shard="100KB")  # the tok512 vocabulary
    tok = tok512_tokenizer()
    (tmp_path / "calib.txt").write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    tok.save_pretrained(src)
    args = ["prune", "--model", str(src), "--ratio", "0.3", "--dataset", str(tmp_path / "calib.txt"), "--samples", "4",
            "--seqlen", "32", "--batch-size", "4", "--dtype", "bfloat16", "--low-memory"]
    env = dict(os.environ, **{STOP_AFTER_ENV: "2", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-m", "optimum_slimgpt.cli", *args, "--output", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == -9, proc.stderr[-2000:]
    work = tmp_path / ".out.slimgpt-work"
    state = json.loads((work / "state.json").read_text())
    assert state["blocks_done"] == 2 and sorted(p.name for p in work.glob("block-*")) == [
        "block-00000.safetensors", "block-00001.safetensors"]
    assert not (tmp_path / "out").exists()  # nothing that looks like a finished checkpoint
    capsys.readouterr()

    def refused(extra: list[str], message: str, argv=args) -> None:
        assert cli.main([*argv, "--output", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err, err

    refused([], "pass resume=True")  # never silently restarted or overwritten
    refused(["--resume", "--ratio", "0.25"], "belongs to another run (different config from")
    other = _source(tmp_path / "other", vocab=512, shard="100KB", dtype=torch.float16)
    tok.save_pretrained(other)
    refused(["--resume"], "belongs to another run (different model from",
            argv=[a if a != str(src) else str(other) for a in args])
    calib = (tmp_path / "calib.txt").read_text(encoding="utf-8")
    (tmp_path / "calib.txt").write_text(calib[::-1], encoding="utf-8")  # same path and config, other windows
    refused(["--resume"], "belongs to another run (different calibration from")
    (tmp_path / "calib.txt").write_text(calib, encoding="utf-8")
    assert json.loads((work / "state.json").read_text())["blocks_done"] == 2  # the refusals kept the work
    assert cli.main([*args, "--output", str(tmp_path / "out"), "--resume"]) == 0
    assert "streamed block by block" in capsys.readouterr().out
    assert cli.main([*args, "--output", str(tmp_path / "full")]) == 0
    _assert_same_checkpoint(tmp_path / "full", tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "README.md").is_file()


def test_broken_sources_are_refused_before_any_work(tmp_path):
    cfg = SlimGPTConfig(pruning_ratio=0.3, dataset=None, batch_size=4)
    src = _source(tmp_path / "src")
    shards = sorted(src.glob("model-*.safetensors"))
    missing = tmp_path / "missing"
    missing.mkdir()
    for f in src.iterdir():
        if f != shards[1]:
            (missing / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match=f"shard\\(s\\) {shards[1].name} listed in the index are missing"):
        prune_pretrained(missing, tmp_path / "o1", cfg, calibration=CALIB)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in src.iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[:-100] if f == shards[2] else data)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        prune_pretrained(truncated, tmp_path / "o2", cfg, calibration=CALIB)
    (truncated / shards[2].name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="corrupt"):
        prune_pretrained(truncated, tmp_path / "o3", cfg, calibration=CALIB)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))]  # nothing written


@pytest.mark.parametrize("where", ["block shard", "hessian spill"])
def test_a_failing_write_loses_nothing_and_the_run_resumes(tmp_path, monkeypatch, where):
    """A full disk (a write that fails) in block 2, when its shard is written or when its FFN solve spills the
    Hessian: a clear error, the finished blocks stay in the work folder, no output appears, and a resumed run
    gives the uninterrupted result."""
    from optimum_slimgpt import streaming
    from optimum_slimgpt.solvers import hessian

    src = _source(tmp_path / "src")
    # channel_multiple=1: every block then loses FFN channels, so the third FFN solve (spill) is block 2's; with
    # "auto" these 64-channel layers step by 16 and block 0 keeps all its channels (no FFN solve, no spill)
    make = lambda: SlimGPTConfig(pruning_ratio=0.3, dataset=None, batch_size=4, channel_multiple=1)  # noqa: E731
    prune_pretrained(src, tmp_path / "ref", make(), calibration=CALIB)
    real, real_spill, spills = streaming._save_tensors, hessian._Spill.__init__, []

    def full_disk(path, tensors):
        if path.name == "block-00002.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors)

    def full_disk_spill(self, A, folder, rows=256):
        spills.append(folder)
        if len(spills) == 3:  # the third FFN solve: block 2
            raise OSError(errno.ENOSPC, "No space left on device")
        real_spill(self, A, folder, rows)

    if where == "block shard":
        monkeypatch.setattr(streaming, "_save_tensors", full_disk)
    else:
        monkeypatch.setattr(hessian._Spill, "__init__", full_disk_spill)
    with pytest.raises(OSError, match="No space left"):
        prune_pretrained(src, tmp_path / "out", make(), calibration=CALIB)
    monkeypatch.undo()
    work = tmp_path / ".out.slimgpt-work"
    assert where == "block shard" or spills == [str(work)] * 3  # the spills go to the work folder
    assert json.loads((work / "state.json").read_text())["blocks_done"] == 2 and not (tmp_path / "out").exists()
    prune_pretrained(src, tmp_path / "out", make(), calibration=CALIB, resume=True)
    _assert_same_checkpoint(tmp_path / "ref", tmp_path / "out")
