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
from tolerances import gamma, unit_roundoff

pytestmark = pytest.mark.skipif(not have_shared(STORIES_BIN, TINYSTORIES_TXT), reason="../shared stories260K missing")



def start_cli(*args: str, stdout, stderr) -> subprocess.Popen:
    """``python -m optimum_slimgpt.cli ARGS`` in a new process (the entry point itself), output to the given files."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "optimum_slimgpt.cli", *args], stdout=stdout, stderr=stderr,
                            text=True, env=env, stdin=subprocess.DEVNULL)


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


@pytest.fixture(scope="module", autouse=True)
def _prune_run(stories_dir, texts, tmp_path_factory):
    """``python -m optimum_slimgpt.cli prune`` on stories260K, started when this module starts: the child is mostly
    its Python importing torch and transformers on one core, while the module's other tests run beside it; the tests
    of ``pruned_dir`` (at the end of the module) wait for it. ``(output folder, process, log folder)``."""
    out = tmp_path_factory.mktemp("cli") / "stories-slim"
    logs = tmp_path_factory.mktemp("cli-prune-logs")
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:  # a full pipe would block it
        proc = start_cli("prune", "--model", str(stories_dir), "--ratio", "0.3", "--dataset", str(texts[0]),
                         "--samples", "16", "--seqlen", "128", "--batch-size", "8", "--output", str(out),
                         stdout=stdout, stderr=stderr)
    try:
        yield out, proc, logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def pruned_dir(_prune_run) -> tuple[Path, subprocess.CompletedProcess]:
    out, proc, logs = _prune_run
    proc.wait(timeout=300)
    return out, subprocess.CompletedProcess(proc.args, proc.returncode, (logs / "stdout").read_text(encoding="utf-8"),
                                            (logs / "stderr").read_text(encoding="utf-8"))


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
    from optimum_slimgpt import cli, demo

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
    monkeypatch.setattr(demo, "find_smollm2_gguf", stop)
    rc, _, err = call_cli(capsys, "demo")
    assert rc == 2 and "stopped by the test" in err
    assert tmp_path not in seen["path"].parents and seen["path"].parent.name.startswith("optimum-slimgpt-demo-")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("x")
    rc, _, err = call_cli(capsys, "demo", "--output", "mine")
    assert rc == 2 and "not empty" in err


# ------------------------------------------------------------------------------------------ the saved dtype
@pytest.fixture(scope="module")
def stories_bf16_dir(tmp_path_factory) -> Path:
    """stories260K saved in bf16 (a bf16 source checkpoint), with its tokenizer."""
    d = tmp_path_factory.mktemp("stories260k-bf16")
    load_stories260k().to(torch.bfloat16).save_pretrained(d)
    tok512_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize("save_dtype", [None, "float32"])
def test_prune_saves_in_the_source_dtype_unless_told(save_dtype, stories_bf16_dir, texts, tmp_path, capsys):
    """``prune`` of a bf16 checkpoint computes in float32 (--dtype) and saves bf16: weights and config, and the reloaded
    model's logits are the in-memory pruned model's with its weights cast to bf16, exactly; ``--save-dtype float32``
    keeps float32. ``info`` and the model card say which."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_slimgpt import SlimGPTPruner
    from optimum_slimgpt.cli import _config_from_args, build_parser

    want = torch.float32 if save_dtype else torch.bfloat16
    argv = ["prune", "--model", str(stories_bf16_dir), "--ratio", "0.3", "--dataset", str(texts[0]), "--samples", "8",
            "--seqlen", "64", "--batch-size", "8", "--output", str(tmp_path / "out")]
    argv += ["--save-dtype", save_dtype] if save_dtype else []
    rc, stdout, stderr = call_cli(capsys, *argv)
    assert rc == 0, stderr[-3000:]
    name = str(want).removeprefix("torch.")
    assert f"format, {name}:" in stdout
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dtype"] == name and cfg["pruning_config"]["source_dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {want}
    # the same run in memory, in float32
    model = AutoModelForCausalLM.from_pretrained(stories_bf16_dir, dtype=torch.float32).eval()
    SlimGPTPruner(_config_from_args(build_parser().parse_args(argv))).prune_model(
        model, AutoTokenizer.from_pretrained(stories_bf16_dir))
    for p in model.parameters():
        p.data = p.data.to(want)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # dtype "auto": the config's
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(saved(ids).logits, model(ids).logits)
    rc, stdout, _ = call_cli(capsys, "info", "--model", str(tmp_path / "out"))
    assert rc == 0 and f"dtype: {name} (source bfloat16, pruned in float32)" in stdout
    assert f"* weights: {name} (" in (tmp_path / "out" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ inputs checked first
BAD_INPUTS = {  # case: (extra arguments, the file the error names, what it says)
    "missing dataset": (["--dataset", "{tmp}/missing.txt"], "{tmp}/missing.txt", "no such file"),
    "binary dataset": (["--dataset", "{tmp}/data.txt"], "{tmp}/data.txt", "is not UTF-8 text: byte 0xac at offset 4"),
    "binary dataset, NUL": (["--dataset", "{tmp}/data.bin"], "{tmp}/data.bin", "is binary, not text"),
    "binary dataset, streamed": (["--dataset", "{tmp}/data.txt", "--low-memory"], "{tmp}/data.txt", "not UTF-8 text"),
    "jsonl without the field": (["--dataset", "{tmp}/calib.jsonl"], "{tmp}/calib.jsonl",
                                "has no 'text' or 'messages' field in its records (they have ['content', 'id'])"),
    "empty dataset": (["--dataset", "{tmp}/empty.txt"], "{tmp}/empty.txt", "is empty"),
    "csv without the column": (["--dataset", "{tmp}/calib.csv"], "{tmp}/calib.csv", "has no 'text' column"),
    "recovery dataset": (["--recover-steps", "2", "--recover-dataset", "{tmp}/data.txt"], "{tmp}/data.txt",
                         "not UTF-8 text"),
    "model without config.json": (["--model", "{tmp}/noconfig"], "{tmp}/noconfig", "not a model folder"),
    "model with a broken config.json": (["--model", "{tmp}/broken"], "{tmp}/broken/config.json",
                                        "is not a readable JSON file"),
    "model config without model_type": (["--model", "{tmp}/notype"], "{tmp}/notype/config.json", "no 'model_type'"),
    "model without weights": (["--model", "{tmp}/noweights"], "{tmp}/noweights", "no weights"),
    "not a GGUF file": (["--model", "{tmp}/fake.gguf"], "{tmp}/fake.gguf", "is not a GGUF file"),
    "output is the model": (["--output", "{model}", "--overwrite"], "{model}", "model's own source"),
    "output unwritable": (["--output", "/proc/slimgpt-no-such-output"], "/proc/slimgpt-no-such-output",
                          "is not writable"),
    "output is a file": (["--output", "{tmp}/empty.txt"], "{tmp}/empty.txt", "exists and is not a directory"),
}


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if anything loads a model or tokenizer."""
    import transformers

    from optimum_slimgpt import cli, streaming

    def loaded(*args, **kwargs):
        raise AssertionError(f"a model or tokenizer was loaded ({args[:1]})")

    monkeypatch.setattr(cli, "load_model", loaded)
    monkeypatch.setattr(streaming, "prune_pretrained", loaded)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", loaded)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_named_before_any_model_is_loaded(case, stories_dir, tmp_path, capsys, no_loading):
    if case == "output unwritable" and not Path("/proc").is_dir():
        pytest.skip("needs /proc (a folder nobody can create files in)")
    (tmp_path / "data.txt").write_bytes(b"PK\x03\x04\xac\xed\x05binary")  # no NUL: the decoding fails at 0xac
    (tmp_path / "calib.txt").write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    (tmp_path / "data.bin").write_bytes(bytes(range(256)))
    (tmp_path / "calib.jsonl").write_text("\n".join(json.dumps({"content": "x", "id": i}) for i in range(3)))
    (tmp_path / "calib.csv").write_text("content,id\nOnce upon a time,1\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "notes.txt").write_text("no model here")
    for name, text in (("broken", "{not json"), ("notype", '{"hidden_size": 8}'), ("noweights", '{"model_type": "llama"}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * (name != "noweights"))
    if (tmp_path / "noweights" / "model.safetensors").exists():
        (tmp_path / "noweights" / "model.safetensors").unlink()
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    extra, named, message = BAD_INPUTS[case]
    args = {"--model": str(stories_dir), "--output": str(tmp_path / "o"), "--dataset": str(tmp_path / "calib.txt")}
    flags = [a.format(tmp=tmp_path, model=stories_dir) for a in extra]
    rest = []
    for i, a in enumerate(flags):
        if a in args and i + 1 < len(flags):
            args[a] = flags[i + 1]
        elif i == 0 or flags[i - 1] not in args:
            rest.append(a)
    argv = ["prune", *[x for kv in args.items() for x in kv], "--samples", "4", "--seqlen", "32", *rest]
    rc, _, stderr = call_cli(capsys, *argv)
    assert rc == 2, (rc, stderr[-2000:])
    err_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1, stderr[-2000:]
    assert named.format(tmp=tmp_path, model=stories_dir) in err_lines[0] and message in err_lines[0], err_lines[0]
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()


def test_recover_checks_its_dataset_before_loading(stories_dir, tmp_path, capsys, no_loading):
    (tmp_path / "data.txt").write_bytes(b"\x00\x01binary")
    rc, _, stderr = call_cli(capsys, "recover", "--model", str(stories_dir), "--teacher", str(stories_dir),
                             "--dataset", str(tmp_path / "data.txt"), "--output", str(tmp_path / "o"))
    assert rc == 2 and f"error: dataset file {tmp_path / 'data.txt'} is binary" in stderr, stderr


def test_a_bad_format_is_refused_before_loading(stories_dir, tmp_path, capsys, no_loading):
    rc, _, stderr = call_cli(capsys, "prune", "--model", str(stories_dir), "--format", "onnx", "--output",
                             str(tmp_path / "o"))
    assert rc == 2 and "argument --format: invalid choice: 'onnx'" in stderr
    rc, _, stderr = call_cli(capsys, "prune", "--model", str(stories_dir), "--format", "padded", "--low-memory",
                             "--dataset", str(TINYSTORIES_TXT), "--output", str(tmp_path / "o"))
    assert rc == 2 and "error: --format padded" in stderr and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ the prune subprocess
# (last: the module's other tests run while the child started by _prune_run imports and prunes)
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
    # the CLI may batch the windows differently: float32 logits then differ by about sqrt(d)·u32 of their terms
    # (64x margin) and the mean NLL sums 4,096 terms in another order (γ_n of it); printed with 3 decimals
    rt = gamma(4096) * math.log(ref) + 64 * math.sqrt(model.config.hidden_size) * unit_roundoff()
    assert math.isfinite(printed) and abs(printed - ref) <= 5e-4 + rt * ref
    assert 1.0 < printed < 512  # better than uniform over the vocabulary
    saved = json.loads((out.parent / "eval.json").read_text())
    assert abs(saved["perplexity"] - ref) <= rt * ref


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
