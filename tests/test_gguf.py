"""GGUF export for llama.cpp: engine parity in llama-cpp-python, the tokenizer, quantisation, bad input.

Parity: a model pruned with per-layer sizes is written as an f32 GGUF (llama.cpp's ``deci`` architecture) and
run in llama-cpp-python; its logits on real prompts equal the transformers logits (same argmax at every
position, max |diff| below a measured bound) and 32 greedy tokens are identical. Measured max |logit diff| (f32
weights, f32 KV cache, CPU): SmolLM2-135M pruned 20 % (SlimGPT, the session's 8 x 256-token prune): 6.8e-5 (max
|logit| 36; 7.0e-5 with 16 x 256 calibration tokens); pruned 50 %
(magnitude, per-layer): 3.4e-3 (max |logit| 45); the tiny Qwen2-style model (q/k/v biases, GQA), the SlimLLM
model with output biases and the uniform Qwen3 (with ``small_tok``, SmolLM2's tokenizer cut to 1,024 ids): 8.9e-6 to
1.6e-5 (max |logit| 6.5 to 8.1). The tests allow 1e-2 (float32 summation order: llama.cpp's kernels add in another
order than torch's, over 30 layers).

The parity tests skip when llama-cpp-python is not installed (``pip install -e '.[test,gguf]'``, as CI does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import transformers

from helpers import WIKITEXT_DIR, have_shared

from optimum_slimgpt import PruningConfig, SlimGPTPruner, export_gguf, register_method, save_pruned_model
from optimum_slimgpt.methods import PruneResult, PruningMethod, unregister_method
from optimum_slimgpt.saving import ExportError

gguf = pytest.importorskip("gguf")

ATOL = 1e-2
PROMPTS = ["The capital of France is", "Once upon a time, there was a little girl who",
           "def fibonacci(n):\n    "]


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the [gguf] extra)")


def _wikitext_rows(split: str = "valid") -> list[str]:
    if not have_shared(WIKITEXT_DIR / f"wiki.{split}.tokens"):
        pytest.skip("../shared WikiText-2 missing")
    return (WIKITEXT_DIR / f"wiki.{split}.tokens").read_text(encoding="utf-8").splitlines()


def _open(path: Path, n_ctx: int = 256, **kw):
    _llama_cpp()
    from optimum_slimgpt.gguf_export import open_in_llama_cpp

    return open_in_llama_cpp(path, n_ctx=n_ctx, threads=torch.get_num_threads(), **kw)


@pytest.fixture()
def one_thread():
    """Tiny models: one thread in torch and llama.cpp (two threads spin-wait badly on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cpp_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(llm.scores[: len(ids)].copy()).double()


def _cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(tok)
        llm.eval([tok])
    return out


def _hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def check_parity(model, tok, path: Path, n_greedy: int = 32, atol: float = ATOL) -> float:
    """Logits and greedy tokens of the GGUF in llama.cpp against transformers; returns the max |diff|.
    (transformers runs first: llama.cpp's OpenMP threads would compete with torch's afterwards.)"""
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    refs = [_hf_logits(model, ids) for ids in prompts]
    ref_greedy = _hf_greedy(model, prompts[0], n_greedy) if n_greedy else None
    llm = _open(path)
    try:
        gots = [_cpp_logits(llm, ids) for ids in prompts]
        got_greedy = _cpp_greedy(llm, prompts[0], n_greedy) if n_greedy else None
    finally:
        llm.close()
    worst = 0.0
    for i, (ref, got) in enumerate(zip(refs, gots)):
        assert got.shape == ref.shape
        diff = (got - ref).abs().max().item()
        worst = max(worst, diff)
        assert diff < atol, f"prompt {i}: max |logit diff| {diff:.2e}"
        assert torch.equal(got.argmax(-1), ref.argmax(-1)), f"prompt {i}: argmax differs"
    assert got_greedy == ref_greedy
    print(f"{path.name}: max |logit diff| {worst:.2e} (max |logit| {max(r.abs().max().item() for r in refs):.1f})")
    return worst


def _int_arrays(path: Path) -> dict[str, list]:
    """The integer-array metadata of a GGUF file (``{key: values}``), read by the GGUF format (header, then typed
    key/value pairs); every other value is skipped. gguf-py's ``GGUFReader`` builds a numpy view for each element of
    the 49,152-token vocabulary and merge arrays (seconds for a SmolLM2 export); this walks them in milliseconds."""
    import mmap
    import struct

    fmt = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out: dict[str, list] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:4] == b"GGUF"
        version, _, n_kv = struct.unpack_from("<IQQ", m, 4)
        assert version in (2, 3), version
        pos = 24

        def skip_string(pos: int) -> int:
            return pos + 8 + struct.unpack_from("<Q", m, pos)[0]

        for _ in range(n_kv):
            end = skip_string(pos)
            key, pos = m[pos + 8:end].decode("utf-8"), end
            (vtype,) = struct.unpack_from("<I", m, pos)
            pos += 4
            if vtype == 8:  # string
                pos = skip_string(pos)
            elif vtype == 9:  # array: element type, count, elements
                etype, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if etype == 8:
                    for _ in range(count):
                        pos = skip_string(pos)
                else:
                    out[key] = list(struct.unpack_from(f"<{count}{fmt[etype]}", m, pos))
                    pos += count * struct.calcsize(fmt[etype])
            else:
                pos += struct.calcsize(fmt[vtype])
    return out


