"""Chat-aware calibration ("self-chat", chat files, "auto") and the chat check, on stories260K with a chat template
set on its tokenizer (tiny and fast; nothing downloaded)."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from helpers import STORIES_BIN, have_shared, tok512_tokenizer
from optimum_slimgpt import SlimGPTConfig
from optimum_slimgpt.calibration import (
    builtin_instructions,
    describe_source,
    format_conversations,
    get_calibration_data,
    pack_conversations,
    read_chat_file,
    read_instructions,
    resolve_dataset,
)

pytestmark = pytest.mark.skipif(not have_shared(STORIES_BIN), reason="../shared/models/stories260K is not available")

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


@pytest.fixture(scope="module")
def chat_tok():
    tok = tok512_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture()
def short_answers(monkeypatch):
    """Self-chat answers of at most 12 tokens: the stories model rarely ends a turn, so this bounds the test."""
    import optimum_slimgpt.selfgen as selfgen

    monkeypatch.setattr(selfgen, "SELF_CHAT_MAX_NEW_TOKENS", 12)


def _starts(tok, role="user"):
    return tok(f"<s>{role}:", add_special_tokens=False)["input_ids"]


def test_builtin_instruction_sets_are_varied_and_disjoint():
    cal, check = builtin_instructions("calibration"), builtin_instructions("check")
    assert len(cal) == 100 and len(check) >= 50
    assert len(set(cal)) == len(cal) and len(set(check)) == len(check)
    assert not set(cal) & set(check)  # the check never asks what self-chat calibrated on
    assert len({q.split()[0] for q in cal}) >= 10  # not one template repeated


def test_pack_conversations_starts_every_window_at_a_conversation():
    convs = [[1, 10, 11], [1, 20, 21, 22, 23], [1, 30], [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]]
    w = pack_conversations(iter(convs), 4, 6)
    # conv 2 does not fit after conv 1: cut, then whole again at the start of the next window; the long last one
    # fills its window alone, cut
    assert w.tolist() == [[1, 10, 11, 1, 20, 21], [1, 20, 21, 22, 23, 1], [1, 30, 1, 40, 41, 42],
                          [1, 40, 41, 42, 43, 44]]
    with pytest.raises(ValueError, match="fill only 1 windows of 6 tokens, fewer than num_samples=3"):
        pack_conversations(iter(convs[:2]), 3, 6)


def test_self_chat_is_chat_formatted_and_deterministic_per_seed(stories, chat_tok, short_answers):
    cfg = SlimGPTConfig(dataset="self-chat", num_samples=3, seqlen=64, seed=0)
    a = get_calibration_data(cfg, chat_tok, model=stories)
    b = get_calibration_data(cfg, chat_tok, model=stories)
    c = get_calibration_data(SlimGPTConfig(dataset="self-chat", num_samples=3, seqlen=64, seed=1), chat_tok,
                             model=stories)
    assert a.shape == (3, 64) and torch.equal(a, b) and not torch.equal(a, c)
    start = _starts(chat_tok)
    for row in a.tolist():  # every window starts with a user turn from the built-in instructions
        assert row[: len(start)] == start
        text = chat_tok.decode(row)
        assert any(text.startswith(f"<s>user: {q}</s>") for q in builtin_instructions())
    # the model's answers, in its template: "<s>assistant: ...</s>" after each instruction
    assert sum(chat_tok.decode(row).count("</s><s>assistant:") for row in a.tolist()) >= 2
    assert not stories.training  # generation left the model as it was
    # the user's own instructions (a file, one per line)
    cfg2 = SlimGPTConfig(dataset="self-chat", num_samples=2, seqlen=48, chat_instructions=["Tell a story.",
                                                                                          "Say hi."])
    text = chat_tok.decode(get_calibration_data(cfg2, chat_tok, model=stories)[0])
    assert "Tell a story." in text or "Say hi." in text
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the bars are stubs then: the generation must not read them
    try:
        assert torch.equal(get_calibration_data(cfg, chat_tok, model=stories), a)
    finally:
        hf_logging.enable_progress_bar()
    rec = describe_source(cfg2, a, source="self-chat")
    assert rec["dataset"] == "self-chat" and rec["instructions"]["count"] == 2


def test_a_messages_jsonl_file_formats_through_the_chat_template(tmp_path, chat_tok):
    convs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "An answer " * i}]
             for i in range(1, 6)]
    f = tmp_path / "chats.jsonl"
    f.write_text("\n".join(json.dumps({"messages": c, "id": i}) for i, c in enumerate(convs)) + "\n")
    cfg = SlimGPTConfig(dataset=str(f), num_samples=4, seqlen=24, seed=3)
    data = get_calibration_data(cfg, chat_tok)
    assert data.shape == (4, 24) and torch.equal(data, get_calibration_data(cfg, chat_tok))
    texts = [chat_tok.apply_chat_template(c, tokenize=False) for c in convs]
    ids = [chat_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert format_conversations(chat_tok, read_chat_file(f)) == ids
    for row in data.tolist():  # whole conversations, each from its start
        assert any(row[: len(i)] == i[: len(row)] for i in ids)
    rec = describe_source(cfg, data)
    assert rec["dataset"]["name"] == "chats.jsonl" and "chat" in rec["dataset"]["format"]
    # a .json list works too
    g = tmp_path / "chats.json"
    g.write_text(json.dumps([{"messages": c} for c in convs]))
    assert format_conversations(chat_tok, read_chat_file(g)) == ids


@pytest.mark.parametrize("content, match", [
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [}\n', r"bad\.jsonl' line 2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": "x"}\n', r"bad\.jsonl': line 2 has no 'messages'"),
    ('{"messages": "hello"}\n', r"bad\.jsonl', line 1: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}\n', r"line 1: message 0 must be an object with string 'role' and 'content'"),
])
def test_bad_chat_files_give_clear_errors_naming_the_file(tmp_path, chat_tok, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        get_calibration_data(SlimGPTConfig(dataset=str(f), num_samples=1, seqlen=8), chat_tok)


def test_chat_sources_need_a_chat_template_and_readable_instructions(tmp_path, stories, chat_tok):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    plain = tok512_tokenizer()
    with pytest.raises(ValueError, match=r"c\.jsonl holds chat conversations .* no chat template"):
        get_calibration_data(SlimGPTConfig(dataset=str(f), num_samples=1, seqlen=8), plain)
    with pytest.raises(ValueError, match="self-chat' needs a tokenizer with a chat template"):
        get_calibration_data(SlimGPTConfig(dataset="self-chat", num_samples=1, seqlen=8), plain, model=stories)
    b = tmp_path / "instr.txt"
    b.write_bytes(b"\xac\xed\x00\x05binary")
    with pytest.raises(ValueError, match=r"instr\.txt' is not UTF-8"):
        read_instructions(str(b))
    with pytest.raises(ValueError, match=r"nothing\.txt' does not exist"):
        read_instructions(str(tmp_path / "nothing.txt"))
    with pytest.raises(ValueError, match="chat_instructions must be"):
        SlimGPTConfig(chat_instructions=["ok", ""])


def test_auto_is_chat_calibration_for_a_chat_model_and_says_why_not(stories, chat_tok, caplog):
    assert resolve_dataset("auto", chat_tok, stories) == "self-chat"
    assert resolve_dataset("auto", tok512_tokenizer(), stories) == "wikitext2"
    assert resolve_dataset("wikitext2", chat_tok, stories) == "wikitext2"
    assert SlimGPTConfig().dataset == "auto"
    with torch.device("meta"):
        skeleton = type(stories)(stories.config)
    with caplog.at_level(logging.WARNING):
        assert resolve_dataset("auto", chat_tok, skeleton) == "wikitext2"
    assert "cannot write its own chat calibration" in caplog.text and "chat file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # plain text for a chat model: allowed, with a warning
        get_calibration_data(SlimGPTConfig(dataset=["a short text " * 40], num_samples=2, seqlen=16), chat_tok)
    assert "may stop answering chat prompts" in caplog.text


def test_chat_check_counts_an_always_eos_model_as_zero_and_the_dense_model_has_kl_zero(stories, chat_tok):
    from optimum_slimgpt.evaluation import chat_check

    instr = ["Tell me a story.", "What is a cat?", "Say hello.", "Name a colour."]
    dense = chat_check(stories, chat_tok, stories, instructions=instr, n=4, max_new_tokens=6, show_progress=False)
    assert dense.kl == 0.0 and dense.kl_tokens > 0 and dense.n == 4
    assert dense.non_empty_share == dense.reference_non_empty_share > 0
    twin = chat_check(copy.deepcopy(stories), chat_tok, stories, instructions=instr, n=4, max_new_tokens=6,
                      reference_answers=dense.reference_answer_ids, show_progress=False)
    assert twin.kl == 0.0 and twin.answers == dense.answers
    mute = copy.deepcopy(stories)
    eos = chat_tok.eos_token_id
    mute.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    res = chat_check(mute, chat_tok, stories, instructions=instr, n=4, max_new_tokens=6,
                     reference_answers=dense.reference_answer_ids, show_progress=False)
    assert res.non_empty == 0 and res.non_empty_share == 0.0 and all(res.empty)
    assert res.kl > 1.0  # the dense answers are far from "end the turn at once"
    assert "0/4 answers non-empty" in res.summary()


def test_chat_generate_matches_generate_and_drops_finished_rows(stories, chat_tok):
    """The decoding loop (a finished row leaves the batch) gives generate's greedy tokens, row by row."""
    from optimum_slimgpt.selfgen import chat_generate

    prompts = ["Tell me a story.", "What is a cat?", "Say hello.", "Name a colour."]
    eos = chat_tok.eos_token_id
    free = chat_generate(stories, chat_tok, prompts, max_new_tokens=10, batch_size=4)
    # stories260K never ends a turn by itself: this copy ends it where row 0's 4th token would come, so the rows
    # end at different steps and the finished ones leave the batch
    stop = free[0][3]
    model = copy.deepcopy(stories)

    def end_at_stop(module, inputs, out):
        out = out.clone()
        out[..., eos] = torch.where(out.argmax(-1) == stop, 1e4, out[..., eos])
        return out

    model.lm_head.register_forward_hook(end_at_stop)
    ours = chat_generate(model, chat_tok, prompts, max_new_tokens=10, batch_size=4)
    assert len(ours[0]) == 4 and ours[0][-1] == eos and max(len(a) for a in ours) > 4
    for p, a in zip(prompts, ours):  # one prompt at a time: no padding, nothing dropped
        ids = chat_tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)[0, ids.shape[1]:].tolist()
        assert a == (ref[: ref.index(eos) + 1] if eos in ref else ref)
    # a model that ends every answer at once: one step, every row gone
    mute = copy.deepcopy(stories)
    mute.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    assert chat_generate(mute, chat_tok, prompts, max_new_tokens=10) == [[eos]] * 4
