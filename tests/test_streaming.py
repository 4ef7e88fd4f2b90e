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


@pytest.mark.parametrize("case", ["bf16-sharded", "fp16-tied-qwen2", "slimllm-biases", "uniform", "uniform-affine",
                                  "bf16-pruned-in-fp32"])
def test_streamed_prune_equals_the_in_memory_prune_and_save(case, tmp_path):
    dtype = {"fp16-tied-qwen2": torch.float16}.get(case, torch.bfloat16)
    compute = torch.float32 if case == "bf16-pruned-in-fp32" else dtype
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
    _in_memory(src, tmp_path / "mem", make(), compute)
    res = prune_pretrained(src, tmp_path / "stream", make(), calibration=CALIB, dtype=compute)
    assert res.format == ("uniform" if case.startswith("uniform") else "per_layer")
    # saved in the source's dtype, whatever the dtype pruned in
    assert res.dtype == str(dtype).removeprefix("torch.") and {t.dtype for t in _tensors(res.path).values()} == {dtype}
    if case == "uniform-affine":
        assert json.loads((tmp_path / "stream" / "config.json").read_text())["mlp_bias"] is True
    _assert_same_checkpoint(tmp_path / "mem", tmp_path / "stream")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the work folder is gone
    from transformers import AutoModelForCausalLM

    slim = AutoModelForCausalLM.from_pretrained(tmp_path / "stream")  # loads strictly, and runs
    assert torch.isfinite(slim(CALIB[:1]).logits).all()


@pytest.fixture(scope="module")
def signalled_cli_runs(tmp_path_factory) -> dict:
    """The two ``python -m optimum_slimgpt.cli prune --low-memory`` processes that the test hook stops, started side
    by side (each spends most of its seconds importing torch and transformers; run one after the other, they cost
    twice the wall time on two cores). ``"kill"``: SIGKILLed after 2 of 4 blocks (bf16 compute); ``"term"``: SIGTERM
    after 1. ``{name: (folder, args, returncode, stderr)}``; each run's ``--output`` is ``folder / "out"``."""
    from helpers import TINYSTORIES_TXT, have_shared, tok512_tokenizer

    if not have_shared(TINYSTORIES_TXT):
        pytest.skip("../shared TinyStories missing")
    kill = tmp_path_factory.mktemp("kill")
    src = _source(kill / "src", vocab=512, shard="100KB")  # the tok512 vocabulary
    (kill / "calib.txt").write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    tok512_tokenizer().save_pretrained(src)
    kill_args = ["prune", "--model", str(src), "--ratio", "0.3", "--dataset", str(kill / "calib.txt"), "--samples",
                 "4", "--seqlen", "32", "--batch-size", "4", "--dtype", "bfloat16", "--low-memory"]
    term = tmp_path_factory.mktemp("term")
    _, term_args = _tok_source(term)
    logs = tmp_path_factory.mktemp("signalled-logs")  # files, not pipes: a full pipe would block a child
    procs = {}
    try:
        for name, folder, args, stop in (("kill", kill, kill_args, "2"), ("term", term, term_args, "1:TERM")):
            env = dict(os.environ, **{STOP_AFTER_ENV: stop, "OMP_NUM_THREADS": "1"})
            with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
                procs[name] = (folder, args, subprocess.Popen(
                    [sys.executable, "-m", "optimum_slimgpt.cli", *args, "--output", str(folder / "out")],
                    env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL))
        for _, _, proc in procs.values():
            proc.wait(timeout=120)
    finally:
        for _, _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {name: (folder, args, proc.returncode, (logs / f"{name}.err").read_text(encoding="utf-8"))
            for name, (folder, args, proc) in procs.items()}


