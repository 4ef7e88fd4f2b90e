"""Trustworthy under mistakes: transactional pruning, preflight checks, truthful provenance, crash-safe saving and
strict loading. Tiny random models built from configs; every check fails if the guarded behaviour regresses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from optimum_slimgpt import PruningRecord, SlimGPTConfig, SlimGPTPruner, SlimLLMConfig, get_method
from optimum_slimgpt.modeling import UnusableModelError
from optimum_slimgpt.saving import ExportError, check_output_dir, clean_stale_work_dirs, save_pruned_model

from helpers import checkout_env
from tolerances import SAME_FUNCTION_RTOL, assert_same_function, logits64

VOCAB = 96
CALIB = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(0))
PROMPT = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(1))


def _tiny(layers: int = 3, dtype=torch.float32, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def _cfg(**kw) -> SlimGPTConfig:
    return SlimGPTConfig(**{"pruning_ratio": 0.3, "dataset": None, "batch_size": 4, **kw})


@torch.no_grad()
def _logits(model):
    return logits64(model, PROMPT)  # same-function checks run in float64 (tests/tolerances.py)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before: dict, logits: torch.Tensor) -> None:
    """Same tensors (bit for bit), no hooks or patched forwards left behind, same outputs."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks, type(m).__name__
        assert "forward" not in m.__dict__, type(m).__name__
    assert torch.equal(_logits(model), logits)


@pytest.fixture(autouse=True)
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------ transactional
class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_failure_after_a_block_changed_marks_the_model_unusable(exc, monkeypatch, tmp_path):
    model = _tiny()
    method = get_method(_cfg())
    real, calls = method.prune_ffn, []

    def failing_ffn(task):  # block 0 is pruned completely, block 1 fails in its FFN solve
        calls.append(task.layer)
        if task.layer == 1:
            raise exc("injected failure")
        return real(task)

    monkeypatch.setattr(method, "prune_ffn", failing_ffn)
    # channel_multiple=1: block 0 then loses FFN channels too (its FFN solve runs, the calls below); with "auto"
    # this 64-channel FFN steps by 16 and block 0 keeps all its channels
    pruner = SlimGPTPruner(_cfg(channel_multiple=1))
    with pytest.raises(exc, match="injected failure"):
        pruner.prune_model(model, calibration=CALIB)
    assert calls == [0, 1]
    monkeypatch.undo()
    # refused everywhere: forward, save, a second prune
    with pytest.raises(UnusableModelError, match="partially pruned.*block 1"):
        model(PROMPT)
    with pytest.raises(UnusableModelError, match="partially pruned"):
        model.model.layers[0](torch.zeros(1, 3, 32))
    with pytest.raises(UnusableModelError):
        save_pruned_model(model, tmp_path / "out")
    with pytest.raises(UnusableModelError):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["observe", "solve"])
def test_failure_before_any_write_leaves_the_model_intact(where, monkeypatch):
    model = _tiny()
    before, logits = _state(model), _logits(model)
    pruner = SlimGPTPruner(_cfg())
    if where == "observe":  # during the first statistics pass (hooks on o_proj are live)
        def boom(*a, **k):
            raise _Boom("injected in the statistics pass")
        monkeypatch.setattr(SlimGPTPruner, "_observe", boom)
    else:  # the first solve of the run, whichever part it is
        def boom(task):
            raise _Boom("injected in the first solve")
        monkeypatch.setattr(get_method(pruner.config), "prune_attention", boom)
        monkeypatch.setattr(get_method(pruner.config), "prune_ffn", boom)
    with pytest.raises(_Boom):
        pruner.prune_model(model, calibration=CALIB)
    monkeypatch.undo()
    _assert_untouched(model, before, logits)
    # and it can still be pruned and saved normally
    SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB)
    assert torch.isfinite(_logits(model)).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_fails_before_anything_changes():
    model = _tiny()
    before, logits = _state(model), _logits(model)
    with pytest.raises(ValueError, match=r"device='cuda'.*cannot be used on this machine"):
        SlimGPTPruner(_cfg(device="cuda")).prune_model(model, calibration=CALIB)
    _assert_untouched(model, before, logits)


