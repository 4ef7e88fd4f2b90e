"""Recovery after pruning (``optimum_slimgpt.recovery``) on stories260K: KD on transformers' Trainer lowers the
training and a held-out loss, LoRA merged equals LoRA unmerged, a recovered model saves and reloads (per-layer
and uniform) with its recovery recorded, the chunked loss equals the plain one, and bad input is refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from helpers import STORIES_BIN, TINYSTORIES_TXT, call_cli, have_shared, tok512_tokenizer
from tolerances import assert_same_function, gamma, logits64
from optimum_slimgpt import ConfigError, PruningRecord, RecoveryConfig, SlimGPTConfig, SlimGPTPruner, recover
from optimum_slimgpt.recovery import _final_hidden, _teacher_hidden, chunked_losses
from optimum_slimgpt.saving import save_pruned_model

pytestmark = pytest.mark.skipif(not have_shared(STORIES_BIN, TINYSTORIES_TXT), reason="../shared stories260K missing")

SEQ = 64


@pytest.fixture(scope="module", autouse=True)
def _quiet_single_thread():
    """No progress bars; one thread (these models are tiny: on shared cores two threads only wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def windows(stories_stream):
    """(train, held-out) windows of SEQ tokens, disjoint parts of the TinyStories stream."""
    w = stories_stream[: (stories_stream.numel() // SEQ) * SEQ].view(-1, SEQ)
    return w[:64], w[-32:]


def _pruned(dense, calib, schedule="log_increase", **kw):
    model = copy.deepcopy(dense)
    cfg = SlimGPTConfig(pruning_ratio=0.5, dataset=calib[:32], seed=0, schedule=schedule, **kw)
    SlimGPTPruner(cfg).prune_model(model, None)
    return model


@pytest.fixture(scope="module")
def pruned(_stories_dense, windows):
    return _pruned(_stories_dense, windows[0])


@torch.no_grad()
def _losses(student, teacher, ids) -> dict[str, float]:
    hs = _final_hidden(student, ids)[:, :-1]
    ht = _final_hidden(teacher, ids)[:, :-1]
    out = chunked_losses(hs, student.get_output_embeddings(), ids[:, 1:], h_teacher=ht,
                         teacher_head=teacher.get_output_embeddings())
    return {k: float(v) for k, v in out.items()}


def _config(**kw) -> RecoveryConfig:
    base = dict(seqlen=SEQ, max_steps=8, batch_size=8, learning_rate=2e-3, logging_steps=4, seed=0)
    base.update(kw)
    return RecoveryConfig(**base)


def test_chunked_losses_equal_the_plain_losses(_stories_dense, pruned, windows):
    ids = windows[1][:4]
    with torch.no_grad():
        s = pruned(ids).logits[:, :-1].double()
        t = _stories_dense(ids).logits[:, :-1].double()
        T = 2.0
        kd = (torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
        lm = torch.nn.functional.cross_entropy(s.flatten(0, 1), ids[:, 1:].flatten())
        hs, ht = _final_hidden(pruned, ids)[:, :-1], _teacher_hidden(_stories_dense, ids)[:, :-1]
        torch.testing.assert_close(ht, _final_hidden(_stories_dense, ids)[:, :-1], atol=0, rtol=0)
        got = chunked_losses(hs, pruned.get_output_embeddings(), ids[:, 1:], h_teacher=ht,
                             teacher_head=_stories_dense.get_output_embeddings(), temperature=T, chunk_size=7)
    # the chunks' float32 logits differ from the model's by the rounding of the head's matmul (γ_(d+1) of
    # |h| |W|ᵀ, both heads) plus the float32 log-softmax (γ_V of |logit| + ln V); a logit error δ moves the
    # cross entropy by <= 2δ and the KD term (T² · KL at temperature T) by <= 4Tδ; the means over n positions add
    # γ_n of themselves (tests/tolerances.py)
    V, d = s.shape[-1], hs.shape[-1]
    heads = ((hs, pruned.get_output_embeddings().weight), (ht, _stories_dense.get_output_embeddings().weight))
    delta = max(gamma(d + 1) * float((h.double().abs() @ W.double().abs().T).max()) for h, W in heads)
    delta += gamma(V) * (float(torch.maximum(s.abs().max(), t.abs().max())) + math.log(V))
    n = s.shape[0] * s.shape[1]
    assert abs(float(got["kd"]) - float(kd)) <= 4 * T * delta + gamma(n) * float(kd)
    assert abs(float(got["lm"]) - float(lm)) <= 2 * delta + gamma(n) * float(lm)
    assert float(kd) > 0.05  # the pruned model really differs from its teacher


def test_kd_steps_lower_the_kd_and_a_held_out_loss(_stories_dense, pruned, windows):
    train, held = windows
    student = copy.deepcopy(pruned)
    before_train, before_held = _losses(student, _stories_dense, train[:32]), _losses(student, _stories_dense, held)
    from transformers import TrainerCallback

    seen = []

    class Collect(TrainerCallback):  # what every report_to integration receives
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs or {}))

    out = recover(student, _stories_dense, None, _config(), train_data=train, callbacks=[Collect()])
    assert out is student and not student.training
    steps = [r for r in seen if "kd_loss" in r]
    assert len(steps) == 2 and steps[1]["kd_loss"] < steps[0]["kd_loss"]  # logged every 4 of the 8 steps
    after_train, after_held = _losses(student, _stories_dense, train[:32]), _losses(student, _stories_dense, held)
    assert after_train["kd"] < 0.9 * before_train["kd"]
    assert after_held["kd"] < 0.9 * before_held["kd"]
    assert after_held["lm"] < before_held["lm"]  # the next-token loss on unseen text falls too
    rec = PruningRecord.of(student.config).recovery
    assert len(rec) == 1 and rec[0]["loss"] == "kd" and rec[0]["steps"] == 8 and rec[0]["tokens"] == 8 * 8 * SEQ
    assert rec[0]["data"]["num_samples"] == 64 and rec[0]["lora_r"] == 0
    assert all(p.requires_grad for p in student.parameters())  # as it was before (a fresh model trains all)
    for p in _stories_dense.parameters():  # the teacher is only read
        assert p.grad is None


def test_frozen_embeddings_and_a_bfloat16_teacher(_stories_dense, pruned, windows):
    train, held = windows
    teacher = copy.deepcopy(_stories_dense).to(torch.bfloat16)  # the teacher only runs forward
    with torch.no_grad():  # the bf16 teacher's KD target is the float32 one up to bf16 rounding
        hs = _final_hidden(pruned, held)[:, :-1]
        kd32 = float(chunked_losses(hs, pruned.get_output_embeddings(), held[:, 1:], want_lm=False,
                                    h_teacher=_final_hidden(_stories_dense, held)[:, :-1],
                                    teacher_head=_stories_dense.get_output_embeddings())["kd"])
        kd16 = float(chunked_losses(hs, pruned.get_output_embeddings(), held[:, 1:], want_lm=False,
                                    h_teacher=_final_hidden(teacher, held)[:, :-1],
                                    teacher_head=teacher.get_output_embeddings())["kd"])
    assert abs(kd16 - kd32) < 0.01 * kd32  # 3.6e-4 measured; bf16 keeps 8 bits of mantissa (0.4%)

    def embeddings(m):
        return m.get_input_embeddings().weight.detach().clone(), m.get_output_embeddings().weight.detach().clone()

    free = copy.deepcopy(pruned)  # without freezing, training moves the embeddings and the head
    recover(free, teacher, None, _config(max_steps=2), train_data=train)
    assert all(not torch.equal(a, b) for a, b in zip(embeddings(free), embeddings(pruned)))

    student = copy.deepcopy(pruned)
    before = _losses(student, _stories_dense, held)
    recover(student, teacher, None, _config(freeze_embeddings=True), train_data=train)
    assert all(torch.equal(a, b) for a, b in zip(embeddings(student), embeddings(pruned)))
    down = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(student.state_dict()[down], pruned.state_dict()[down])  # the blocks trained
    assert _losses(student, _stories_dense, held)["kd"] < 0.9 * before["kd"]  # against the float32 teacher
    assert all(p.requires_grad for p in student.parameters()) and student.dtype == torch.float32
    rec = PruningRecord.of(student.config).recovery[0]
    assert rec["config"]["freeze_embeddings"] is True


def test_lm_loss_needs_no_teacher_and_lowers_the_held_out_loss(pruned, windows):
    train, held = windows
    student = copy.deepcopy(pruned)
    with torch.no_grad():
        before = float(student(held, labels=held).loss)
    recover(student, None, None, _config(loss="lm", gradient_checkpointing=True), train_data=train)
    flag = "is_activation_checkpointing" if hasattr(type(student), "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(student, flag) is False  # switched off again after training
    with torch.no_grad():
        after = float(student(held, labels=held).loss)
    assert after < before - 0.05


def test_merged_lora_equals_unmerged(_stories_dense, pruned, windows):
    pytest.importorskip("peft")
    train, held = windows
    student = copy.deepcopy(pruned)
    peft_model = recover(student, _stories_dense, None, _config(lora_r=4, max_steps=4, learning_rate=3e-3),
                         train_data=train, merge=False)
    assert any("lora_" in n for n, _ in peft_model.named_parameters())
    peft_model.double()  # compared in float64: the float32 merge differs only by rounding (~1e-5 on these logits)
    with torch.no_grad():
        unmerged = peft_model(held[:4]).logits
        base = pruned(held[:4]).logits.double()
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(held[:4]).logits
    assert type(merged_model) is type(pruned)
    assert not any("lora_" in n for n, _ in merged_model.named_parameters())
    assert (unmerged - base).abs().max() > 0.1  # the adapters changed the function...
    assert_same_function(merged, unmerged)  # ...and merging keeps it


@pytest.mark.parametrize("schedule, fmt", [("log_increase", "per_layer"), ("uniform", "uniform")])
def test_recovered_model_saves_and_reloads(_stories_dense, windows, tmp_path, schedule, fmt):
    pytest.importorskip("peft")
    train, held = windows
    # uniform: FFN channels only (every layer then keeps the same sizes; GQA head choices may differ per layer)
    student = _pruned(_stories_dense, train, schedule, prune_heads=schedule != "uniform")
    sizes = PruningRecord.of(student.config).layers
    recover(student, _stories_dense, None, _config(lora_r=4, max_steps=3, learning_rate=1e-2), train_data=train)
    assert not any("lora_" in n for n, _ in student.named_parameters())
    res = save_pruned_model(student, tmp_path / "out", export_format=fmt)
    assert res.format == fmt
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert_same_function(logits64(back, held[:4]), logits64(student, held[:4]))
    rec = PruningRecord.of(back.config)
    assert rec.layers == sizes and rec.recovery[0]["lora_r"] == 4 and rec.recovery[0]["steps"] == 3


def test_older_records_load_without_recovery():
    rec = PruningRecord.from_dict({"pruning_method": "slimgpt", "base_model_type": "llama", "format_version": 2})
    assert rec.recovery == []


def test_text_dataset_is_cut_into_windows(_stories_dense, pruned):
    tok = tok512_tokenizer()
    text = TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000]
    student = copy.deepcopy(pruned)
    recover(student, _stories_dense, tok, _config(dataset=[text], max_steps=2, num_samples=16))
    rec = PruningRecord.of(student.config).recovery[0]
    assert rec["data"]["num_samples"] == 16 and rec["data"]["seqlen"] == SEQ
    assert rec["data"]["dataset"]["type"] == "texts"


@pytest.mark.parametrize("kw, field", [
    (dict(max_steps=0), "max_steps"), (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=-1e-4), "learning_rate"), (dict(loss="mse"), "loss"), (dict(temperature=0), "temperature"),
    (dict(lora_r=-1), "lora_r"), (dict(max_steps=None), "max_steps"), (dict(dtype="int8"), "dtype"),
    (dict(gradient_checkpointing="yes"), "gradient_checkpointing"), (dict(seqlen=1), "seqlen"),
    (dict(freeze_embeddings="yes"), "freeze_embeddings"),
])
def test_bad_config_fields(kw, field):
    with pytest.raises(ConfigError) as e:
        RecoveryConfig(**kw)
    assert e.value.field == field and field in str(e.value)


def test_teacher_with_another_vocabulary_is_refused(pruned, windows):
    other = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=8, num_key_value_heads=4))
    with pytest.raises(ValueError, match="vocabulary has 1000 tokens but the student's has 512"):
        recover(copy.deepcopy(pruned), other, None, _config(), train_data=windows[0])


