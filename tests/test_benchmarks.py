"""The benchmark scripts run (tiny settings): a CPU smoke run of ``benchmarks/speed.py``, and the same on a GPU
where one exists (marked ``gpu``: skipped without CUDA). Timings are never asserted, only that the script
prunes to the requested ratio and reports every phase."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"calibration_data", "capture", "hessian_attn", "head_solve", "hessian_ffn", "ffn_solve", "surgery",
          "forward_out"}


def _speed(tmp_path: Path, *extra: str) -> list[dict]:
    """Run ``benchmarks/speed.py`` as ``__main__`` in this process (its command line is the interface under test;
    a subprocess would only add the ~10 s of importing torch, transformers and the package again)."""
    out = tmp_path / "speed.jsonl"
    argv = [str(ROOT / "benchmarks" / "speed.py"), "--shape", "tiny", "--samples", "4", "--seqlen", "64", "--ratio",
            "0.2", "0.5", "--decode", "--decode-batch", "1", "2", "--new-tokens", "4", "--out", str(out), *extra]
    saved = sys.argv, torch.get_rng_state()
    try:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = saved[0]
        torch.set_rng_state(saved[1])
        hf_logging.enable_progress_bar()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_speed_script_cpu_smoke(tmp_path):
    rows = _speed(tmp_path, "--device", "cpu", "--dtype", "float32")
    assert [r["ratio"] for r in rows] == [0.2, 0.5]
    for r in rows:
        assert abs(r["removed"] - r["ratio"]) < 0.01
        assert set(r["timings"]) >= PHASES and r["prune_seconds"] > 0
        assert [d["batch"] for d in r["decode_pruned"]] == [1, 2] and len(r["decode_speedup"]) == 2


@pytest.mark.gpu
def test_speed_script_gpu_smoke(tmp_path):
    rows = _speed(tmp_path, "--device", "cuda", "--dtype", "bfloat16")
    for r in rows:
        assert abs(r["removed"] - r["ratio"]) < 0.01 and r["peak_gpu_gib"] > 0
    # model on the CPU, blocks pruned on the GPU
    rows = _speed(tmp_path, "--device", "cuda", "--model-device", "cpu", "--dtype", "bfloat16",
                  "--offload-activations")
    assert all(abs(r["removed"] - r["ratio"]) < 0.01 for r in rows)


def test_quality_mean_accuracy_and_its_standard_error():
    """benchmarks/quality.py's mean over tasks: the mean of the accuracies, s.e. sqrt(Σ se²) / T."""
    q = runpy.run_path(str(ROOT / "benchmarks" / "quality.py"))
    res = {"piqa": {"acc": 0.6, "acc_norm": 0.5, "acc_stderr": 0.03, "acc_norm_stderr": 0.04, "n": 100},
           "boolq": {"acc": 0.4, "acc_norm": 0.7, "acc_stderr": 0.04, "acc_norm_stderr": 0.03, "n": 100}}
    m = q["mean_accuracy"](res)
    assert (m["acc"], m["acc_norm"], m["tasks"]) == (0.5, 0.6, ["piqa", "boolq"])
    assert m["acc_stderr"] == m["acc_norm_stderr"] == 0.025
    table = q["big_table"]({"affine-50": {"ppl": 50.0, "zero_shot_big": res}})
    assert "0.5000 ± 0.0250" in table and "affine-50" in table
    assert set(q["ZERO_SHOT_BIG"]) == {"piqa", "hellaswag", "arc_easy", "boolq", "openbook_qa"}


def test_scorer_agreement_lists_every_disagreeing_item():
    """benchmarks/scorer_agreement.py's per-item comparison: choices, acc / acc_norm of both scorers, prompt
    identity, and the items where a choice differs, with both scorers' log-likelihoods."""
    from optimum_slimgpt.evaluation import MCItem

    a = runpy.run_path(str(ROOT / "benchmarks" / "scorer_agreement.py"))
    items = [MCItem("Q1\nAnswer:", [" a", " bbbb"], 0), MCItem("Q2\nAnswer:", [" a", " bbbb"], 1)]
    builtin = [[-1.0, -3.0], [-2.0, -3.0]]  # acc picks 0 and 0
    lm = [[-1.0, -3.0], [-3.5, -3.0]]  # acc picks 0 and 1: the second item disagrees
    samples = [{"doc_id": i, "target": it.gold, "arguments": [(it.context, c) for c in it.choices],
                "filtered_resps": [(v, False) for v in ll]} for i, (it, ll) in enumerate(zip(items, lm))]
    samples[1]["arguments"][0] = ("Q2 changed\nAnswer:", " a")
    row = a["compare_task"](items, builtin, samples, {"acc,none": 1.0, "acc_norm,none": 0.5})
    assert row["n"] == 2 and row["prompts_identical"] == 1
    assert row["acc"] == {"builtin": 0.5, "lm_eval": 1.0, "lm_eval_reported": 1.0}
    assert row["same_acc_choice"] == 0.5 and row["max_abs_loglik_diff"] == 1.5
    (d,) = row["disagreements"]
    assert d["doc_id"] == 1 and d["builtin_ll"] == [-2.0, -3.0] and d["lm_eval_ll"] == [-3.5, -3.0]
    assert d["builtin_pick"][0] == 0 and d["lm_eval_pick"][0] == 1