def test_float16_overflow_is_a_clear_error_and_the_model_is_refused():
    model = _tiny(dtype=torch.float16)
    with torch.no_grad():  # block 0's FFN output overflows float16
        model.model.layers[0].mlp.down_proj.weight.mul_(2e5)
        model.model.layers[0].mlp.up_proj.weight.mul_(100)
    with pytest.raises(FloatingPointError, match=r"block 0 produced NaN/Inf.*float16.*bfloat16 or float32"):
        SlimGPTPruner(_cfg(schedule="uniform")).prune_model(model, calibration=CALIB)
    with pytest.raises(UnusableModelError):
        model(PROMPT)


def test_offloaded_blocks_are_refused_before_anything_changes():
    from accelerate import cpu_offload

    model = _tiny()
    logits = _logits(model)
    cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"))  # weights -> meta + offload hook
    assert_same_function(_logits(model), logits)
    with pytest.raises(ValueError, match=r"on the meta device.*offload.*cannot prune offloaded blocks"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB)
    assert_same_function(_logits(model), logits)  # still the same working model


# ------------------------------------------------------------------------------------------ preflight
def test_calibration_checks_before_pruning():
    model = _tiny()
    before, logits = _state(model), _logits(model)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 96\).*from 1 to 500"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=torch.arange(64).view(4, 16).index_fill_(1, torch.tensor([0]), 500))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 96\)"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=torch.full((4, 16), -1))
    with pytest.raises(TypeError, match="integer tensor"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=torch.zeros(4, 16))
    with pytest.raises(ValueError, match=r"windows of 80 tokens are longer than .*max_position_embeddings=64"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=torch.randint(0, VOCAB, (2, 80)))
    with pytest.raises(ValueError, match=r"max_position_embeddings=64"):  # the config's seqlen, before reading data
        SlimGPTPruner(_cfg(dataset="wikitext2", seqlen=128)).prune_model(model)
    _assert_untouched(model, before, logits)


def test_reassigned_config_fields_are_validated_at_prune_time():
    model = _tiny()
    pruner = SlimGPTPruner(_cfg())
    pruner.config.compensate = "False"  # a truthy string, assigned after construction
    with pytest.raises(TypeError, match="compensate must be a bool"):
        pruner.prune_model(model, calibration=CALIB)


def test_export_format_is_checked_against_the_plan_before_pruning(tmp_path):
    model = _tiny()
    before, logits = _state(model), _logits(model)
    with pytest.raises(ExportError, match="same sizes in every layer"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB, export_format="uniform")
    with pytest.raises(ExportError, match="extra output biases"):  # SlimLLM's regression adds biases
        SlimGPTPruner(SlimLLMConfig(pruning_ratio=0.3, schedule="uniform", dataset=None)).prune_model(
            model, calibration=CALIB, export_format="padded")
    with pytest.raises(ValueError, match="export_format must be one of"):
        SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB, export_format="onnx")
    _assert_untouched(model, before, logits)
    # what the dry run accepts, the real save writes in that format
    pruner = SlimGPTPruner(_cfg(schedule="uniform"))
    assert pruner.preflight(model, calibration=CALIB, export_format="uniform") is not None
    pruner.prune_model(model, calibration=CALIB, export_format="uniform")
    assert pruner.save(model, tmp_path / "u", export_format="uniform").format == "uniform"


def test_output_folder_checks_before_pruning(tmp_path):
    src = tmp_path / "dense"
    _tiny().save_pretrained(src)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    before, logits = _state(model), _logits(model)
    pruner = SlimGPTPruner(_cfg())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    for bad, match in [(src, "model's own source"), (src / "slim", "lies inside it"), (tmp_path, "contains the model"),
                       (tmp_path / "full", "not empty")]:
        with pytest.raises((ValueError, FileExistsError), match=match):
            pruner.prune_model(model, calibration=CALIB, save_dir=bad)
    with pytest.raises(ValueError, match="contains the model's source"):
        pruner.prune_model(model, calibration=CALIB, save_dir=tmp_path, overwrite=True)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):  # unwritable: its parent is a file
        pruner.prune_model(model, calibration=CALIB, save_dir=tmp_path / "a-file" / "out")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            pruner.prune_model(model, calibration=CALIB, save_dir=ro / "out")
    with pytest.raises(OSError, match="not enough disk space"):
        check_output_dir(tmp_path / "big", needed_bytes=1 << 60)
    _assert_untouched(model, before, logits)