def test_missing_teacher_and_short_dataset_are_refused(_stories_dense, pruned, windows):
    tok = tok512_tokenizer()
    with pytest.raises(ValueError, match="needs a teacher"):
        recover(copy.deepcopy(pruned), None, None, _config(), train_data=windows[0])
    with pytest.raises(ValueError, match="too short.*fewer than one window of seqlen=64"):
        recover(copy.deepcopy(pruned), _stories_dense, tok, _config(dataset=["Once upon a time."]))
    with pytest.raises(ValueError, match="teacher is the student"):
        recover(pruned, pruned, None, _config(), train_data=windows[0])


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_dirs(_stories_dense, windows, tmp_path_factory):
    """(dense folder, pruned folder, training text, a model with another vocabulary), saved once."""
    d = tmp_path_factory.mktemp("recover-cli")
    tok = tok512_tokenizer()
    _stories_dense.save_pretrained(d / "dense")
    tok.save_pretrained(d / "dense")
    save_pruned_model(_pruned(_stories_dense, windows[0]), d / "pruned", tokenizer=tok)
    text = d / "train.txt"
    text.write_text(TINYSTORIES_TXT.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=8, num_key_value_heads=4)).save_pretrained(d / "other")
    return d / "dense", d / "pruned", text, d / "other"


