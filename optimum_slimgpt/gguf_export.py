"""GGUF export for llama.cpp (and ollama, LM Studio and the others built on it), per-layer sizes included.

llama.cpp's plain ``llama`` architecture reads one head count and one FFN width for all layers, so a model
pruned to different sizes per layer loads there and produces garbage. Its ``deci`` architecture (made for
Nemotron-NAS, ``src/models/deci.cpp``) builds every layer from the per-layer arrays ``attention.head_count``,
``attention.head_count_kv`` and ``feed_forward_length``, and takes optional q/k/v, ``attn_output`` and FFN
biases. :class:`GGUFExporter` writes

* a per-layer pruned **Llama, Mistral or Qwen2** (SlimLLM's output biases included) as ``deci``;
* a **uniform** one (every layer the same sizes, no extra output biases) as its plain architecture
  (``llama`` for Llama and Mistral, ``qwen2``, ``qwen3``), which every llama.cpp build loads;

with the rope and norm parameters, q/k rows in the interleaved order of llama.cpp's "normal" rope (the
permutation llama.cpp's own converter applies) and the tokenizer (vocabulary, merges, pre-tokenizer name,
special tokens, chat template), so that the one ``.gguf`` file is all llama.cpp needs. The file is written with
the ``gguf`` package; quantisation (``Q4_K_M``, ``Q8_0``...) is llama.cpp's own ``llama_model_quantize`` through
llama-cpp-python. Both are the ``[gguf]`` extra.

::

    from optimum_slimgpt import export_gguf
    export_gguf(pruned_model, "model.gguf", tokenizer=tok, outtype="f16", quantize="Q4_K_M")

Every file is written under a temporary name beside the target and renamed into place: a failure or an
interrupt leaves no partial ``.gguf`` behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .config import ConfigError, _check, _is_int
from .families import get_adapter
from .modeling import base_config_dict
from .saving import (ExportError, ExportPlan, Exporter, ModelView, _HOST, _terminate_as_interrupt,
                     register_exporter)

logger = logging.getLogger(__name__)

__all__ = ["GGUFExporter", "GGUFExportOptions", "GGUFResult", "GGUF_OUTTYPES", "QUANT_TYPES", "export_gguf",
           "open_in_llama_cpp"]

#: what :func:`export_gguf` writes itself (``outtype``); 1-D tensors (norms, biases) stay float32
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
#: ``arch``: ``auto`` picks the plain architecture for a uniform model without extra biases, else ``deci``
GGUF_ARCHS = ("auto", "deci", "plain")
#: the families ``deci`` can hold with per-layer sizes, and those written as their plain architecture when uniform
DECI_FAMILIES = ("llama", "mistral", "qwen2")
PLAIN_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
#: plain architectures whose llama.cpp rope is the "normal" (interleaved) one: their q/k rows are permuted
_NORMAL_ROPE = ("llama", "deci")
_WHY_NOT = {
    "qwen3": "its per-head q/k norms (q_norm/k_norm) have no place in 'deci'",
    "gemma": "Gemma's (1 + w) norms, scaled embeddings and GeGLU FFN are not what 'deci' computes",
    "gemma2": "Gemma's (1 + w) norms, scaled embeddings, soft-capping and GeGLU FFN are not what 'deci' computes",
    "gemma3": "Gemma's (1 + w) norms, q/k norms, scaled embeddings and GeGLU FFN are not what 'deci' computes",
    "gemma3_text": "Gemma's (1 + w) norms, q/k norms, scaled embeddings and GeGLU FFN are not what 'deci' computes",
    "phi3": "Phi-3's fused qkv_proj/gate_up_proj and partial rope are not exported",
    "opt": "OPT's LayerNorms, learned positions and ReLU FFN are not what 'deci' computes",
}
_SUPPORTED = ("per-layer Llama, Mistral and Qwen2 (llama.cpp 'deci'); uniform Llama, Mistral, Qwen2 and Qwen3 "
              "(their plain llama.cpp architecture)")


def _quant_types() -> dict[str, int]:
    import gguf

    skip = {"GUESSED"}
    return {n.removeprefix("MOSTLY_"): int(v) for n, v in gguf.LlamaFileType.__members__.items()
            if n.startswith("MOSTLY_") and n.removeprefix("MOSTLY_") not in skip}


def __getattr__(name: str):  # QUANT_TYPES needs the gguf package, imported on first use
    if name == "QUANT_TYPES":
        return _quant_types()
    raise AttributeError(name)


def check_quant_type(quantize: Optional[str]) -> Optional[str]:
    """The canonical (upper-case) name of a llama.cpp quantisation type, or ``ValueError`` naming the known ones."""
    if quantize is None:
        return None
    types = _quant_types()
    name = str(quantize).upper()
    if name not in types:
        raise ValueError(f"unknown quantisation type {quantize!r}; llama.cpp offers: {', '.join(types)}")
    return name


@dataclass
class GGUFExportOptions:
    """The options of :func:`export_gguf`, checked in one place (``optimum-slimgpt export`` builds its flags from
    these fields).

    Args:
        outtype: ``f32``, ``f16``, ``bf16`` or ``q8_0``: the type of the 2-D weights written (norms and biases stay
            float32); the input of ``quantize``.
        quantize: A llama.cpp quantisation type (``Q4_K_M``, ``Q8_0``, ``Q5_K_M``...; see :data:`QUANT_TYPES`),
            applied by llama.cpp's ``llama_model_quantize`` to the ``outtype`` file (needs llama-cpp-python);
            ``None``: none. Stored in its canonical upper-case spelling.
        arch: ``auto`` (the plain architecture for a uniform model without extra biases, else ``deci``), ``deci``
            or ``plain``.
        threads: Threads for the quantiser (``None``: llama.cpp's choice).
        tokenizer_pre: llama.cpp's name of the BPE pre-tokenizer (``None``: recognised from the tokenizer).
    """

    outtype: str = field(default="f32", metadata={
        "help": "type of the 2-D weights written (norms and biases stay f32); the input of --quantize",
        "choices": GGUF_OUTTYPES})
    quantize: Optional[str] = field(default=None, metadata={
        "help": "a llama.cpp quantisation type applied after writing, e.g. Q4_K_M, Q5_K_M, Q8_0 (needs "
                "llama-cpp-python: pip install 'optimum-slimgpt[gguf]')"})
    arch: str = field(default="auto", metadata={
        "help": "llama.cpp architecture: auto = the plain one (llama, qwen2, qwen3) for a uniform model without "
                "extra biases, else deci", "choices": GGUF_ARCHS})
    threads: Optional[int] = field(default=None, metadata={"help": "threads for the quantiser (None: llama.cpp's)"})
    tokenizer_pre: Optional[str] = field(default=None, metadata={
        "help": "llama.cpp's name of the BPE pre-tokenizer (None: recognised from the tokenizer)"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~optimum_slimgpt.ConfigError` (naming the field) for any bad value."""
        _check(self.outtype in GGUF_OUTTYPES, "outtype", f"one of {GGUF_OUTTYPES}", self.outtype)
        _check(self.arch in GGUF_ARCHS, "arch", "'auto', 'deci' or 'plain'", self.arch)
        _check(self.threads is None or (_is_int(self.threads) and self.threads > 0), "threads",
               "None or a positive int", self.threads)
        _check(self.tokenizer_pre is None or isinstance(self.tokenizer_pre, str), "tokenizer_pre", "None or a name",
               self.tokenizer_pre)
        try:
            self.quantize = check_quant_type(self.quantize)
        except ValueError as e:
            raise ConfigError("quantize", str(e)) from e


# ============================================================================================ plan
@dataclass
class GGUFPlan(ExportPlan):
    """An :class:`ExportPlan` for GGUF: which llama.cpp architecture the file uses."""

    arch: str = "deci"
    family: str = ""


@dataclass
class GGUFResult:
    """What :func:`export_gguf` wrote.

    Attributes:
        path: The ``.gguf`` file.
        arch: The llama.cpp architecture in it (``deci``, ``llama``, ``qwen2``, ``qwen3``).
        outtype: The type the weights were written in (before quantisation).
        quantize: The llama.cpp quantisation type applied, or ``None``.
        layers: Per-layer sizes (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``).
        file_bytes: Size of the file.
        reason: Why this architecture.
    """

    path: Path
    arch: str
    outtype: str
    quantize: Optional[str]
    layers: list[dict] = field(default_factory=list)
    file_bytes: int = 0
    reason: str = ""


@dataclass
class _Source:
    """What the writer reads of a model (a :class:`ModelView`, or an unpruned model for reference exports)."""

    model: nn.Module
    blocks: nn.ModuleList
    family: str
    sizes: list[dict]
    head_dim: int
    extra_bias: bool

    @classmethod
    def of(cls, model: nn.Module, require_record: bool = True) -> "_Source":
        from .modeling import PruningRecord

        if require_record or PruningRecord.of(model.config) is not None:
            v = ModelView.of(model)  # refuses unpruned, half-pruned and different-head_dim models
            return cls(model, v.blocks, v.record.base_model_type, v.sizes, v.head_dim, v.extra_bias)
        adapter = get_adapter(model)
        blocks = adapter.get_blocks(model)
        lays = [adapter.head_layout(b, model.config) for b in blocks]
        if len({lay.head_dim for lay in lays}) != 1:
            raise ExportError(f"layers have different head_dim values {sorted({lay.head_dim for lay in lays})}")
        sizes = [adapter.block_sizes(b, model.config) for b in blocks]
        return cls(model, blocks, model.config.model_type, sizes, lays[0].head_dim,
                   bool(getattr(model.config, "pruned_out_bias", False)))

    @property
    def uniform(self) -> bool:
        return all(s == self.sizes[0] for s in self.sizes)

    @property
    def config(self) -> dict:
        return base_config_dict(self.model.config)


def _plan(src: _Source, arch: str = "auto") -> GGUFPlan:
    if arch not in ("auto", "deci", "plain"):
        raise ValueError(f"arch must be 'auto', 'deci' or 'plain', got {arch!r}")
    fam = src.family
    sizes = [dict(s) for s in src.sizes]
    cfg = src.config
    if fam not in DECI_FAMILIES and fam not in PLAIN_ARCH:
        why = _WHY_NOT.get(fam, f"model_type {fam!r} has no GGUF layout here")
        raise ExportError(f"GGUF export supports {_SUPPORTED}; not {fam!r}: {why}", reason=why)
    if cfg.get("hidden_act", "silu") != "silu":
        why = f"hidden_act={cfg.get('hidden_act')!r} (llama.cpp's 'deci' and 'llama' FFN is SiLU-gated)"
        raise ExportError(f"GGUF export cannot write this model: {why}", reason=why)
    plain_ok = src.uniform and not src.extra_bias and fam in PLAIN_ARCH
    if arch == "plain" or (arch == "auto" and fam not in DECI_FAMILIES):
        if not plain_ok:
            why = ("layers have different sizes" if not src.uniform else
                   "the model has extra output biases (o_proj/down_proj)" if src.extra_bias else f"{fam!r} has no plain GGUF architecture here")
            if fam not in DECI_FAMILIES:
                why = f"{why}, and {_WHY_NOT.get(fam, fam)}"
            raise ExportError(f"GGUF export as the plain architecture needs a uniform model without extra output biases: "
                              f"{why}; GGUF export supports {_SUPPORTED}", reason=why)
        return GGUFPlan("gguf", f"uniform {fam}: the plain llama.cpp '{PLAIN_ARCH[fam]}' architecture", sizes,
                        arch=PLAIN_ARCH[fam], family=fam)
    if fam not in DECI_FAMILIES:  # arch == "deci"
        why = _WHY_NOT.get(fam, fam)
        raise ExportError(f"llama.cpp's 'deci' cannot hold {fam!r}: {why}; GGUF export supports {_SUPPORTED}", reason=why)
    if arch == "auto" and plain_ok:
        return GGUFPlan("gguf", f"uniform {fam}: the plain llama.cpp '{PLAIN_ARCH[fam]}' architecture", sizes,
                        arch=PLAIN_ARCH[fam], family=fam)
    for i, (s, b) in enumerate(zip(src.sizes, src.blocks)):
        o = b.self_attn.o_proj
        if s["num_attention_heads"] == 0 and o.bias is not None and not o.bias.is_meta and \
                bool(o.bias.detach().abs().max() > 0):
            why = f"layer {i} has no attention heads left but an o_proj bias, which 'deci' drops with the attention"
            raise ExportError(f"GGUF export cannot write this model: {why}", reason=why)
    why = "per-layer sizes: llama.cpp's 'deci' architecture (per-layer head, KV-head and FFN arrays)"
    if src.uniform:
        why = "requested 'deci'" if arch == "deci" else "extra output biases: llama.cpp's 'deci' architecture (attn_output/ffn_down biases)"
    return GGUFPlan("gguf", why, sizes, arch="deci", family=fam)


# ============================================================================================ tensors
def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from HF's rotate-half order to the interleaved pairs of llama.cpp's normal rope (its converter's
    ``LlamaModel.permute``); works for weights ``[n_head * head_dim, in]`` and biases ``[n_head * head_dim]``."""
    if n_head == 0:
        return w
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(src: _Source, plan: GGUFPlan):
    """``(gguf name, float32 tensor)`` for every tensor of the file, in llama.cpp's names."""
    import gguf

    T, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES

    def name(t, suffix="weight", bid=None):
        return f"{names[t].format(bid=bid)}.{suffix}"

    def f32(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous()

    model = src.model
    base = model.model if hasattr(model, "model") else model
    embed = model.get_input_embeddings().weight
    yield name(T.TOKEN_EMBD), f32(embed)
    yield name(T.OUTPUT_NORM), f32(base.norm.weight)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != embed.data_ptr():
        yield name(T.OUTPUT), f32(head.weight)
    permute = plan.arch in _NORMAL_ROPE
    hidden = embed.shape[1]
    for i, (b, s) in enumerate(zip(src.blocks, src.sizes)):
        H, K = s["num_attention_heads"], s["num_key_value_heads"]
        attn, mlp = b.self_attn, b.mlp
        if H > 0:
            yield name(T.ATTN_NORM, bid=i), f32(b.input_layernorm.weight)
            for lin, t, n in ((attn.q_proj, T.ATTN_Q, H), (attn.k_proj, T.ATTN_K, K), (attn.v_proj, T.ATTN_V, None)):
                for suffix in ("weight", "bias"):
                    p = getattr(lin, suffix)
                    if p is not None:
                        yield name(t, suffix, i), _permute(f32(p), n) if (permute and n) else f32(p)
            yield name(T.ATTN_OUT, bid=i), f32(attn.o_proj.weight)
            if getattr(attn, "q_norm", None) is not None:  # qwen3 (plain architecture only)
                yield name(T.ATTN_Q_NORM, bid=i), f32(attn.q_norm.weight)
                yield name(T.ATTN_K_NORM, bid=i), f32(attn.k_norm.weight)
        if attn.o_proj.bias is not None and H > 0:
            yield name(T.ATTN_OUT, "bias", i), f32(attn.o_proj.bias)
        yield name(T.FFN_NORM, bid=i), f32(b.post_attention_layernorm.weight)
        if s["intermediate_size"] == 0:
            # deci skips a layer with feed_forward_length 0 *including its attention output* (deci.cpp
            # `continue`s before `inpL = cur`): one zero channel instead computes exactly "no FFN"
            yield name(T.FFN_GATE, bid=i), torch.zeros(1, hidden)
            yield name(T.FFN_UP, bid=i), torch.zeros(1, hidden)
            yield name(T.FFN_DOWN, bid=i), torch.zeros(hidden, 1)
            if mlp.down_proj.bias is not None:
                yield name(T.FFN_DOWN, "bias", i), f32(mlp.down_proj.bias)
            continue
        for lin, t in ((mlp.gate_proj, T.FFN_GATE), (mlp.up_proj, T.FFN_UP), (mlp.down_proj, T.FFN_DOWN)):
            yield name(t, bid=i), f32(lin.weight)
            if lin.bias is not None:
                yield name(t, "bias", i), f32(lin.bias)


def _encode(t: torch.Tensor, outtype: str, tname: str):
    """``(numpy data, raw GGML type or None)`` of one tensor in ``outtype`` (1-D tensors stay float32; a q8_0
    tensor whose rows are not a multiple of the 32-value block falls back to f16, as llama.cpp's converter does)."""
    import gguf
    import numpy as np

    a = t.numpy()
    if a.ndim <= 1 or outtype == "f32":
        return a.astype(np.float32), None
    Q = gguf.GGMLQuantizationType
    if outtype == "f16":
        return a.astype(np.float16), None
    qtype = {"bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    if qtype == Q.Q8_0 and a.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        logger.info("%s: rows of %d values are not a multiple of 32; written as f16", tname, a.shape[-1])
        return a.astype(np.float16), None
    return gguf.quants.quantize(a, qtype), qtype


# ============================================================================================ tokenizer
# the text llama.cpp's converter encodes to recognise a BPE pre-tokenizer (``get_vocab_base_pre``), and the
# sha256 of ``str(tokenizer.encode(text))`` of the pre-tokenizers of the families exported here
_CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 '
           '3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на '
           'Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll '
           'make it, \'D you like some tea? We\'Ve a\'lL')
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}


def _looks_special(tok: str) -> bool:
    return (tok.startswith("<|") and tok.endswith("|>")) or (tok.startswith("<｜") and tok.endswith("｜>"))


def _add_tokenizer(w, tokenizer, vocab_size: int, tokenizer_pre: Optional[str]) -> str:
    """Write the tokenizer into the GGUF writer ``w``; returns llama.cpp's tokenizer model name."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ExportError(f"GGUF export needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}")
    with tempfile.TemporaryDirectory(prefix="slimgpt-gguf-tok-") as d:
        tokenizer.save_pretrained(d)
        tj = json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))
        kind = tj.get("model", {}).get("type")
        ids = tokenizer("a b", add_special_tokens=True)["input_ids"]
        add_bos = tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
        add_eos = tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id
        if kind == "BPE" and not tj["model"].get("byte_fallback"):
            model_name = "gpt2"
            vocab = tokenizer.get_vocab()
            if max(vocab.values()) >= vocab_size:
                raise ExportError(f"the tokenizer has ids up to {max(vocab.values())} but the model's vocab_size is {vocab_size}")
            reverse = {i: t for t, i in vocab.items()}
            added = tokenizer.get_added_vocab()
            decoder = tokenizer.added_tokens_decoder
            tokens, types = [], []
            for i in range(vocab_size):
                if i not in reverse:
                    tokens.append(f"[PAD{i}]")
                    types.append(gguf.TokenType.UNUSED)
                    continue
                tok = reverse[i]
                if tok in added:
                    if i in decoder and not decoder[i].normalized:
                        tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
                    special = (i in decoder and decoder[i].special) or _looks_special(tok)
                    types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
                else:
                    types.append(gguf.TokenType.NORMAL)
                tokens.append(tok)
            if tokenizer_pre is None:
                chkhsh = sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
                tokenizer_pre = _PRE_TOKENIZERS.get(chkhsh)
                if tokenizer_pre is None:
                    logger.warning("the BPE pre-tokenizer of this tokenizer (hash %s) is not one this exporter knows; "
                                   "writing 'default' (llama.cpp may split text differently: pass tokenizer_pre=... "
                                   "with llama.cpp's name for it)", chkhsh)
                    tokenizer_pre = "default"
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(tokenizer_pre)
            w.add_token_list(tokens)
            w.add_token_types(types)
            special = gguf.SpecialVocab(d, load_merges=True, n_vocab=vocab_size)
        elif kind == "BPE":  # sentencepiece converted to BPE with byte fallback (Llama 2, Mistral v0.1)
            model_name = "llama"
            hf = gguf.LlamaHfVocab(Path(d))
            tokens, scores, types = [], [], []
            for text, score, ttype in hf.all_tokens():
                tokens.append(text)
                scores.append(score)
                types.append(ttype)
            for i in range(len(tokens), vocab_size):
                tokens.append(f"[PAD{i}]".encode())
                scores.append(-1000.0)
                types.append(gguf.TokenType.UNUSED)
            w.add_tokenizer_model("llama")
            w.add_tokenizer_pre(tokenizer_pre or "default")
            w.add_token_list(tokens)
            w.add_token_scores(scores)
            w.add_token_types(types)
            special = gguf.SpecialVocab(d, load_merges=False, n_vocab=vocab_size)
        else:
            raise ExportError(f"GGUF export writes BPE tokenizers (GPT-2 style byte-level, or sentencepiece with byte "
                              f"fallback); this tokenizer is {kind!r}")
        special.add_special_token = {"bos": add_bos, "eos": add_eos}
        special.add_to_gguf(w, quiet=True)
    return model_name


# ============================================================================================ metadata
def _rope(w, cfg: dict, head_dim: int):
    """Rope metadata; returns the ``rope_freqs`` tensor for llama3-style scaling (or ``None``)."""
    import gguf

    rp = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
    if "rope_type" not in rp and isinstance(next(iter(rp.values()), None), dict):
        raise ExportError("per-layer-type rope parameters are not supported by GGUF export")
    kind = rp.get("rope_type", rp.get("type", "default")) or "default"
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if float(rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ExportError("partial rope (partial_rotary_factor < 1) is not supported by GGUF export")
    w.add_rope_freq_base(theta)
    if kind == "default":
        return None
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rp["factor"]))
        return None
    if kind == "llama3":  # the per-frequency factors, as llama.cpp's converter computes them
        freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        factor = rp.get("factor", 8.0)
        low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        old = rp.get("original_max_position_embeddings", 8192)
        low_wl, high_wl = old / low, old / high
        out = []
        for f in freqs.tolist():
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(1.0)
            elif wl > low_wl:
                out.append(factor)
            else:
                smooth = (old / wl - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return torch.tensor(out, dtype=torch.float32)
    raise ExportError(f"rope_type {kind!r} is not supported by GGUF export (default, linear and llama3 are)")


def _write_gguf(src: _Source, plan: GGUFPlan, path: Path, tokenizer, outtype: str,
                tokenizer_pre: Optional[str] = None) -> None:
    import gguf

    if outtype not in GGUF_OUTTYPES:
        raise ValueError(f"outtype must be one of {GGUF_OUTTYPES}, got {outtype!r}")
    if tokenizer is None:
        raise ValueError("GGUF export needs the model's tokenizer (llama.cpp reads it from the file)")
    cfg = src.config
    if cfg.get("sliding_window") and (cfg.get("use_sliding_window", True)) and \
            cfg["sliding_window"] < cfg.get("max_position_embeddings", 0):
        logger.warning("sliding_window=%s is not written: llama.cpp attends to the whole context (equal logits up to "
                       "%s tokens)", cfg["sliding_window"], cfg["sliding_window"])
    arch = plan.arch
    w = gguf.GGUFWriter(path, arch)
    name = Path(str(getattr(src.model.config, "name_or_path", "") or "model")).name or "model"
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    n = len(src.sizes)
    w.add_block_count(n)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    heads = [s["num_attention_heads"] for s in src.sizes]
    kv = [s["num_key_value_heads"] for s in src.sizes]
    ffn = [s["intermediate_size"] or 1 for s in src.sizes]  # 0: one zero channel (see _tensors)
    if arch == "deci":
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
        w.add_feed_forward_length(ffn)
    else:
        w.add_head_count(heads[0])
        w.add_head_count_kv(kv[0])
        w.add_feed_forward_length(ffn[0])
    w.add_key_length(src.head_dim)
    w.add_value_length(src.head_dim)
    w.add_rope_dimension_count(src.head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    vocab_size = int(cfg["vocab_size"])
    w.add_vocab_size(vocab_size)
    rope_freqs = _rope(w, cfg, src.head_dim)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(w, tokenizer, vocab_size, tokenizer_pre)
    if rope_freqs is not None:
        w.add_tensor(f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight", rope_freqs.numpy())
    with torch.no_grad():
        for tname, t in _tensors(src, plan):
            data, raw = _encode(t, outtype, tname)
            if raw is None:
                w.add_tensor(tname, data)
            else:
                w.add_tensor(tname, data, raw_shape=data.shape, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ============================================================================================ quantisation
def _quantize(src: Path, dst: Path, qtype: str, threads: Optional[int]) -> None:
    """llama.cpp's own quantiser (``llama_model_quantize``) through llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError("quantisation uses llama.cpp's quantiser through llama-cpp-python: "
                          "pip install 'optimum-slimgpt[gguf]'") from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _quant_types()[qtype]
    params.nthread = int(threads or 0)
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantise to {qtype} (llama_model_quantize returned {rc}; "
                           "the IQ* types need an importance matrix)")