# ------------------------------------------------------------------------------------------ provenance
def test_explicit_calibration_is_recorded_by_shape_and_hash():
    import hashlib

    model = _tiny()
    SlimGPTPruner(_cfg(dataset="wikitext2", num_samples=128, seqlen=64)).prune_model(model, calibration=CALIB)
    rec = PruningRecord.of(model.config)
    cal = rec.calibration
    assert cal["dataset"] == {"type": "token_ids", "shape": [8, 24]}
    assert (cal["num_samples"], cal["seqlen"]) == (8, 24) and "split" not in cal and "seed" not in cal
    assert cal["token_ids_sha256"] == hashlib.sha256(CALIB.long().numpy().tobytes()).hexdigest()
    assert not {"num_samples", "seqlen", "dataset_split", "dataset"} & set(rec.config)  # no stale 128/2048


def test_local_file_calibration_records_no_path_and_no_split(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(VOCAB - 1)]
    tk = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    text = tmp_path / "secret-dir" / "calib.txt"
    text.parent.mkdir()
    text.write_text(" ".join(words[i % len(words)] for i in range(3000)), encoding="utf-8")
    model = _tiny()
    SlimGPTPruner(_cfg(dataset=str(text), num_samples=4, seqlen=32, dataset_split="validation")).prune_model(model, tok)
    cal = PruningRecord.of(model.config).calibration
    assert cal["dataset"]["type"] == "file" and cal["dataset"]["name"] == "calib.txt"
    assert len(cal["dataset"]["sha256"]) == 64 and "split" not in cal and cal["seed"] == 0
    out = save_pruned_model(model, tmp_path / "slim").path
    for f in ("config.json", "README.md"):
        content = (out / f).read_text(encoding="utf-8")
        assert str(tmp_path) not in content and "secret-dir" not in content, f


def test_a_second_prune_keeps_the_history_and_the_cumulative_ratio():
    model = _tiny()
    p1 = SlimGPTPruner(_cfg(pruning_ratio=0.2, schedule="uniform"))
    p1.prune_model(model, calibration=CALIB)
    base = p1.summary.block_params_before
    p2 = SlimGPTPruner(_cfg(pruning_ratio=0.25, schedule="uniform", seed=3))
    p2.prune_model(model, calibration=CALIB[:4])
    rec = PruningRecord.of(model.config)
    assert rec.base_block_params == base
    assert rec.cumulative_ratio == pytest.approx(1 - p2.summary.block_params_after / base, abs=1e-6)
    assert rec.cumulative_ratio > rec.achieved_ratio > 0.2
    assert [h["pruning_ratio"] for h in rec.history] == [0.2]
    assert rec.history[0]["calibration"]["num_samples"] == 8 and rec.calibration["num_samples"] == 4
    assert rec.history[0]["layers"] != rec.layers
    assert rec.base_dims == {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}


def test_records_and_configs_are_standard_json():
    model = _tiny()
    SlimGPTPruner(_cfg(meta={"note": "ok", "ratio": 0.5})).prune_model(model, calibration=CALIB)
    json.dumps(PruningRecord.of(model.config).to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="standard-JSON"):
        _cfg(meta={"x": float("nan")})
    with pytest.raises(ValueError, match="standard-JSON"):
        _cfg(meta={"x": object()})


# ------------------------------------------------------------------------------------------ saving
def test_card_has_no_absolute_paths(tmp_path):
    src = tmp_path / "where" / "my-base-model"
    _tiny().save_pretrained(src)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB)
    out = save_pruned_model(model, tmp_path / "slim").path
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "my-base-model" in card
    assert str(tmp_path) not in card and "/where/" not in card
    assert str(tmp_path) not in (out / "config.json").read_text(encoding="utf-8")


def _pruned(seed: int = 0):
    model = _tiny()
    SlimGPTPruner(_cfg(seed=seed, schedule="uniform", pruning_ratio=0.2 + 0.1 * seed)).prune_model(
        model, calibration=CALIB)
    return model