def _sizes(model) -> set:
    from optimum_slimgpt.saving import ModelView

    return {tuple(s.values()) for s in ModelView.of(model).sizes}


# ------------------------------------------------------------------------------------------ SmolLM2
@dataclass
class _MagnitudeConfig(PruningConfig):
    """Keep the heads (whole KV groups first) and channels with the largest output-projection column norms: no
    statistics, so no calibration pass, only the slicing (the OBS solve of 30 SmolLM2 blocks takes minutes on
    2 cores, and parity is about the exported shapes and weights, not about which heads were kept)."""

    method_name = "gguf_test_magnitude"


class _MagnitudeMethod(PruningMethod):
    def observers(self, part, config):
        return {}

    def prune_attention(self, task):
        kv, m = task.options[0]
        per_kv = task.num_heads // task.num_kv_heads
        norms = task.W.reshape(task.W.shape[0], task.num_heads, task.head_dim).norm(dim=(0, 2))
        groups = norms.reshape(task.num_kv_heads, per_kv)
        kept_kv = sorted(groups.sum(1).topk(kv).indices.tolist())
        kept = [g * per_kv + int(j) for g in kept_kv for j in sorted(groups[g].topk(m).indices.tolist())]
        return PruneResult(kept, task.W, kept_kv=kept_kv, option=(kv, m))

    def prune_ffn(self, task):
        kept = sorted(task.W.norm(dim=0).topk(task.W.shape[1] - task.num_remove).indices.tolist())
        return PruneResult(kept, task.W)


@pytest.fixture(scope="module")
def smollm2_pruned50(smollm2):
    model, tok = smollm2
    register_method(_MagnitudeConfig)(_MagnitudeMethod)
    try:
        cfg = _MagnitudeConfig(pruning_ratio=0.5, dataset=_wikitext_rows(), num_samples=2, seqlen=32, batch_size=2)
        yield SlimGPTPruner(cfg).prune_model(copy.deepcopy(model), tok)
    finally:
        unregister_method(_MagnitudeConfig)


def test_smollm2_pruned_20_percent_runs_in_llama_cpp(smollm2_pruned20, tmp_path):
    _llama_cpp()
    model, tok, _ = smollm2_pruned20
    assert len(_sizes(model)) > 1  # per-layer sizes
    res = export_gguf(model, tmp_path / "p20.gguf", tokenizer=tok)
    assert res.arch == "deci" and res.path.is_file()
    arrays = _int_arrays(res.path)
    assert arrays["deci.attention.head_count"] == [s["num_attention_heads"] for s in res.layers]
    assert arrays["deci.feed_forward_length"] == [s["intermediate_size"] for s in res.layers]
    assert check_parity(model, tok, res.path) < ATOL


def test_smollm2_pruned_50_percent_runs_in_llama_cpp(smollm2_pruned50, smollm2, tmp_path):
    _llama_cpp()
    model, tok = smollm2_pruned50, smollm2[1]
    assert len(_sizes(model)) > 1
    res = export_gguf(model, tmp_path / "p50.gguf", tokenizer=tok)
    assert res.arch == "deci"
    assert check_parity(model, tok, res.path) < ATOL


# ------------------------------------------------------------------------------------------ tiny models
#: the tiny models' vocabulary: SmolLM2's first 1,024 ids (``small_tok``)
VOCAB = 1024