# ============================================================================================ exporter
@register_exporter
class GGUFExporter(Exporter):
    """``export_format="gguf"``: one ``model.gguf`` for llama.cpp (see the module docstring). In
    :func:`~optimum_slimgpt.save_pruned_model` it writes ``model.gguf`` (f32) into the checkpoint folder;
    :func:`export_gguf` writes a single file with a chosen type and quantisation."""

    name = "gguf"
    file_name = "model.gguf"
    needs_tokenizer = True
    writes_dtype = False  # its own types (outtype)

    def plan(self, view: ModelView, arch: str = "auto") -> GGUFPlan:
        src = _Source(view.model, view.blocks, view.record.base_model_type, view.sizes, view.head_dim, view.extra_bias)
        return _plan(src, arch)

    def write(self, view: ModelView, plan: ExportPlan, folder: Path, max_shard_size, weights: bool = True,
              tokenizer=None, outtype: str = "f32") -> None:
        if not weights:
            raise ExportError("export_format='gguf' cannot be written from streamed weights", reason="not streamable")
        src = _Source(view.model, view.blocks, view.record.base_model_type, view.sizes, view.head_dim, view.extra_bias)
        _write_gguf(src, plan, Path(folder) / self.file_name, tokenizer, outtype)


def _tmp_name(target: Path, kind: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{kind}-{_HOST}.{os.getpid()}-", suffix=".gguf",
                                dir=target.parent)
    os.close(fd)
    return Path(name)


