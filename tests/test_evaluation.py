"""Tests for optimum_slimgpt.evaluation: texts, perplexity protocol, zero-shot scoring and loaders.

Protocol details are checked on a tiny random Llama (fast); the real-data checks use SmolLM2-135M
(session fixture ``smollm2``) and ../shared/data, and skip when those are absent.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import SHARED, WIKITEXT_DIR, have_shared
from tolerances import float64, gamma, unit_roundoff

from optimum_slimgpt import evaluation as ev

DATA = SHARED / "data"
needs_wikitext = pytest.mark.skipif(not have_shared(WIKITEXT_DIR / "wiki.test.tokens"), reason="../shared wikitext-2 missing")
needs_piqa = pytest.mark.skipif(not have_shared(DATA / "piqa" / "valid.jsonl"), reason="../shared piqa missing")

PIQA_N = 24


# ------------------------------------------------------------------------------------------------
# tiny model + char tokenizer (protocol tests)
# ------------------------------------------------------------------------------------------------


class CharTokenizer:
    """Minimal tokenizer: one id per character (``ord % 120 + 3``), BOS=1, EOS=2, no pad. Like a GPT-2-style
    tokenizer it adds no special token by default; ``add_bos=True`` makes it add BOS like a Llama tokenizer."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = None

    def __init__(self, add_bos: bool = False):
        self.add_bos = add_bos

    def encode_ids(self, text):
        return [ord(c) % 120 + 3 for c in text]

    def __call__(self, text, add_special_tokens=True, return_tensors=None, verbose=True):
        ids = ([self.bos_token_id] if add_special_tokens and self.add_bos else []) + self.encode_ids(text)
        if return_tensors == "pt":
            return {"input_ids": torch.tensor([ids], dtype=torch.long)}
        return {"input_ids": ids}


#: the tiny model's logits stay below this (checked in the fixture)
LOGIT_BOUND = 4.0
#: a continuation's log-probability from the float64 tiny model by two routes: the same float32 logits up to a rare
#: one-ulp rounding each (u32·|logit|), over at most 32 tokens and their log-sum-exp
LOGPROB_TOL = 32 * 2 * unit_roundoff() * (LOGIT_BOUND + math.log(128))


def _ppl_rtol(n_tokens: int) -> float:
    """Two routes sum the same float32 per-token NLLs (each below LOGIT_BOUND + ln V) in another order: the mean NLL
    moves by at most γ_n of it plus LOGPROB_TOL per token, and the perplexity by that relative amount."""
    return gamma(n_tokens) * (2 * LOGIT_BOUND + math.log(128)) + LOGPROB_TOL


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None)
    # float64: routes that batch, pad or window differently then give the same float32 logits (which the
    # evaluation takes its log-probabilities from) up to a rare one-ulp rounding, see tests/tolerances.py
    model = LlamaForCausalLM(cfg).eval().double()
    with torch.no_grad():
        assert float(model(torch.arange(3, 67)[None]).logits.abs().max()) < LOGIT_BOUND
    return model, CharTokenizer()


def _ref_windows_ppl(model, ids, seqlen, n_windows=None):
    """Reference: non-overlapping windows, HF loss with labels=window, ppl = exp(mean window loss)."""
    n = ids.numel() // seqlen if n_windows is None else n_windows
    losses = []
    with torch.no_grad():
        for k in range(n):
            w = ids[k * seqlen : (k + 1) * seqlen][None]
            losses.append(model(input_ids=w, labels=w).loss.float().item())
    return math.exp(sum(losses) / len(losses))


def _ref_sliding_ppl(model, ids, max_length, stride):
    """The loop of the Hugging Face perplexity guide (per-token NLL bookkeeping)."""
    seq_len = ids.numel()
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, seq_len, stride):
            end = min(begin + max_length, seq_len)
            trg_len = end - prev_end
            inp = ids[begin:end][None]
            tgt = inp.clone()
            tgt[:, :-trg_len] = -100
            logits = model(input_ids=inp).logits.float()
            lab = tgt[:, 1:]
            nll_sum += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                       ignore_index=-100, reduction="sum").item()
            n_tokens += int((lab != -100).sum())
            prev_end = end
            if end == seq_len:
                break
    return math.exp(nll_sum / n_tokens), n_tokens