def _tiny(family: str, **kw):
    """A tiny random model with the vocabulary of ``small_tok`` (SmolLM2's tokenizer cut to ``VOCAB`` ids)."""
    torch.manual_seed(0)
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=256, tie_word_embeddings=False,
                initializer_range=0.2, bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default",
                                                                                       "rope_theta": 10000.0})
    base.update(kw)
    base = {k: v for k, v in base.items() if v is not None}
    cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
           "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}[family]
    model = cls[1](cls[0](**base)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def _calibration(vocab: int, n: int = 8, seq: int = 32) -> torch.Tensor:
    return torch.randint(3, vocab, (n, seq), generator=torch.Generator().manual_seed(0))


def _prune(model, method: str = "slimgpt", ratio: float = 0.4, **kw):
    cfg = PruningConfig.for_method(method, pruning_ratio=ratio, dataset=None, num_samples=8, seqlen=32,
                                   batch_size=8, **kw)
    SlimGPTPruner(cfg).prune_model(model, calibration=_calibration(model.config.vocab_size))
    return model


@pytest.fixture(scope="module")
def smol_tok(smollm2):
    """SmolLM2's tokenizer (the session's SmolLM2 fixture, loaded once for the whole suite)."""
    return smollm2[1]


@pytest.fixture(scope="module")
def small_tok(smol_tok, tmp_path_factory):
    """SmolLM2's tokenizer cut to its first ``VOCAB`` ids (its 17 special tokens, the 256 byte-level symbols and the
    first merges, every merge kept whose parts and result are kept): the same kind of tokenizer (byte-level BPE,
    SmolLM2's pre-tokenizer, special tokens and chat template) for the tiny models, whose GGUF files then carry 1,024
    tokens instead of 49,152 (written, read back by ``gguf.GGUFReader`` and loaded by llama.cpp in a fraction of
    the time). The real 49,152-token tokenizer goes into the SmolLM2 exports and the tokenizer test."""
    import json

    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("small_tok")
    smol_tok.save_pretrained(d)
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < VOCAB}
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if all(p in vocab for p in m) and "".join(m) in vocab]
    assert all(a["id"] < VOCAB for a in tj["added_tokens"])
    (d / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(d)
    assert len(tok) == VOCAB, len(tok)
    assert tok.decode(tok(PROMPTS[2], add_special_tokens=False)["input_ids"]) == PROMPTS[2]
    return tok


@lru_cache(maxsize=None)
def _pruned_tiny_llama():
    return _prune(_tiny("llama", num_hidden_layers=2))


def pruned_tiny_llama():
    """A private copy of a 2-layer tiny Llama pruned 40 % with per-layer sizes."""
    return copy.deepcopy(_pruned_tiny_llama())


def test_tiny_qwen2_with_qkv_biases_and_gqa_runs_in_llama_cpp(one_thread, small_tok, tmp_path):
    _llama_cpp()
    model = _prune(_tiny("qwen2"))
    blk = model.model.layers[0].self_attn
    assert blk.q_proj.bias is not None and blk.k_proj.bias is not None  # q/k/v biases (permuted with their rows)
    assert len(_sizes(model)) > 1
    assert all(h > kv for h, kv, _ in _sizes(model))  # GQA
    res = export_gguf(model, tmp_path / "qwen2.gguf", tokenizer=small_tok)
    assert res.arch == "deci"
    check_parity(model, small_tok, res.path)


def test_slimllm_output_biases_run_in_llama_cpp(one_thread, small_tok, tmp_path):
    _llama_cpp()
    model = _prune(_tiny("llama"), method="slimllm")
    o = model.model.layers[1].self_attn.o_proj.bias
    d = model.model.layers[1].mlp.down_proj.bias
    assert o is not None and d is not None and o.abs().max() > 0 and d.abs().max() > 0  # real output biases
    res = export_gguf(model, tmp_path / "slimllm.gguf", tokenizer=small_tok)
    names = {t.name for t in gguf.GGUFReader(res.path).tensors}
    assert {"blk.1.attn_output.bias", "blk.1.ffn_down.bias"} <= names
    check_parity(model, small_tok, res.path)


def test_uniform_qwen3_goes_out_as_plain_qwen3(one_thread, small_tok, tmp_path):
    _llama_cpp()
    model = _prune(_tiny("qwen3"), schedule="uniform")
    assert len(_sizes(model)) == 1
    res = export_gguf(model, tmp_path / "qwen3.gguf", tokenizer=small_tok)
    assert res.arch == "qwen3"
    check_parity(model, small_tok, res.path, n_greedy=0)


# ------------------------------------------------------------------------------------------ tokenizer
def test_llama_cpp_tokenizes_wikitext2_like_hf(one_thread, smol_tok, tmp_path):
    """The first 4k tokens of WikiText-2 test: llama.cpp's tokenizer (from the exported file) gives the same ids."""
    _llama_cpp()
    from optimum_slimgpt.evaluation import wikitext2_test_text

    if not have_shared(WIKITEXT_DIR):
        pytest.skip("../shared WikiText-2 missing")
    text = wikitext2_test_text(WIKITEXT_DIR)[:24_000]
    ref = smol_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ref) >= 4096
    model = _prune(_tiny("llama", num_hidden_layers=2, vocab_size=len(smol_tok)))  # the real 49,152-token vocabulary
    res = export_gguf(model, tmp_path / "tok.gguf", tokenizer=smol_tok)
    llm = _open(res.path, vocab_only=True)
    try:
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert got[:4096] == ref[:4096]
        assert got == ref
        assert llm.detokenize(got[:4096]).decode("utf-8") == smol_tok.decode(ref[:4096])
        meta = dict(llm.metadata)  # the file's (non-array) metadata as llama.cpp read it
    finally:
        llm.close()
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert "im_start" in meta["tokenizer.chat_template"]