def test_cli_low_memory_kill_and_resume(signalled_cli_runs, capsys):
    """``prune --low-memory`` SIGKILLed after 2 of 4 blocks (test hook), then ``--resume``: the same checkpoint,
    bit for bit, as an uninterrupted run. A resume with another model, config or calibration is refused."""
    from optimum_slimgpt import cli

    from helpers import tok512_tokenizer

    tmp_path, args, returncode, stderr = signalled_cli_runs["kill"]
    src, tok = Path(args[args.index("--model") + 1]), tok512_tokenizer()
    assert returncode == -9, stderr[-2000:]
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

    refused([], "add --resume to continue it")  # never silently restarted or overwritten
    refused(["--resume", "--ratio", "0.25"], "belongs to another run (different config from")
    other = _source(tmp_path / "other", vocab=512, shard="100KB", dtype=torch.float16)
    tok.save_pretrained(other)
    refused(["--resume"], "belongs to another run (different model,",
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


def _tok_source(tmp_path: Path):
    """A bf16 4-block source with stories260K's tokenizer and a TinyStories calibration file."""
    from helpers import TINYSTORIES_TXT, have_shared, tok512_tokenizer

    if not have_shared(TINYSTORIES_TXT):
        pytest.skip("../shared TinyStories missing")
    src = _source(tmp_path / "src", vocab=512, shard="100KB")
    tok512_tokenizer().save_pretrained(src)
    (tmp_path / "calib.txt").write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return src, ["prune", "--model", str(src), "--ratio", "0.3", "--dataset", str(tmp_path / "calib.txt"), "--samples",
                 "4", "--seqlen", "32", "--batch-size", "4", "--low-memory"]


def _interrupt_in_block_2(monkeypatch) -> None:
    from optimum_slimgpt import streaming

    real = streaming._save_tensors

    def ctrl_c(path, tensors):
        if path.name == "block-00002.safetensors":
            raise KeyboardInterrupt
        return real(path, tensors)

    monkeypatch.setattr(streaming, "_save_tensors", ctrl_c)


def _resume_line(stderr: str) -> list[str]:
    import shlex

    line = next(x for x in stderr.splitlines() if "to resume it:" in x)
    return shlex.split(line.split("to resume it:", 1)[1])


def test_an_interrupted_run_says_how_to_resume_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C in block 2 of ``prune --low-memory``: the message names the work folder and prints the command that
    resumes. An in-memory rerun next to it says it is there (and leaves it); a streamed rerun without --resume says
    how to resume or delete it; the printed command resumes (no --overwrite needed, though the in-memory rerun
    wrote --output meanwhile), says so, and gives the uninterrupted run's bytes."""
    import shlex

    from optimum_slimgpt import cli

    from helpers import call_cli

    src, args = _tok_source(tmp_path)
    out, work = tmp_path / "out", tmp_path / ".out.slimgpt-work"
    argv = [*args, "--output", str(out)]
    _interrupt_in_block_2(monkeypatch)
    rc, _, err = call_cli(capsys, *argv)
    monkeypatch.undo()
    assert rc == 130 and "error: interrupted" in err, err[-2000:]
    assert f"the stopped run's work folder stays: {work} (2 of 4 blocks done, " in err
    assert _resume_line(err) == ["optimum-slimgpt", *argv, "--resume"]
    assert f"to start again instead, delete it:  rm -r {shlex.quote(str(work))}" in err
    assert json.loads((work / "state.json").read_text())["blocks_done"] == 2 and not out.exists()

    rc, _, err = call_cli(capsys, *[a for a in argv if a != "--low-memory"])  # in memory, beside the work folder
    assert rc == 0, err[-2000:]
    assert f"found the work folder of an interrupted --low-memory run into this --output: {work}" in err
    assert _resume_line(err) == ["optimum-slimgpt", *[a for a in argv if a != "--low-memory"], "--low-memory",
                                 "--resume"]
    assert out.is_dir() and (work / "state.json").is_file()  # left alone

    rc, _, err = call_cli(capsys, *argv, "--overwrite")  # streamed, without --resume: refused, and told how
    assert rc == 2 and "add --resume to continue it" in err and _resume_line(err)[-1] == "--resume"
    assert "rm -r" in err and json.loads((work / "state.json").read_text())["blocks_done"] == 2

    rc, _, err = call_cli(capsys, *_resume_line(err)[1:-2], "--resume")  # (without its --overwrite)
    assert rc == 0, err[-2000:]
    assert "resuming the interrupted run: 2 of 4 blocks are done" in err and not work.exists()
    assert cli.main([*args, "--output", str(tmp_path / "full")]) == 0
    _assert_same_checkpoint(tmp_path / "full", out)


def test_sigterm_stops_a_streamed_run_with_the_resume_command(signalled_cli_runs):
    tmp_path, args, returncode, stderr = signalled_cli_runs["term"]
    assert returncode == 130 and "error: interrupted" in stderr, stderr[-2000:]
    work = tmp_path / ".out.slimgpt-work"
    assert f"the stopped run's work folder stays: {work} (1 of 4 blocks done" in stderr
    assert _resume_line(stderr) == ["optimum-slimgpt", *args, "--output", str(tmp_path / "out"), "--resume"]
    assert json.loads((work / "state.json").read_text())["blocks_done"] == 1


def _tiny_gguf(folder: Path, text: str) -> Path:
    """A 4-block Llama with a byte-level BPE tokenizer trained on ``text``, written as a Q8_0 GGUF by the package's
    own exporter (what llama.cpp users have)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from optimum_slimgpt import export_gguf

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    folder.mkdir()
    return export_gguf(model, folder / "tiny.gguf", tokenizer=tok, outtype="q8_0", require_record=False).path


def test_a_gguf_source_streams_through_a_work_copy(tmp_path, monkeypatch, capsys, caplog):
    """``prune --model x.gguf --low-memory``: the GGUF is converted once into a safetensors work copy in the work
    folder (said, with where), a stop keeps it and a resume reuses it; when done the copy is gone with the work folder,
    and the checkpoint is the in-memory run's, bit for bit, saved bf16 (a GGUF source)."""
    import logging

    pytest.importorskip("gguf")
    from helpers import call_cli

    _, args = _tok_source(tmp_path)  # (the calibration text)
    gguf = _tiny_gguf(tmp_path / "gguf", (tmp_path / "calib.txt").read_text(encoding="utf-8"))
    argv = [args[0], "--model", str(gguf), *args[3:], "--output", str(tmp_path / "out")]
    caplog.set_level(logging.INFO, logger="optimum_slimgpt")
    work = tmp_path / ".out.slimgpt-work"
    _interrupt_in_block_2(monkeypatch)
    rc, _, err = call_cli(capsys, *argv)
    monkeypatch.undo()
    assert rc == 130, err[-2000:]
    assert f"converting tiny.gguf once to a safetensors work copy in {work / 'source'}" in caplog.text
    assert "a safetensors work copy of the GGUF source" in err and (work / "source" / "config.json").is_file()
    caplog.clear()
    rc, _, err = call_cli(capsys, *_resume_line(err)[1:])
    assert rc == 0, err[-2000:]
    assert "reusing the safetensors work copy of tiny.gguf" in caplog.text and "converting" not in caplog.text
    assert "removed the work folder" in caplog.text and "work copy" in caplog.text
    assert not work.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "gguf", "out", "src"]
    assert {t.dtype for t in _tensors(tmp_path / "out").values()} == {torch.bfloat16}
    rc, _, err = call_cli(capsys, *[a for a in argv if a != "--low-memory"][:-1], str(tmp_path / "mem"))
    assert rc == 0, err[-2000:]
    _assert_same_checkpoint(tmp_path / "mem", tmp_path / "out")
