"""Test helpers: real models from ``../shared`` and tiny random models built from configs.

Nothing here downloads anything. Paths are resolved relative to the repository root so the
tests run from any working directory.
"""

from __future__ import annotations

import os
import re
import struct
from functools import lru_cache
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIMGPT_SHARED_DIR", REPO_ROOT.parent / "shared"))
STORIES_BIN = SHARED / "models" / "stories260K" / "stories260K.bin"
SMOLLM2_DIR = SHARED / "models" / "smollm2-135m-instruct-q4_1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKITEXT_DIR = SHARED / "data" / "wikitext-2"
TINYSTORIES_TXT = SHARED / "data" / "tinystories-valid-slice" / "tinystories_val.txt"


def checkout_env(**extra: str) -> dict:
    """The environment for a child Python process that must import *this* checkout's package (not another copy
    installed elsewhere, nor none at all when the editable install points to a moved folder), plus ``extra``."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def have_shared(*paths: Path) -> bool:
    return all(p.exists() for p in paths)


def load_stories260k():
    """Convert Karpathy's llama2.c ``stories260K.bin`` into a ``LlamaForCausalLM`` (fp32, eval mode).

    Layout and the q/k RoPE permutation follow ``shared/models/stories260K/SOURCE.md``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = STORIES_BIN.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28])
    shared_cls = vocab > 0
    vocab = abs(vocab)
    data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
    head_dim = dim // n_heads
    kv_dim = n_kv * head_dim
    off = 0

    def take(*shape):
        nonlocal off
        n = 1
        for s in shape:
            n *= s
        t = data[off : off + n].view(*shape).clone()
        off += n
        return t

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)

    def permute(w, nh):
        out, inp = w.shape
        return w.view(nh, out // nh // 2, 2, inp).transpose(1, 2).reshape(out, inp)

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=shared_cls,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rms_att[i]
        sd[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        sd[p + "self_attn.q_proj.weight"] = permute(wq[i], n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute(wk[i], n_kv)
        sd[p + "self_attn.v_proj.weight"] = wv[i]
        sd[p + "self_attn.o_proj.weight"] = wo[i]
        sd[p + "mlp.gate_proj.weight"] = w1[i]
        sd[p + "mlp.down_proj.weight"] = w2[i]
        sd[p + "mlp.up_proj.weight"] = w3[i]
    if shared_cls:
        sd["lm_head.weight"] = emb
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    model.tie_weights()
    return model.eval()


def stories_tokens(n_tokens: int = 60_000) -> torch.Tensor:
    """A 1-D stream of token ids from the TinyStories slice, for stories260K (tokenised with its own model).

    There is no sentencepiece model for ``tok512``; rather than re-implementing its tokenizer we let
    the model itself generate nothing and use greedy llama2.c-style encoding implemented in
    :func:`encode_tok512`.
    """
    text = TINYSTORIES_TXT.read_text(encoding="utf-8")
    ids = encode_tok512(text[: n_tokens * 4])
    return torch.tensor(ids[:n_tokens], dtype=torch.long)


@lru_cache(maxsize=1)
def _tok512():
    path = SHARED / "models" / "stories260K" / "tok512.bin"
    raw = path.read_bytes()
    (max_len,) = struct.unpack("i", raw[:4])
    off = 4
    vocab, scores = [], []
    for _ in range(512):
        score, length = struct.unpack("fi", raw[off : off + 8])
        off += 8
        vocab.append(raw[off : off + length].decode("utf-8", errors="replace"))
        off += length
        scores.append(score)
    return vocab, scores


def _bpe_word(word: str, vocab: list[str], scores: list[float], lookup: dict[str, int]) -> list[int]:
    """llama2.c's greedy BPE on one piece of text: characters (or their UTF-8 bytes), then, while any adjacent pair
    forms a vocabulary piece, merge the best-scoring pair (the leftmost of equal scores)."""
    toks = []
    for ch in word:
        if ch in lookup:
            toks.append(lookup[ch])
        else:
            toks.extend(b + 3 for b in ch.encode("utf-8"))
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(toks) - 1):
            j = lookup.get(vocab[toks[i]] + vocab[toks[i + 1]])
            if j is not None and scores[j] > best:
                best, best_i, best_id = scores[j], i, j
        if best_i < 0:
            return toks
        toks[best_i : best_i + 2] = [best_id]


def encode_tok512(text: str) -> list[int]:
    """llama2.c BPE encoding with the 512-token TinyStories vocabulary (no BOS), paragraph by paragraph.

    Each paragraph is encoded as llama2.c does (``" " + paragraph``, greedy merges over the whole of it). No piece of
    this vocabulary has a space other than at its start, so no merge joins text across the start of a space: the
    paragraph splits into words (each from a space up to the next one), every word's merges are the ones the
    whole-paragraph greedy makes inside it, in the same order, and each distinct word is encoded once."""
    vocab, scores = _tok512()
    lookup = {p: i for i, p in enumerate(vocab) if i >= 3}
    assert not any(" " in p[1:] for p in lookup), "a piece with an inner space: words are not independent"
    cache: dict[str, list[int]] = {}
    out: list[int] = []
    for para in text.split("\n"):
        para = para.strip()
        if not para:
            continue
        for word in re.findall(r" [^ ]*", " " + para):
            toks = cache.get(word)
            if toks is None:
                toks = cache[word] = _bpe_word(word, vocab, scores, lookup)
            out.extend(toks)
    return out


def tok512_tokenizer():
    """A ``PreTrainedTokenizerFast`` for stories260K's 512-token vocabulary (ids identical to ``tok512.bin``).

    A Unigram model over the same pieces with equal scores (Viterbi = fewest pieces), ``▁`` for the space,
    byte fallback through the ``<0xNN>`` pieces. Not token-for-token identical to llama2.c's BPE, but a
    valid tokenizer that ``save_pretrained``/``AutoTokenizer`` round-trip, for CLI tests.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, _ = _tok512()
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    seen = {p for p, _ in pieces}
    for i, p in enumerate(vocab[3:], start=3):
        p = p.replace(" ", "\u2581")
        if p in seen:  # keep ids aligned: a duplicate piece can never be chosen
            p = f"<dup{i}>"
        seen.add(p)
        pieces.append((p, -1.0))
    tk = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tk.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581",
                                                                                  prepend_scheme="first")])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def call_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``optimum-slimgpt ARGS`` in this process (the subprocess tests cover the entry point itself):
    (exit status, stdout, stderr)."""
    from optimum_slimgpt import cli

    capsys.readouterr()
    try:
        rc = cli.main(list(args))
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