def test_cli_recover_and_prune_with_recovery(cli_dirs, tmp_path, capsys):
    dense, pruned, text, _ = cli_dirs
    rc, out, err = call_cli(capsys, "recover", "--model", str(pruned), "--teacher", str(dense), "--dataset", str(text),
                        "--seqlen", "64", "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--output",
                        str(tmp_path / "rec"), "--teacher-dtype", "bfloat16", "--freeze-embeddings")
    assert rc == 0, err
    assert "recovered: 3 steps, 768 tokens, loss kd (full fine-tuning)" in out
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "rec", dtype=torch.float32)
    rec = PruningRecord.of(back.config)
    assert rec.recovery[0]["steps"] == 3 and rec.recovery[0]["data"]["dataset"]["name"] == "train.txt"
    assert rec.recovery[0]["config"]["freeze_embeddings"] is True
    dense_emb = AutoModelForCausalLM.from_pretrained(dense).get_input_embeddings().weight
    assert torch.equal(back.get_input_embeddings().weight, dense_emb)  # pruning and recovery left them alone
    assert rec.layers == PruningRecord.of(AutoModelForCausalLM.from_pretrained(pruned).config).layers
    rc, out, _ = call_cli(capsys, "info", "--model", str(tmp_path / "rec"))
    assert rc == 0 and "recovered: 3 steps, 768 tokens, loss kd, LoRA r=0" in out

    rc, out, err = call_cli(capsys, "prune", "--model", str(dense), "--ratio", "0.3", "--dataset", str(text), "--samples",
                        "8", "--seqlen", "64", "--recover-steps", "2", "--recover-lora-r", "4", "--output",
                        str(tmp_path / "pr"), "--recover-teacher-dtype", "bfloat16")
    assert rc == 0, err
    assert "recovered: 2 steps" in out and "LoRA r=4, merged" in out
    rec = PruningRecord.of(AutoModelForCausalLM.from_pretrained(tmp_path / "pr").config)
    assert rec.achieved_ratio == pytest.approx(0.3, abs=0.02) and rec.recovery[0]["lora_r"] == 4


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps: max_steps must be a positive int"),
    (["--lr", "0"], "--lr: learning_rate must be a number > 0"),
    (["--lr", "-0.001"], "--lr: learning_rate must be a number > 0"),
    (["--loss", "mse"], "--loss: loss must be one of"),
    (["--seqlen", "100000"], "max_position_embeddings"),
    (["--teacher", "OTHER"], "vocabulary has 1000 tokens but the student's has 512"),
    (["--dataset", "SHORT"], "too short"),
    (["--teacher", None], "--loss kd needs --teacher"),
    (["--teacher-dtype", "int3"], "unknown dtype 'int3'"),
])
def test_cli_recover_bad_input(cli_dirs, tmp_path, capsys, extra, message):
    dense, pruned, text, other = cli_dirs
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.", encoding="utf-8")
    args = {"--model": str(pruned), "--teacher": str(dense), "--dataset": str(text), "--seqlen": "64",
            "--output": str(tmp_path / "out")}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = {"OTHER": str(other), "SHORT": str(short)}.get(v, v)
    argv = [x for k, v in args.items() if v is not None for x in (k, v)]
    rc, out, err = call_cli(capsys, "recover", *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "out").exists()