def test_perplexity_protocol_tiny(tiny):
    model, _ = tiny
    ids = torch.randint(3, 128, (500,), generator=torch.Generator().manual_seed(1))
    ref = _ref_windows_ppl(model, ids, 64)
    for bs in (1, 3):  # 7 windows: uneven last batch too
        r = ev.perplexity_details(model, None, ids, seqlen=64, batch_size=bs, show_progress=False)
        assert r.n_windows == 7 and r.n_tokens == 7 * 63 and r.n_stream_tokens == 500
        assert r.ppl == pytest.approx(ref, rel=_ppl_rtol(r.n_tokens))
    # max_tokens truncates the stream before cutting windows; 2-D (1, n) input is accepted
    r = ev.perplexity_details(model, None, ids[None], seqlen=64, max_tokens=200, show_progress=False)
    assert r.n_windows == 3 and r.ppl == pytest.approx(_ref_windows_ppl(model, ids[:200], 64), rel=_ppl_rtol(r.n_tokens))
    assert ev.perplexity(model, None, ids, seqlen=64, max_tokens=200, show_progress=False) == pytest.approx(r.ppl)
    with pytest.raises(ValueError):
        ev.perplexity(model, None, ids[:50], seqlen=64, show_progress=False)


@pytest.mark.parametrize("n,stride", [(300, 32), (300, 64), (277, 20), (64, 16)])
def test_perplexity_sliding_window_tiny(tiny, n, stride):
    model, _ = tiny
    ids = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(2))
    ref, n_ref = _ref_sliding_ppl(model, ids, 64, stride)
    r = ev.perplexity_details(model, None, ids, seqlen=64, stride=stride, batch_size=4, show_progress=False)
    assert r.n_tokens == n_ref
    if stride < 64:  # every token but the first is scored exactly once
        assert r.n_tokens == n - 1
    assert r.ppl == pytest.approx(ref, rel=_ppl_rtol(r.n_tokens))
    with pytest.raises(ValueError):
        ev.perplexity(model, None, ids, seqlen=64, stride=65, show_progress=False)


def test_perplexity_add_bos_and_text_input(tiny):
    model, tok = tiny
    text = "the quick brown fox jumps over the lazy dog. " * 10
    ids = torch.tensor(tok.encode_ids(text))
    r = ev.perplexity_details(model, tok, text, seqlen=32, add_bos=True, batch_size=2, show_progress=False)
    span = 31  # windows of seqlen-1 stream tokens after BOS, all scored
    assert r.n_windows == ids.numel() // span and r.n_tokens == r.n_windows * span
    nll = 0.0
    with torch.no_grad():
        for k in range(r.n_windows):
            w = torch.cat([torch.tensor([1]), ids[k * span : (k + 1) * span]])
            logits = model(input_ids=w[None]).logits[0].float()
            nll += F.cross_entropy(logits[:-1], w[1:], reduction="sum").item()
    assert r.nll_sum == pytest.approx(nll, rel=_ppl_rtol(r.n_tokens))
    assert r.ppl == pytest.approx(math.exp(nll / r.n_tokens), rel=_ppl_rtol(r.n_tokens))
    # a list of rows is joined with "\n\n"; same as passing the joined text
    rows = ["alpha beta gamma " * 5, "", "delta epsilon " * 6]
    a = ev.perplexity(model, tok, rows, seqlen=16, show_progress=False)
    b = ev.perplexity(model, tok, "\n\n".join(rows), seqlen=16, show_progress=False)
    assert a == b
    with pytest.raises(ValueError):
        ev.perplexity(model, None, text, seqlen=16, show_progress=False)


def test_progress_bar_respects_hf_switch(tiny, capsys):
    from transformers.utils import logging as hf_logging

    model, _ = tiny
    ids = torch.randint(3, 128, (128,))
    hf_logging.disable_progress_bar()
    try:
        ev.perplexity(model, None, ids, seqlen=32)
    finally:
        hf_logging.enable_progress_bar()
    assert "perplexity" not in capsys.readouterr().err


def test_perplexity_restores_training_mode(tiny):
    model, _ = tiny
    model.train()
    try:
        ev.perplexity(model, None, torch.randint(3, 128, (64,)), seqlen=32, show_progress=False)
        assert model.training
    finally:
        model.eval()