# ------------------------------------------------------------------------------------------ quantisation
def test_quantised_exports_are_smaller_and_close(one_thread, small_tok, tmp_path):
    """llama.cpp's own quantiser: Q8_0 and Q4_K_M files, smaller, without temporaries, and their logits close to
    the transformers ones (Q8_0 closer than Q4_K_M; measured relative L2 error on this random model: Q8_0 0.034,
    Q4_K_M 0.271; 0.029 and 0.235 with SmolLM2's whole 49,152-token vocabulary, before the tiny models got
    ``small_tok``'s 1,024). The weights are drawn with std 0.05: with _tiny's 0.2 every layer amplifies the 4-bit
    noise (Q4_K_M 0.49 with whole FFN channels, whose widths leave ffn_down in F16, and 0.52 with the default widths,
    multiples of 128 here, which quantise every ffn_down; measured with the 49,152-token vocabulary), too close to
    any bound that still means "close"."""
    _llama_cpp()  # the quantiser is llama.cpp's own
    model = _prune(_tiny("llama", hidden_size=256, intermediate_size=512, head_dim=32, initializer_range=0.05))
    f32 = export_gguf(model, tmp_path / "f32.gguf", tokenizer=small_tok)
    ids = small_tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    ref = _hf_logits(model, ids)
    rel = {}
    for qtype in ("Q8_0", "Q4_K_M"):
        q = export_gguf(model, tmp_path / f"{qtype}.gguf", tokenizer=small_tok, outtype="f16", quantize=qtype)
        assert q.quantize == qtype and q.file_bytes < f32.file_bytes / 2.5
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q.path).tensors}
        assert types["blk.0.attn_q.weight"] == ("Q8_0" if qtype == "Q8_0" else "Q4_K")
        llm = _open(q.path)
        try:
            got = _cpp_logits(llm, ids)
        finally:
            llm.close()
        rel[qtype] = ((got - ref).norm() / ref.norm()).item()
    print(f"relative L2 error of the quantised logits: {rel}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Q4_K_M.gguf", "Q8_0.gguf", "f32.gguf"]  # no temporaries
    assert rel["Q8_0"] < 0.1 and rel["Q8_0"] < rel["Q4_K_M"] < 0.5, rel


K_QUANTS = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def test_default_widths_quantise_without_f16_fallback(one_thread, small_tok, tmp_path):
    """Prune, then quantise: a tiny Llama with hidden 256 and FFN 1024 (= 4 x 256), pruned 40% with the defaults
    (channel_multiple="auto": 256 here), goes to Q4_K_M with every ffn_down in a K-quant and no tensor left in F16
    by llama.cpp's fallback. The same model pruned with whole channels (channel_multiple=1) gets widths that are
    not multiples of 32, and llama.cpp keeps those ffn_down in F16: the default is what makes the difference."""
    _llama_cpp()
    kw = dict(hidden_size=256, intermediate_size=1024, head_dim=64, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=2, tie_word_embeddings=True)
    types, widths = {}, {}
    for name, extra in (("auto", {}), ("whole", dict(channel_multiple=1))):
        model = _prune(_tiny("llama", **kw), **extra)
        widths[name] = [layer.mlp.down_proj.in_features for layer in model.model.layers]
        q = export_gguf(model, tmp_path / f"{name}.gguf", tokenizer=small_tok, outtype="f16", quantize="Q4_K_M")
        types[name] = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q.path).tensors if t.n_elements > t.shape[0]}
    assert all(w % 256 == 0 for w in widths["auto"]) and min(widths["auto"]) < 1024, widths
    assert not [n for n, t in types["auto"].items() if t in ("F16", "BF16", "F32")], types["auto"]
    downs = {n: t for n, t in types["auto"].items() if "ffn_down" in n}
    assert len(downs) == 2 and set(downs.values()) <= K_QUANTS, downs
    # whole channels: some width is not a multiple of 32, so its ffn_down fell back to F16
    odd = [i for i, w in enumerate(widths["whole"]) if w % 32]
    assert odd, widths
    assert all(types["whole"][f"blk.{i}.ffn_down.weight"] == "F16" for i in odd), types["whole"]


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_quant_type_is_refused_before_any_work(one_thread, small_tok, tmp_path):
    model = pruned_tiny_llama()
    with pytest.raises(ValueError, match="unknown quantisation type 'Q4_Z'.*Q4_K_M"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer=small_tok, quantize="Q4_Z")
    with pytest.raises(ValueError, match="outtype"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer=small_tok, outtype="q4")
    assert list(tmp_path.iterdir()) == []


