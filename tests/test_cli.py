"""The ``optimum-slimgpt`` command line on a real (tiny) model: ``prune`` through the installed entry point in a
subprocess, the other commands through ``cli.main`` in this process.

stories260K (llama2.c weights, ``../shared``) is converted once into a Hugging Face folder with a tokenizer
for its 512-token vocabulary; ``prune`` must write a model that ``AutoModelForCausalLM`` loads, ``eval``
must print the perplexity the package computes in-process, ``info`` the per-layer layout, and bad input
must end with exit status 2 and a one-line ``error:`` message.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optimum_slimgpt  # noqa: F401  (registers the pruned classes with the Auto* factories)
from helpers import TINYSTORIES_TXT, have_shared, load_stories260k, STORIES_BIN, call_cli, tok512_tokenizer

pytestmark = pytest.mark.skipif(not have_shared(STORIES_BIN, TINYSTORIES_TXT), reason="../shared stories260K missing")



def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "optimum_slimgpt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def stories_dir(tmp_path_factory) -> Path:
    """stories260K saved as a plain Hugging Face Llama folder with its tokenizer."""
    d = tmp_path_factory.mktemp("stories260k-hf")
    load_stories260k().save_pretrained(d)
    tok512_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> tuple[Path, Path]:
    """(calibration text, evaluation text): disjoint slices of the TinyStories file."""
    d = tmp_path_factory.mktemp("texts")
    text = TINYSTORIES_TXT.read_text(encoding="utf-8")
    calib, held = d / "calib.txt", d / "eval.txt"
    calib.write_text(text[:60_000], encoding="utf-8")
    held.write_text(text[-30_000:], encoding="utf-8")
    return calib, held


@pytest.fixture(scope="module")
def pruned_dir(stories_dir, texts, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli") / "stories-slim"
    proc = run_cli("prune", "--model", str(stories_dir), "--ratio", "0.3", "--dataset", str(texts[0]),
                   "--samples", "16", "--seqlen", "128", "--batch-size", "8", "--output", str(out))
    return out, proc


def test_prune_writes_a_loadable_smaller_model(stories_dir, pruned_dir):
    from transformers import AutoModelForCausalLM

    out, proc = pruned_dir
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the summary table (one row per block) and the save line
    assert re.search(r"saved to .*stories-slim \((per_layer|uniform)", proc.stdout), proc.stdout[-2000:]
    assert len(re.findall(r"^\s*\d+\s", proc.stdout, flags=re.M)) >= 5
    # a progress bar per block went to stderr, and the per-layer table was printed once
    assert "SlimGPT blocks" in proc.stderr and "capturing calibration inputs" in proc.stderr
    assert (proc.stdout + proc.stderr).count("attn err") == 1
    # the time estimate came first, before any work (5 blocks, 16 x 128 tokens)
    m = re.search(r"estimate: about .* for 16 x 128 calibration tokens \(capture .*5 blocks x", proc.stdout)
    assert m and proc.stdout.index("estimate:") < proc.stdout.index("saved to"), proc.stdout[:2000]
    cfg = json.loads((out / "config.json").read_text())
    assert abs(cfg["pruning_config"]["achieved_ratio"] - 0.3) < 0.05
    dense = AutoModelForCausalLM.from_pretrained(stories_dir)
    slim = AutoModelForCausalLM.from_pretrained(out)  # no flag: the package is imported
    n_dense = sum(p.numel() for p in dense.model.layers.parameters())
    n_slim = sum(p.numel() for p in slim.model.layers.parameters())
    assert abs(1 - n_slim / n_dense - 0.3) < 0.05
    ids = torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(slim(ids).logits).all()
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()


def test_eval_prints_the_package_perplexity(pruned_dir, texts, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_slimgpt.evaluation import perplexity

    out, prune_proc = pruned_dir
    assert prune_proc.returncode == 0, prune_proc.stderr[-3000:]
    rc, stdout, stderr = call_cli(capsys, "eval", "--model", str(out), "--text-file", str(texts[1]), "--seqlen", "256",
                                  "--max-tokens", "4096", "--json", str(out.parent / "eval.json"))
    assert rc == 0, stderr[-3000:]
    m = re.search(r"perplexity: ([0-9.]+)", stdout)
    assert m, stdout
    printed = float(m.group(1))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ref = perplexity(model, tok, texts[1].read_text(encoding="utf-8"), seqlen=256, max_tokens=4096,
                     show_progress=False)
    assert math.isfinite(printed) and abs(printed - ref) < 1e-3 * ref
    assert 1.0 < printed < 512  # better than uniform over the vocabulary
    saved = json.loads((out.parent / "eval.json").read_text())
    assert abs(saved["perplexity"] - ref) < 1e-6 * ref


def test_info_prints_the_layout(pruned_dir, capsys):
    out, prune_proc = pruned_dir
    assert prune_proc.returncode == 0, prune_proc.stderr[-3000:]
    rc, stdout, stderr = call_cli(capsys, "info", "--model", str(out))
    assert rc == 0, stderr
    cfg = json.loads((out / "config.json").read_text())
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)$", stdout, flags=re.M)
    assert len(rows) == 5
    pc = cfg["pruning_config"]
    want = [(lay["num_attention_heads"], lay["num_key_value_heads"], lay["intermediate_size"]) for lay in pc["layers"]]
    assert [tuple(int(x) for x in r[1:4]) for r in rows] == want
    # the per-layer head and FFN ratios of the schedule (the record keeps both)
    assert [(float(r[4]), float(r[5])) for r in rows] == [(round(a, 3), round(b, 3))
                                                          for a, b in zip(pc["layer_ratios"], pc["ffn_ratios"])]
    assert "method: slimgpt" in stdout


@pytest.mark.parametrize("args, message", [
    (["prune", "--model", "{model}", "--ratio", "1.5", "--output", "{tmp}/o"], "pruning_ratio"),
    (["prune", "--model", "{model}", "--schedule", "zigzag", "--output", "{tmp}/o"], "schedule"),
    (["prune", "--model", "./no/such/model", "--output", "{tmp}/o"], "does not exist"),
    (["prune", "--model", "{model}", "--dataset", "{tmp}/tiny.txt", "--seqlen", "128", "--output", "{tmp}/o"],
     "too short"),
    (["eval", "--model", "{model}"], "nothing to evaluate"),
    (["info", "--model", "{tmp}"], "config.json"),
    (["eval", "--model", "{model}", "--dtype", "float7", "--text-file", "{tmp}/tiny.txt"], "unknown dtype"),
    (["prune", "--model", "{model}", "--method", "slimllm", "--damp", "0.1", "--output", "{tmp}/o"],
     "--damp does not apply to --method slimllm"),
    (["prune", "--model", "{model}", "--method", "nosuch", "--output", "{tmp}/o"], "unknown pruning method"),
    (["prune", "--model", "{model}", "--method", "slimllm", "--bias-compensation", "--output", "{tmp}/o"],
     "--bias-compensation/--no-bias-compensation does not apply to --method slimllm"),
    # preflight: all of these fail before the model is pruned (nothing is written, no progress bar)
    (["prune", "--model", "{model}", "--device", "cuda:7", "--output", "{tmp}/o"], "--device cuda:7: not usable"),
    (["prune", "--model", "{model}", "--output", "{model}", "--overwrite"], "model's own source"),
    (["prune", "--model", "{model}", "--output", "{model}/slim"], "lies inside it"),
    (["prune", "--model", "{model}", "--output", "{tmp}/tiny.txt/o"], "is a file, not a folder"),
    (["prune", "--model", "{model}", "--output", "{tmp}/full"], "not empty"),
    (["prune", "--model", "{model}", "--format", "uniform", "--dataset", "{tmp}/calib.txt", "--samples", "4",
      "--seqlen", "32", "--output", "{tmp}/o"], "same sizes in every layer"),
    (["prune", "--model", "{model}", "--seqlen", "4096", "--output", "{tmp}/o"], "max_position_embeddings=512"),
    (["prune", "--model", "{model}", "--schedule", "0.1,x", "--output", "{tmp}/o"], "comma-separated numbers"),
    (["prune", "--model", "{tmp}/two-ggufs", "--output", "{tmp}/o"], "several GGUF files (a.gguf, b.gguf)"),
    (["prune", "--model", "{tmp}/full", "--output", "{tmp}/o"], "not a model folder"),
    (["eval", "--model", "{model}", "--tasks", "piqa,nosuchtask"], "unknown zero-shot task(s) nosuchtask"),
    (["eval", "--model", "{model}", "--text-file", "{tmp}/missing.txt"], "no such file"),
    (["eval", "--model", "{model}", "--device", "cuda:7", "--text-file", "{tmp}/tiny.txt"], "not usable"),
    (["info", "--model", "{tmp}/badjson"], "not valid JSON"),
])
def test_bad_arguments_exit_non_zero_with_one_line(args, message, stories_dir, tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("Once upon a time.", encoding="utf-8")
    (tmp_path / "calib.txt").write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me", encoding="utf-8")
    (tmp_path / "two-ggufs").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two-ggufs" / name).write_bytes(b"GGUF")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json", encoding="utf-8")
    before = sorted(p.name for p in stories_dir.iterdir())
    argv = [a.format(model=stories_dir, tmp=tmp_path) for a in args]
    rc, _, stderr = call_cli(capsys, *argv)
    assert rc == 2, (rc, stderr[-2000:])
    err_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and message in err_lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert "SlimGPT blocks" not in stderr  # nothing was pruned
    assert not (tmp_path / "o").exists() and not (stories_dir / "slim").exists()
    assert sorted(p.name for p in stories_dir.iterdir()) == before  # the source is untouched
    assert (tmp_path / "full" / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_bias_compensation_flag_builds_the_config():
    from optimum_slimgpt.cli import _config_from_args, build_parser

    def cfg(*extra):
        return _config_from_args(build_parser().parse_args(["prune", "--model", "m", "--output", "o", *extra]))

    assert cfg().bias_compensation is False and cfg("--bias-compensation").bias_compensation is True
    flap = cfg("--method", "flap", "--no-bias-compensation")
    assert type(flap).__name__ == "FLAPConfig" and flap.bias_compensation is False


def test_argparse_errors_exit_non_zero(capsys):
    rc, _, stderr = call_cli(capsys, "prune", "--ratio", "0.2")  # --model and --output missing
    assert rc == 2 and "required" in stderr
    rc, _, stderr = call_cli(capsys, "frobnicate")
    assert rc == 2 and "invalid choice" in stderr
    rc, stdout, _ = call_cli(capsys, "--help")  # the help text renders (no stray % in it)
    assert rc == 0 and "prune" in stdout


@pytest.mark.parametrize("command", ["prune", "eval", "info", "demo"])
def test_every_subcommand_has_help(command, capsys):
    rc, stdout, stderr = call_cli(capsys, command, "--help")
    assert rc == 0, stderr
    assert f"usage: optimum-slimgpt {command}" in stdout
    if command == "prune":  # every schedule is named, options say what they do and their defaults
        assert "layer_importance" in stdout and "(default: 0.2)" in stdout and "max_position_embeddings" in stdout


def test_a_folder_with_one_gguf_file_needs_no_gguf_flag(tmp_path):
    from optimum_slimgpt.cli import CLIError, resolve_model_path

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model_path(str(tmp_path)) == (str(tmp_path), "m.gguf", tmp_path / "m.gguf")
    assert resolve_model_path(str(tmp_path / "m.gguf"))[1] == "m.gguf"
    with pytest.raises(CLIError, match="--gguf-file 'x.gguf' is not a file"):
        resolve_model_path(str(tmp_path), "x.gguf")


def test_demo_writes_into_a_temporary_folder_unless_told(tmp_path, monkeypatch, capsys):
    """The demo's default output is a new temporary folder, never the current one; an explicit non-empty
    --output is refused without --overwrite before the model is even looked for."""
    from optimum_slimgpt import cli

    monkeypatch.chdir(tmp_path)
    seen = {}

    def stop(*a, **k):  # stop the demo right after it chose its output
        raise cli.CLIError("stopped by the test")

    import optimum_slimgpt.saving as saving

    real = saving.check_output_dir

    def spy(path, **kw):
        seen["path"] = Path(path)
        return real(path, **kw)

    monkeypatch.setattr(saving, "check_output_dir", spy)
    monkeypatch.setattr(cli, "find_smollm2_gguf", stop)
    rc, _, err = call_cli(capsys, "demo")
    assert rc == 2 and "stopped by the test" in err
    assert tmp_path not in seen["path"].parents and seen["path"].parent.name.startswith("optimum-slimgpt-demo-")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("x")
    rc, _, err = call_cli(capsys, "demo", "--output", "mine")
    assert rc == 2 and "not empty" in err


def test_info_reads_the_weights_not_the_record(pruned_dir, tmp_path, capsys):
    import shutil

    out, prune_proc = pruned_dir
    assert prune_proc.returncode == 0, prune_proc.stderr[-3000:]
    lied = tmp_path / "lied"
    shutil.copytree(out, lied)
    cfg = json.loads((lied / "config.json").read_text())
    truth = [(lay["num_attention_heads"], lay["num_key_value_heads"], lay["intermediate_size"])
             for lay in cfg["pruning_config"]["layers"]]
    cfg["pruning_config"]["layers"][2]["intermediate_size"] = 1  # a stale or edited record
    (lied / "config.json").write_text(json.dumps(cfg))
    rc, stdout, stderr = call_cli(capsys, "info", "--model", str(lied))
    assert rc == 0, stderr
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+", stdout, flags=re.M)
    assert [tuple(int(x) for x in r[1:4]) for r in rows] == truth
    assert "warning: the pruning record disagrees with the weights in layer(s) [2]" in stderr