def _loads_as(path: Path, model) -> bool:
    from transformers import AutoModelForCausalLM

    got, ref = logits64(AutoModelForCausalLM.from_pretrained(path).eval(), PROMPT), _logits(model)
    return bool((got - ref).abs().max() <= SAME_FUNCTION_RTOL * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("step", ["write", "exchange", "cleanup"])
def test_an_interrupted_overwrite_always_leaves_a_loadable_checkpoint(step, tmp_path, monkeypatch):
    from optimum_slimgpt import saving

    old, new = _pruned(0), _pruned(1)
    out = tmp_path / "out"
    save_pruned_model(old, out)
    if step == "write":  # interrupted while the new checkpoint is written into the temporary folder
        monkeypatch.setattr(saving, "_checkpoint_params", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt()))
    elif step == "exchange":  # interrupted at the swap itself, before it happened
        monkeypatch.setattr(saving, "_exchange", lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt()))
    else:  # interrupted after the swap, while the old checkpoint is being deleted
        real_rmtree = saving.shutil.rmtree

        def rmtree(path, *a, **k):
            if ".tmp-" in str(path):
                raise KeyboardInterrupt()
            return real_rmtree(path, *a, **k)

        monkeypatch.setattr(saving.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_pruned_model(new, out, overwrite=True)
    monkeypatch.undo()
    assert _loads_as(out, new if step == "cleanup" else old)


def test_the_two_rename_fallback_is_repaired_by_the_next_save(tmp_path, monkeypatch):
    """Without an atomic exchange (some file systems), a crash between the renames leaves the old checkpoint
    moved aside; the next save (or clean_stale_work_dirs) puts it back before doing anything else."""
    from optimum_slimgpt import saving

    old = _pruned(0)
    out = tmp_path / "out"
    save_pruned_model(old, out)
    aside = tmp_path / f".out.old-{saving._HOST}.999999999-abc"  # as a dead process leaves it
    os.rename(out, aside)
    assert not out.exists()
    clean_stale_work_dirs(out)
    assert _loads_as(out, old) and not aside.exists()
    # the fallback path itself, end to end
    monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    new = _pruned(1)
    save_pruned_model(new, out, overwrite=True)
    assert _loads_as(out, new)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, sys.argv[3])
    from test_robustness import _pruned
    from optimum_slimgpt import saving
    model = _pruned(1)
    sig = getattr(signal, sys.argv[2])
    def die(folder):  # the checkpoint is complete in the temporary folder: die before the swap
        os.kill(os.getpid(), sig)
        return 0
    saving._checkpoint_params = die
    saving.save_pruned_model(model, sys.argv[1], overwrite=True)
""")


def test_killed_saves_leave_no_temporary_folder_behind(tmp_path):
    """A save killed with SIGTERM (handled) and one killed with SIGKILL (not handleable), in two processes run
    side by side; both die after the new checkpoint is complete in the temporary folder, before the swap."""
    old = _pruned(0)
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    env = checkout_env(OMP_NUM_THREADS="1")
    procs = {}
    for sig in ("SIGTERM", "SIGKILL"):
        (tmp_path / sig).mkdir()
        save_pruned_model(old, tmp_path / sig / "out")
        procs[sig] = subprocess.Popen([sys.executable, str(script), str(tmp_path / sig / "out"), sig,
                                       str(Path(__file__).parent)], env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for sig, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -getattr(signal, sig), err[-2000:]
        out = tmp_path / sig / "out"
        stale = [p for p in out.parent.iterdir() if p.name.startswith(".out.tmp-")]
        assert _loads_as(out, old)  # the old checkpoint is untouched
        if sig == "SIGTERM":  # handled: the temporary folder is removed, then the process dies by the signal
            assert stale == []
            continue
        assert len(stale) == 1 and any(stale[0].glob("*.safetensors"))  # SIGKILL cannot be handled...
        new = _pruned(1)
        save_pruned_model(new, out, overwrite=True)  # ...the next save removes it
        assert not stale[0].exists() and _loads_as(out, new)


def test_a_checkpoint_with_a_missing_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = _tiny()
    SlimGPTPruner(_cfg()).prune_model(model, calibration=CALIB)
    out = save_pruned_model(model, tmp_path / "slim", export_format="per_layer").path
    f = out / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): model.layers.1.mlp.down_proj.weight"):
        AutoModelForCausalLM.from_pretrained(out)
    lenient = AutoModelForCausalLM.from_pretrained(out, allow_missing_weights=True)
    assert lenient.model.layers[1].mlp.down_proj.weight.shape == model.model.layers[1].mlp.down_proj.weight.shape