def test_unpruned_model_is_refused(one_thread, small_tok, tmp_path):
    with pytest.raises(ValueError, match="no pruning record"):
        export_gguf(_tiny("llama", num_hidden_layers=2), tmp_path / "m.gguf", tokenizer=small_tok)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family,match", [("qwen3", "q_norm"), ("phi3", "Phi-3")])
def test_unsupported_family_names_what_is_supported(one_thread, small_tok, tmp_path, family, match):
    kw = {"head_dim": 8} if family == "qwen3" else {}
    model = _tiny(family, **kw) if family != "phi3" else _tiny("phi3", head_dim=None, num_key_value_heads=8, pad_token_id=0)
    _prune(model)
    with pytest.raises(ExportError, match=f"(?s){match}.*|supports per-layer Llama, Mistral and Qwen2") as e:
        export_gguf(model, tmp_path / "m.gguf", tokenizer=small_tok)
    assert "per-layer Llama, Mistral and Qwen2" in str(e.value) and match in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept(one_thread, small_tok, tmp_path):
    model = pruned_tiny_llama()
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="exists"):
        export_gguf(model, out, tokenizer=small_tok)
    assert out.read_bytes() == b"old"
    res = export_gguf(model, out, tokenizer=small_tok, overwrite=True)
    assert res.file_bytes > 1000 and out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_failure_mid_write_leaves_no_partial_file(one_thread, small_tok, tmp_path, monkeypatch):
    from optimum_slimgpt import gguf_export

    model = pruned_tiny_llama()
    real, calls = gguf_export._encode, []

    def failing(t, outtype, name):
        calls.append(name)
        if len(calls) == 6:
            raise RuntimeError("disk on fire")
        return real(t, outtype, name)

    monkeypatch.setattr(gguf_export, "_encode", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer=small_tok)
    assert list(tmp_path.iterdir()) == []


def test_save_pruned_model_with_gguf_format_writes_model_gguf(one_thread, small_tok, tmp_path):
    model = pruned_tiny_llama()
    res = save_pruned_model(model, tmp_path / "ckpt", tokenizer=small_tok, export_format="gguf")
    assert res.format == "gguf" and (res.path / "model.gguf").is_file()
    assert gguf.GGUFReader(res.path / "model.gguf").fields["general.architecture"].contents() == "deci"


# ------------------------------------------------------------------------------------------ CLI
def _cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    from optimum_slimgpt.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def test_cli_export(one_thread, small_tok, tmp_path, capsys):
    model = pruned_tiny_llama()
    save_pruned_model(model, tmp_path / "ckpt", tokenizer=small_tok)
    out = tmp_path / "m.gguf"
    assert _cli("export", "--model", str(tmp_path / "ckpt"), "--format", "gguf", "--outtype", "f16",
                "--output", str(out))[0] == 0
    assert "llama.cpp 'deci'" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 1  # MOSTLY_F16
    before = out.read_bytes()
    # bad input: one error line, exit 2, nothing written
    rc, err = _cli("export", "--model", str(tmp_path / "ckpt"), "--output", str(out))
    assert rc == 2 and err.startswith("error: ") and "exists" in err and err.count("\n") == 1
    assert out.read_bytes() == before
    rc, err = _cli("export", "--model", str(tmp_path / "ckpt"), "--quantize", "Q9", "--output", str(tmp_path / "x.gguf"))
    assert rc == 2 and "unknown quantisation type" in err
    dense = tmp_path / "dense"
    _tiny("llama", num_hidden_layers=2).save_pretrained(dense)
    rc, err = _cli("export", "--model", str(dense), "--output", str(tmp_path / "x.gguf"))
    assert rc == 2 and "not a pruned checkpoint" in err
    rc, err = _cli("export", "--model", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.gguf"))
    assert rc == 2 and "no config.json" in err
    assert not (tmp_path / "x.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