def test_zero_shot_tiny_batched_equals_unbatched(tiny):
    model, tok = tiny
    items = [
        ev.MCItem("Question: what is up?\nAnswer:", [" the sky", " down below the ground", " x"], 0),
        ev.MCItem("A cat sat on the", [" mat.", " hat, quietly."], 1),
        ev.MCItem("", [" lonely", " empty context"], 0),  # empty context: scored after BOS
        ev.MCItem("Trailing space ", ["moves", "to the choice"], 1),
    ]
    a = ev.score_items(model, tok, items, batch_size=1, show_progress=False)
    b = ev.score_items(model, tok, items, batch_size=16, show_progress=False)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=LOGPROB_TOL)
    # reference for one request: explicit forward, sum of log-probs of the continuation tokens
    ctx, cont = tok.encode_ids("A cat sat on the"), tok.encode_ids(" hat, quietly.")
    full = torch.tensor(ctx + cont)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=full[None]).logits[0].float(), -1)
    ref = sum(lp[len(ctx) - 1 + j, cont[j]].item() for j in range(len(cont)))
    assert a[1][1] == pytest.approx(ref, abs=LOGPROB_TOL)
    # empty context -> [BOS] + continuation
    cont = tok.encode_ids(" lonely")
    full = torch.tensor([1] + cont)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=full[None]).logits[0].float(), -1)
    assert a[2][0] == pytest.approx(sum(lp[j, cont[j]].item() for j in range(len(cont))), abs=LOGPROB_TOL)
    # metrics from the log-likelihoods
    res = ev.zero_shot(model, tok, items, batch_size=3, return_details=True, show_progress=False)
    assert res["n"] == 4 and res["task"] == "custom"
    exp_acc = sum(max(range(len(ll)), key=lambda j: ll[j]) == it.gold for ll, it in zip(a, items)) / 4
    assert res["acc"] == exp_acc
    assert ev.zero_shot(model, tok, items, limit=2, show_progress=False)["n"] == 2


def test_one_token_choices_share_one_forward_row(tiny):
    """BoolQ-style items (one-token choices after one context) run each distinct input once, and each choice
    still gets the log-probability of its own token."""
    model, tok = tiny
    items = [ev.MCItem("Passage text here.\nQuestion: is it?\nAnswer:", ["n", "y"], 1),
             ev.MCItem("Another passage.\nQuestion: really?\nAnswer:", ["n", "y"], 0)]
    rows = []
    handle = model.register_forward_hook(lambda m, a, kw, out: rows.append(kw["input_ids"].shape[0]),
                                         with_kwargs=True)
    try:
        got = ev.score_items(model, tok, items, batch_size=8, show_progress=False)
    finally:
        handle.remove()
    assert rows == [2]  # four requests, two distinct inputs
    for it, ll in zip(items, got):
        ctx = tok.encode_ids(it.context)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor(ctx)[None]).logits[0, -1].float(), -1)
        for ch, v in zip(it.choices, ll):
            (tid,) = tok.encode_ids(it.context + ch)[len(ctx):]
            assert v == pytest.approx(lp[tid].item(), abs=LOGPROB_TOL)
    assert got[0][0] != got[0][1]