def test_cli_prune_recover_flags_are_checked_first(cli_dirs, tmp_path, capsys):
    dense, _, text, _ = cli_dirs
    base = ["prune", "--model", str(dense), "--dataset", str(text), "--seqlen", "64", "--output", str(tmp_path / "o")]
    for extra, message in ((["--recover-steps", "0"], "--recover-steps: max_steps must be a positive int"),
                           (["--recover-steps", "2", "--recover-lr", "0"], "--recover-lr: learning_rate must be"),
                           (["--recover-lr", "1e-4"], "--recover-lr needs --recover-steps N")):
        rc, _, err = call_cli(capsys, *base, *extra)
        assert rc == 2 and err.strip().splitlines() == [err.strip()] and message in err, err


def test_same_seed_same_model(_stories_dense, pruned, windows):
    pytest.importorskip("peft")
    runs = []
    for _ in range(2):
        student = copy.deepcopy(pruned)
        recover(student, _stories_dense, None, _config(lora_r=4, lora_dropout=0.1, max_steps=2, learning_rate=3e-3),
                train_data=windows[0])
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["model.layers.0.mlp.down_proj.weight"], pruned.state_dict()["model.layers.0.mlp.down_proj.weight"])


def test_self_generated_data_needs_no_dataset(_stories_dense, pruned):
    student = copy.deepcopy(pruned)
    recover(student, _stories_dense, None, _config(dataset="self", seqlen=32, num_samples=8, max_steps=4))
    rec = PruningRecord.of(student.config).recovery[0]
    assert rec["data"]["dataset"] == "self" and rec["data"]["num_samples"] == 8 and rec["data"]["seqlen"] == 32
    assert rec["data"]["seed"] == 0 and rec["tokens"] == 4 * 8 * 32
