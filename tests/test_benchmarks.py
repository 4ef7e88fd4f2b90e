"""The benchmark scripts run (tiny settings): a CPU smoke run of ``benchmarks/speed.py``, and the same on a GPU
where one exists (marked ``gpu``: skipped without CUDA); ``benchmarks/gpu_suite.sh --tiny`` end to end, and its
time budgets. Timings are never asserted, only that the scripts prune to the requested ratio and report every
phase with positive times."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------------------------- benchmarks/gpu_suite.sh
def _positive(d: dict, keys) -> None:
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, (k, d[k])


def _slow_part(rec, x):
    rec.set("first_phase", {"seconds": x})
    time.sleep(60)


def _failing_part(rec, x):
    rec.set("first_phase", {"seconds": x})
    raise ValueError("a broken phase")


def _quick_part(rec, x):
    rec.set("value", x)


def test_gpu_suite_a_part_over_its_budget_is_stopped_and_keeps_what_it_measured(tmp_path):
    """One slow or failing part cannot eat the others' time: it is stopped at its budget (or fails alone), what it
    recorded stays in the JSON, and the next parts run."""
    suite = runpy.run_path(str(ROOT / "benchmarks" / "gpu_suite.py"))
    out, cleaned = tmp_path / "r.json", []
    t = time.monotonic()
    res = suite["run_parts"]([("slow", _slow_part, (0.5,), 1.0), ("broken", _failing_part, (0.25,), 30.0),
                              ("quick", _quick_part, (7,), 30.0)], {"settings": {}}, out, 120.0, tmp_path,
                             poll_s=0.2, cleanup=cleaned.append)
    assert time.monotonic() - t < 30  # not the slow part's 60 s
    slow, broken, quick = (res["parts"][k] for k in ("slow", "broken", "quick"))
    assert slow["status"] == "timeout" and slow["first_phase"] == {"seconds": 0.5} and slow["budget_s"] == 1.0
    assert 1.0 <= slow["wall_s"] < 15
    assert broken["status"] == "error" and "ValueError: a broken phase" in broken["error"]
    assert broken["first_phase"] == {"seconds": 0.25}
    assert quick["status"] == "ok" and quick["value"] == 7
    assert json.loads(out.read_text()) == res and cleaned == ["slow", "broken", "quick"]
    # the total budget: a part that would start after it is spent is skipped, not started
    res = suite["run_parts"]([("slow", _slow_part, (0.5,), 100.0), ("quick", _quick_part, (7,), 30.0)], {}, out, 1.5,
                             tmp_path, poll_s=0.2)
    assert res["parts"]["slow"]["status"] == "timeout" and res["parts"]["quick"]["status"] == "skipped"


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


@pytest.fixture(scope="module", autouse=True)
def _gpu_suite_tiny_run(tmp_path_factory):
    """``bash benchmarks/gpu_suite.sh --tiny``, started when this module starts: the run is mostly its Python
    importing torch and transformers on one core, while the module's other tests run beside it;
    ``test_gpu_suite_tiny_runs_every_part_on_the_cpu`` (last in the module) waits for it. ``(folder, process)``."""
    tmp_path = tmp_path_factory.mktemp("gpu_suite_tiny")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny", str(tmp_path / "suite.json"), "--workdir",
           str(tmp_path / "work")]
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:  # a full pipe would block it
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield tmp_path, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gpu_suite_tiny_runs_every_part_on_the_cpu(_gpu_suite_tiny_run):
    """The GPU run's script, end to end on tiny shapes on the CPU: one JSON file with every part's phases."""
    tmp_path, proc = _gpu_suite_tiny_run
    out = tmp_path / "suite.json"
    proc.wait(timeout=240)
    assert proc.returncode == 0, (tmp_path / "stdout").read_text()[-2000:] + (tmp_path / "stderr").read_text()[-4000:]
    res = json.loads(out.read_text())
    st = res["settings"]
    assert st["tiny"] is True and st["device"] == "cpu" and (st["samples"], st["seqlen"]) == (4, 64)
    assert "4 x 64" in st["calibration"] and "128 x 2048" in st["calibration"]
    assert res["host"]["torch"] == torch.__version__ and res["finished"] >= res["started"]
    parts = res["parts"]
    assert list(parts) == ["llama-7b", "llama3-8b", "llama-13b-streamed"]
    assert st["shapes"]["llama-7b"]["shape"] == "tiny-mha" and st["shapes"]["llama3-8b"]["shape"] == "tiny"
    for name in ("llama-7b", "llama3-8b"):
        p = parts[name]
        assert p["status"] == "ok" and 0 < p["wall_s"] <= p["budget_s"]
        prune = p["prune"]
        _positive(prune, ["capture_s", "hessians_s", "solves_s", "surgery_s", "block_outputs_s", "total_s"])
        phases = sum(prune[k] for k in ("capture_s", "hessians_s", "solves_s", "surgery_s", "block_outputs_s"))
        assert phases <= prune["total_s"]  # the phases are intervals inside the timed prune
        assert abs(prune["removed"] - st["ratio"]) < 0.01 and prune["params_after"] < p["build"]["params"]
        assert prune["peak_gpu_gib"] is None  # CPU: no GPU memory to report; the process's RSS instead
        _positive(p, ["peak_rss_gib"])
        assert p["progress"]["blocks_done"] == p["progress"]["blocks"] == 4
        times = p["progress"]["seconds_at_each_block"]
        assert times == sorted(times) and times[0] > 0
        for key in ("decode_dense", "decode_pruned"):
            assert [d["batch"] for d in p[key]] == st["decode_batch"]
            for d in p[key]:
                _positive(d, ["tokens_per_s", "seconds", "ms_per_step"])
        for sp, d, q in zip(p["decode_speedup"], p["decode_dense"], p["decode_pruned"]):
            assert sp == pytest.approx(q["tokens_per_s"] / d["tokens_per_s"], rel=0.01)  # tokens/s carry 1 decimal
    s = parts["llama-13b-streamed"]
    assert s["status"] == "ok", s
    _positive(s["write"], ["params", "checkpoint_bytes", "shards"])
    assert s["write"]["checkpoint_bytes"] == 2 * s["write"]["params"]  # bf16
    _positive(s["prune"], ["total_s", "params_after", "bytes_after"])
    assert s["prune"]["format"] == "per_layer" and s["prune"]["params_after"] < s["prune"]["params_before"]
    assert s["progress"]["blocks_done"] == 4
    assert not (tmp_path / "work").exists()  # the streamed checkpoint and the parts' files are gone