def test_special_tokens_follow_the_tokenizer_like_lm_eval(tiny):
    """lm-eval 0.4.13's ``HFLM`` encodes with the tokenizer's default special tokens (``add_bos_token`` unset): a
    tokenizer that adds BOS gets BOS before every context, and the continuation is what follows the context's
    tokens; ``add_special_tokens`` forces it either way. An empty context is BOS + the continuation's tokens."""
    model, _ = tiny
    bos_tok = CharTokenizer(add_bos=True)
    ids = bos_tok.encode_ids
    assert ev.encode_pair(bos_tok, "Answer: ", "yes") == ([1] + ids("Answer:"), ids(" yes"))
    assert ev.encode_pair(bos_tok, "Answer:", " yes", add_special_tokens=False) == (ids("Answer:"), ids(" yes"))
    assert ev.encode_pair(CharTokenizer(), "Answer:", " yes") == (ids("Answer:"), ids(" yes"))
    assert ev.encode_pair(CharTokenizer(), "Answer:", " yes", add_special_tokens=True) == (ids("Answer:"), ids(" yes"))
    assert ev.encode_pair(bos_tok, "", " yes") == ([1], ids(" yes"))
    # the log-likelihood is then scored after BOS; in float64 the scorer and an explicit forward differ by rounding
    # only (5 log-probs of size <~ 10, each ~10^4 float64 operations: <~ 1e-10)
    m64 = copy.deepcopy(model).double()
    ll = ev.loglikelihoods(m64, bos_tok, [("A cat sat on the", " mat.")], show_progress=False)[0]
    full = [1] + ids("A cat sat on the mat.")
    with torch.no_grad():
        lp = torch.log_softmax(m64(input_ids=torch.tensor(full)[None]).logits[0], -1)
    n = len(ids(" mat."))
    ref = sum(lp[len(full) - n - 1 + j, full[len(full) - n + j]].item() for j in range(n))
    assert ll == pytest.approx(ref, abs=1e-9, rel=0)
    without = ev.loglikelihoods(m64, bos_tok, [("A cat sat on the", " mat.")], add_special_tokens=False,
                                show_progress=False)[0]
    assert abs(without - ll) > 1e-3  # BOS changes the number: the test can tell the two apart


def test_left_truncation(tiny):
    model, tok = tiny
    long_ctx = "word " * 200  # 1000 chars > max_length
    ll = ev.loglikelihoods(model, tok, [(long_ctx.rstrip(), " end")], max_length=100, show_progress=False)
    ids = tok.encode_ids(long_ctx.rstrip() + " end")[-101:]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor(ids[:-1])[None]).logits[0].float(), -1)
    ref = sum(lp[100 - 4 + j, ids[-4 + j]].item() for j in range(4))
    assert ll[0] == pytest.approx(ref, abs=LOGPROB_TOL)


def test_acc_norm_uses_choice_length_without_delimiter():
    assert ev.choice_length(" abc") == 3 and ev.choice_length("abc") == 3 and ev.choice_length(" ") == 1
    # a short choice with a better per-char loglik wins acc_norm but loses acc
    lls = [-4.0, -10.0]
    choices = [" ab", " abcdefghij"]
    assert ev.first_argmax(lls) == 0
    assert ev.first_argmax([v / ev.choice_length(c) for v, c in zip(lls, choices)]) == 1


# ------------------------------------------------------------------------------------------------
# loaders and registry (tiny temp files)
# ------------------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_load_piqa_original(tmp_path):
    _write_jsonl(tmp_path / "valid.jsonl", [
        {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "hit it "},
        {"goal": "Dry hair", "sol1": "use a towel", "sol2": "use water"},
    ])
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    for p in (tmp_path / "valid.jsonl", tmp_path):
        items = ev.load_piqa(p)
        assert items == [
            ev.MCItem("Question: Open a jar\nAnswer:", [" twist the lid", " hit it "], 0),
            ev.MCItem("Question: Dry hair\nAnswer:", [" use a towel", " use water"], 1),
        ]
    (tmp_path / "valid-labels.lst").write_text("0\n")
    with pytest.raises(ValueError):
        ev.load_piqa(tmp_path)


def test_load_hellaswag_text(tmp_path):
    p = tmp_path / "hs.txt"
    p.write_text("Cooking: A man cuts onions. he\n2\na\nb\nslices them thin.\nd\n"
                 "Sports: She runs\n0\nfast.\nslow.\nback.\naway.\n", encoding="utf-8")
    items = ev.load_hellaswag_text(p)
    assert items[0] == ev.MCItem("Cooking: A man cuts onions. he", [" a", " b", " slices them thin.", " d"], 2)
    assert items[1].gold == 0 and items[1].choices[0] == " fast." and len(items) == 2
    p.write_text("ctx\n0\na\nb\n")
    with pytest.raises(ValueError):
        ev.load_hellaswag_text(p)


