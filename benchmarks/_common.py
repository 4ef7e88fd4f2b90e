"""Shared by the SmolLM2 benchmark scripts: where the model and data are, loading, one pruned row."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from optimum_slimgpt import PruningConfig, SlimGPTPruner

SHARED = Path(os.environ.get("SLIMGPT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MODEL_DIR = SHARED / "models" / "smollm2-135m-instruct-q4_1"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI = SHARED / "data" / "wikitext-2"


def load_smollm2(threads: int = 2):
    """(dense fp32 model in eval mode, tokenizer); seeds torch and silences the progress bars."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    dense = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    return dense, tok


def prune_copy(dense, tok, settings: dict, calib_rows, num_samples: int, seqlen: int):
    """Prune a deep copy of ``dense`` with the config of ``settings["method"]`` (default ``"slimgpt"``) built from
    the other settings (``settings["dataset"]`` overrides the calibration rows); returns the model, the pruner and
    the JSON fields describing the run."""
    model = copy.deepcopy(dense)
    kw = dict(settings)
    dataset = kw.pop("dataset", calib_rows)
    method = kw.pop("method", "slimgpt")
    config = PruningConfig.for_method(method, dataset=dataset, num_samples=num_samples, seqlen=seqlen, seed=0, **kw)
    pruner = SlimGPTPruner(config)
    pruner.prune_model(model, tok)
    s = pruner.summary
    row = dict(config=settings, removed=round(s.achieved_ratio, 4), prune_seconds=round(s.seconds, 1),
               layer_ratios=[round(lp.ratio, 3) for lp in pruner.plan.layers] if pruner.plan else None,
               heads=[r.heads[1] for r in s.layers], kv_heads=[r.kv_heads[1] for r in s.layers],
               channels=[r.channels[1] for r in s.layers], timings={k: round(v, 1) for k, v in s.timings.items()})
    if pruner.layer_scores is not None:
        row["layer_scores"] = [round(x, 4) for x in pruner.layer_scores]
    return model, pruner, row


def setting_row(dense, tok, name: str, settings: dict | None, calib_rows, num_samples: int, seqlen: int):
    """(model, JSON row) of one benchmark setting: ``dense`` itself when ``settings`` is None, else a pruned
    copy (:func:`prune_copy`)."""
    if settings is None:
        return dense, {"setting": name, "removed": 0.0, "prune_seconds": 0.0}
    model, _, info = prune_copy(dense, tok, settings, calib_rows, num_samples, seqlen)
    return model, {"setting": name, **info}


def append_row(path, row: dict) -> None:
    """Print a result row and append it to the JSONL file ``path``."""
    print(json.dumps(row), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def searched_profile(path, setting: str) -> list[list[float]]:
    """The explicit per-layer schedule of the last row named ``setting`` (e.g. ``search-reprune-50``) in ``path``, a
    JSON-lines output of ``benchmarks/search.py``; exits with a message when there is none."""
    found = None
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("setting") == setting and "schedule" in row:
                found = row["schedule"]
    if found is None:
        raise SystemExit(f"no '{setting}' row with a schedule in {path}")
    return found