def check_gguf_output(output: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """The absolute path of the ``.gguf`` file to write; ``FileExistsError`` if something is there (without
    ``overwrite``, or a folder), ``NotADirectoryError``/``PermissionError`` if its folder cannot take it."""
    target = Path(output).expanduser().absolute()
    if target.is_dir():
        raise FileExistsError(f"the output {target} is a folder; give the path of a .gguf file")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"the output {target} exists; pass overwrite=True (--overwrite) to replace it")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot create {target}: {parent} is not a folder")
    if not parent.exists():
        raise FileNotFoundError(f"cannot create {target}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"the output {target} is not writable: cannot create files in {parent}")
    return target


def export_gguf(
    model: nn.Module,
    output: Union[str, os.PathLike],
    *,
    tokenizer=None,
    outtype: str = "f32",
    quantize: Optional[str] = None,
    arch: str = "auto",
    overwrite: bool = False,
    threads: Optional[int] = None,
    tokenizer_pre: Optional[str] = None,
    require_record: bool = True,
) -> GGUFResult:
    """Write ``model`` as one GGUF file that llama.cpp loads with nothing else.

    Args:
        model: A pruned Llama, Mistral or Qwen2 (any per-layer sizes; SlimLLM's output biases included), or a
            uniform pruned Qwen3.
        output: The ``.gguf`` file. Written under a temporary name beside it, then renamed.
        tokenizer: The model's (fast) tokenizer: vocabulary, merges, pre-tokenizer, special tokens and chat
            template go into the file.
        outtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (2-D weights; norms and biases stay float32).
        quantize: A llama.cpp quantisation type (``Q4_K_M``, ``Q8_0``, ``Q5_K_M``...; see :data:`QUANT_TYPES`),
            applied by llama.cpp's ``llama_model_quantize`` to the ``outtype`` file (needs llama-cpp-python).
        arch: ``auto`` (the plain architecture for a uniform model without extra biases, else ``deci``), ``deci``
            or ``plain``.
        overwrite: Replace an existing ``output``.
        threads: Threads for the quantiser (default: llama.cpp's choice).
        tokenizer_pre: llama.cpp's name of the BPE pre-tokenizer (default: recognised from the tokenizer).
        require_record: ``False`` also exports an unpruned model of a supported family (reference exports).

    Returns:
        A :class:`GGUFResult`.
    """
    qtype = GGUFExportOptions(outtype=outtype, quantize=quantize, arch=arch, threads=threads,
                              tokenizer_pre=tokenizer_pre).quantize  # every option checked, in one place
    if qtype is not None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise ImportError("quantisation uses llama.cpp's quantiser through llama-cpp-python: "
                              "pip install 'optimum-slimgpt[gguf]'") from e
    if tokenizer is None:
        raise ValueError("GGUF export needs the model's tokenizer (llama.cpp reads it from the file)")
    src = _Source.of(model, require_record=require_record)
    plan = _plan(src, arch)
    target = check_gguf_output(output, overwrite)
    odd = [i for i, s in enumerate(src.sizes) if s["intermediate_size"] % 32]
    if odd and (qtype is not None or outtype == "q8_0"):
        logger.warning("the FFN widths of %d layer(s) (e.g. layer %d: %d channels) are not multiples of 32: llama.cpp "
                       "keeps their ffn_down in f16 (its rows must hold whole 32-value blocks; 256 for the K-quants), "
                       "so the quantised file is larger than it could be; prune with channel_multiple='auto' (the "
                       "default: 256 for widths that are multiples of 256) or a multiple of 32",
                       len(odd), odd[0], src.sizes[odd[0]]["intermediate_size"])
    logger.info("writing %s as llama.cpp '%s' (%s), %s%s", target, plan.arch, plan.reason, outtype,
                f", quantised to {qtype}" if qtype else "")
    made: list[Path] = []
    with _terminate_as_interrupt():
        try:
            tmp = _tmp_name(target, "tmp")
            made.append(tmp)
            _write_gguf(src, plan, tmp, tokenizer, outtype, tokenizer_pre)
            if qtype is not None:
                q = _tmp_name(target, "q")
                made.append(q)
                _quantize(tmp, q, qtype, threads)
                tmp = q
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        finally:
            for p in made:
                if p.exists() and p != target:
                    p.unlink()
    return GGUFResult(target, plan.arch, outtype, qtype, plan.layers, target.stat().st_size, plan.reason)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_in_llama_cpp(path: Union[str, os.PathLike], *, n_ctx: int = 512, threads: Optional[int] = None,
                      logits_all: bool = True, f32_kv_cache: bool = True, vocab_only: bool = False):
    """A ``llama_cpp.Llama`` for ``path`` set up to compare with transformers (what the parity tests and
    ``benchmarks/gguf.py`` use): all logits kept, an f32 KV cache (llama.cpp's default f16 cache alone moves the
    logits by ~1e-3), no sampling state. On CPUs with AMX (``AMX_INT8 = 1`` in llama.cpp's system info) the
    extra (AMX) weight buffers are turned off: in virtual machines that do not grant the AMX tile state they
    crash llama.cpp on the first quantised matmul."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError("running a GGUF needs llama-cpp-python: pip install 'optimum-slimgpt[gguf]'") from e
    lib = llama_cpp.llama_cpp
    orig = lib.llama_model_default_params
    amx = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()

    def params():
        p = orig()
        if amx:
            p.use_extra_bufts = False
        return p

    kw: dict[str, Any] = {"type_k": 0, "type_v": 0} if f32_kv_cache else {}  # GGML_TYPE_F32
    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=os.fspath(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                               logits_all=logits_all, n_threads=threads, n_threads_batch=threads, verbose=False,
                               vocab_only=vocab_only, **kw)
    finally:
        lib.llama_model_default_params = orig