def test_load_mosaicml_jsonl(tmp_path):
    p = tmp_path / "t.jsonl"
    _write_jsonl(p, [
        {"query": "Question: Why?\n", "choices": ["Because ", "No"], "gold": 1},
        {"query": "The man fell, therefore", "choices": ["he got up.", "he flew."], "gold": 0},
    ])
    items = ev.load_mosaicml_jsonl(p, delimiter="\nAnswer: ")
    assert items[0] == ev.MCItem("Question: Why?\nAnswer:", [" Because", " No"], 1)
    items = ev.load_mosaicml_jsonl(p)  # default delimiter " "
    assert items[1] == ev.MCItem("The man fell, therefore", [" he got up.", " he flew."], 0)


def test_registry(tmp_path):
    expected = {"piqa", "hellaswag", "arc_easy", "boolq", "openbook_qa", "piqa_mosaic", "copa", "siqa", "commonsense_qa"}
    assert expected <= set(ev.ZERO_SHOT_TASKS)
    for name in expected:
        assert ev.ZERO_SHOT_TASKS[name].default_path
    p = tmp_path / "mine" / "data.tsv"
    p.parent.mkdir()
    p.write_text("2+2=\t 4\t 5\t0\n1+1=\t 3\t 2\t1\n3+0=\t 3\t 1\t0\n")

    def load_tsv(path):
        out = []
        for line in path.read_text().splitlines():
            ctx, a, b, g = line.split("\t")
            out.append(ev.MCItem(ctx, [a, b], int(g)))
        return out

    try:
        spec = ev.register_task("_test_tsv", load_tsv, "mine/data.tsv", "test task")
        assert ev.ZERO_SHOT_TASKS["_test_tsv"] is spec
        with pytest.raises(ValueError):
            ev.register_task("_test_tsv", load_tsv)
        ev.register_task("_test_tsv", load_tsv, "mine/data.tsv", overwrite=True)
        assert len(ev.load_task("_test_tsv", data_dir=tmp_path)) == 3
        assert ev.load_task("_test_tsv", data_dir=tmp_path, limit=2)[1].gold == 1
        assert len(ev.load_task("_test_tsv", path=p)) == 3
        with pytest.raises(FileNotFoundError):
            ev.load_task("_test_tsv", data_dir=tmp_path / "nowhere")
    finally:
        ev.ZERO_SHOT_TASKS.pop("_test_tsv", None)
    with pytest.raises(KeyError):
        ev.load_task("no_such_task")
    with pytest.raises(ValueError):
        ev.MCItem("c", [" a"], 3)


def test_mcitem_gold_validation():
    with pytest.raises(ValueError):
        ev.MCItem("ctx", [], 0)
    assert ev.MCItem("ctx", [" a", " b"], "1").gold == 1


# ------------------------------------------------------------------------------------------------
# shared data files
# ------------------------------------------------------------------------------------------------


@needs_wikitext
def test_wikitext2_test_layout():
    rows = ev.wikitext2_rows(WIKITEXT_DIR)
    assert len(rows) == 4358
    assert sum(1 for r in rows if r) == 2891
    assert rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert all(r == "" or r.endswith("\n") for r in rows)
    text = ev.wikitext2_test_text(WIKITEXT_DIR)
    assert text == "\n\n".join(rows)
    assert text.lstrip("\n").startswith(" = Robert Boulter = ")
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film")
    assert "<unk>" not in text


@needs_wikitext
def test_wikitext2_llama2_token_count():
    """GPTQ-style evaluations report 341,469 Llama-2 tokens (with BOS) for the raw test text."""
    spm = pytest.importorskip("sentencepiece")
    model_file = SHARED / "models" / "llama2-tokenizer" / "tokenizer.model"
    if not model_file.exists():
        pytest.skip("../shared llama2 tokenizer missing")
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    assert len(sp.encode(ev.wikitext2_test_text(WIKITEXT_DIR))) + 1 == 341_469


@needs_wikitext
def test_wikitext2_validation():
    rows = ev.wikitext2_validation_rows(WIKITEXT_DIR)
    assert len(rows) == 3760 and rows[0] == "" and rows[1] == " = Homarus gammarus = \n"
    text = ev.wikitext2_validation_text(WIKITEXT_DIR)
    assert text == "\n\n".join(rows) and "<unk>" in text


def test_ptb_text():
    assert ev.ptb_text([" a b", " c d"]) == " a b  c d"
    assert ev.ptb_text(iter(["x", "y", "z"])) == "x y z"


@pytest.mark.skipif(not have_shared(DATA / "mosaicml-eval", DATA / "hellaswag", DATA / "piqa"), reason="../shared data missing")
def test_shared_task_files_load():
    counts = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 2376, "boolq": 3270, "openbook_qa": 500, "openbookqa": 500,
              "piqa_mosaic": 1838, "copa": 100, "siqa": 1954, "commonsense_qa": 1221}
    for name, n in counts.items():
        items = ev.load_task(name, data_dir=DATA)
        assert len(items) == n, name
        assert all(not it.context.endswith(" ") for it in items), name
    a, b = ev.load_task("piqa", data_dir=DATA, limit=200), ev.load_task("piqa_mosaic", data_dir=DATA, limit=200)
    for x, y in zip(a, b):  # the two PIQA copies give the same prompts (the original keeps trailing spaces)
        assert x.context == y.context and x.gold == y.gold
        assert [c.rstrip() for c in x.choices] == [c.rstrip() for c in y.choices]
    hs = ev.load_task("hellaswag", data_dir=DATA, limit=1)[0]
    assert hs.context.startswith("Roof shingle removal: A man is sitting on a roof.") and hs.gold == 3
    assert hs.choices[3] == " starts pulling up roofing on a roof."
    # BoolQ with lm-eval's prompt: no "Passage: " prefix, "?\nAnswer:" after the question; 62.2% of the golds are "yes"
    bq = ev.load_task("boolq", data_dir=DATA)
    assert bq[0].context.startswith("All biomass goes through") and bq[0].choices == [" no", " yes"]
    assert bq[0].context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert sum(it.gold for it in bq) == 2033


# ------------------------------------------------------------------------------------------------
# SmolLM2 on real data
# ------------------------------------------------------------------------------------------------


@needs_wikitext
def test_smollm2_wikitext_perplexity_matches_reference(smollm2):
    model, tok = smollm2
    seqlen, n_win = 256, 4
    text = ev.wikitext2_test_text(WIKITEXT_DIR)
    r = ev.perplexity_details(model, tok, text, seqlen=seqlen, max_tokens=seqlen * n_win, batch_size=2, show_progress=False)
    assert r.n_windows == n_win and r.n_tokens == n_win * (seqlen - 1)
    # a long prefix tokenizes to the same first tokens as the whole text (BPE splits at whitespace first)
    ids = tok(text[:50_000], add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert len(ids) > seqlen * n_win
    ref = _ref_windows_ppl(model, ids, seqlen, n_windows=n_win)
    # float32 forwards in two batch shapes: the logits differ by the matmuls' rounding, about sqrt(d)·u32 of their
    # terms; the mean NLL is a sum of n per-token NLLs in another order, within γ_n of it (tests/tolerances.py)
    assert r.ppl == pytest.approx(ref, rel=gamma(r.n_tokens) * math.log(ref) + 64 * math.sqrt(576) * unit_roundoff())
    assert 10 < r.ppl < 80  # ~37.1 on these windows (30.96 on 4 x 512); README: ~36.5 on the first 8k tokens


def test_encode_pair_like_lm_eval(smollm2):
    _, tok = smollm2
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = ev.encode_pair(tok, "Question: hi\nAnswer: ", "yes", separate=False)
    assert ctx == enc("Question: hi\nAnswer:")
    assert ctx + cont == enc("Question: hi\nAnswer: yes")
    assert ev.encode_pair(tok, "Answer:", " yes", separate=True) == (enc("Answer:"), enc(" yes"))


@pytest.fixture(scope="module")
def piqa_dense(smollm2):
    if not have_shared(DATA / "piqa" / "valid.jsonl"):
        pytest.skip("../shared piqa missing")
    model, tok = smollm2
    return ev.zero_shot(model, tok, "piqa", limit=PIQA_N, batch_size=8, data_dir=DATA, return_details=True,
                        show_progress=False)


@needs_piqa
def test_piqa_dense_above_chance(piqa_dense):
    assert piqa_dense["n"] == PIQA_N and len(piqa_dense["logliks"]) == PIQA_N
    assert piqa_dense["acc_norm"] > 0.55
    assert 0 < piqa_dense["acc_norm_stderr"] < 0.1


@needs_piqa
def test_piqa_second_run_identical(smollm2):
    """``zero_shot`` and then ``evaluate_zero_shot`` on the same items give the same log-likelihoods, bit for bit.
    Run on a copy of SmolLM2 cut to its first 2 of 30 blocks: the scorer's whole path (tokenizing, sorting, padded
    batches through real attention, the LM head) at half the cost of one full-model run."""
    model, tok = smollm2
    layers = model.model.layers
    short = copy.deepcopy(model, memo={id(layers): copy.deepcopy(layers[:2])})
    short.config.num_hidden_layers = 2
    assert len(model.model.layers) == model.config.num_hidden_layers == 30  # the session's model is untouched
    first = ev.zero_shot(short, tok, "piqa", limit=PIQA_N, batch_size=8, data_dir=DATA, return_details=True,
                         show_progress=False)
    again = ev.evaluate_zero_shot(short, tok, ["piqa"], limit=PIQA_N, batch_size=8, data_dir=DATA,
                                  return_details=True, show_progress=False)["piqa"]
    assert first["n"] == again["n"] == PIQA_N and len(set(map(tuple, first["logliks"]))) == PIQA_N
    assert again["acc"] == first["acc"] and again["acc_norm"] == first["acc_norm"]
    assert again["logliks"] == first["logliks"]


@needs_piqa
def test_piqa_batched_equals_unbatched(smollm2, piqa_dense):
    model, tok = smollm2
    items = ev.load_task("piqa", data_dir=DATA, limit=6)
    with float64(model):  # the same float32 logits from both batchings, up to a rare one-ulp rounding
        single = ev.score_items(model, tok, items, batch_size=1, show_progress=False)
        batched = ev.score_items(model, tok, items, batch_size=8, show_progress=False)
    for ll_s, ll_b, it in zip(single, batched, items):
        n = max(len(tok(c, add_special_tokens=False).input_ids) for c in it.choices) + 2
        logit_scale = 64.0  # SmolLM2's logits stay below this on text
        for a, b in zip(ll_s, ll_b):
            assert a == pytest.approx(b, abs=n * 2 * unit_roundoff() * (logit_scale + math.log(49152)))


@needs_piqa
def test_piqa_broken_model_at_chance(smollm2, piqa_dense):
    """SmolLM2 without its blocks (embeddings, final norm, LM head): exactly SmolLM2 with every Linear weight of its
    blocks zeroed (each block then adds exact zeros to the residual stream, so the logits are the same bits), without
    the cost of running 30 blocks of zeros."""
    model, tok = smollm2
    no_blocks = copy.deepcopy(model, memo={id(model.model.layers): torch.nn.ModuleList()})
    no_blocks.config.num_hidden_layers = 0
    assert len(model.model.layers) == model.config.num_hidden_layers == 30  # the session's model is untouched
    broken = ev.zero_shot(no_blocks, tok, "piqa", limit=PIQA_N, batch_size=8, data_dir=DATA, return_details=True,
                          show_progress=False)
    assert broken["acc_norm"] < piqa_dense["acc_norm"]
    assert abs(broken["acc_norm"] - 0.5) <= 0.2
    # the broken model is a far worse language model on the same choices
    mean = lambda lls: sum(sum(x) for x in lls) / sum(len(x) for x in lls)  # noqa: E731
    assert mean(broken["logliks"]) < mean(piqa_dense["logliks"]) - 20


# ------------------------------------------------------------------------------------------------
# lm-evaluation-harness bridge
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_piqa
def test_lm_eval_bridge_runs(smollm2, piqa_dense):
    """The real harness on SmolLM2 and the local PIQA files: the same per-item log-likelihoods as the built-in
    scorer (up to float32 batching differences, as in test_piqa_batched_equals_unbatched)."""
    pytest.importorskip("lm_eval")
    model, tok = smollm2
    out = ev.evaluate_lm_eval(model, tok, ["piqa"], limit=8, data_dir=DATA, return_details=True)["piqa"]
    assert out["n"] == 8 and out["gold"] == piqa_dense["gold"][:8]
    for a, b in zip(out["logliks"], piqa_dense["logliks"][:8]):
        assert a == pytest.approx(b, abs=1e-4)
