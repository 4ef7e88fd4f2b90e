"""Shared fixtures: real models from ../shared (loaded once per session) and test options."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from helpers import SMOLLM2_DIR, SMOLLM2_GGUF, STORIES_BIN, have_shared, load_stories260k  # noqa: E402

from optimum_slimgpt.loading import gguf_parsed_once  # noqa: E402


def _xdist_workers() -> int:
    """How many pytest-xdist workers run the suite (1 without xdist, or with ``-n 0``)."""
    value = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def _requested_threads() -> int:
    """The threads asked for: ``SLIMGPT_TEST_THREADS``, else ``OMP_NUM_THREADS`` (0: not set)."""
    for var in ("SLIMGPT_TEST_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 0


def _test_threads() -> int:
    """Threads for the suite (per worker): the threads asked for (``SLIMGPT_TEST_THREADS``, else
    ``OMP_NUM_THREADS``), else this worker's share of the cores, at most 2. The suite must pass under 1 and 2 threads
    alike (different reduction orders): run it with ``OMP_NUM_THREADS=1`` and ``=2``."""
    return _requested_threads() or max(1, min(2, (os.cpu_count() or 1) // _xdist_workers()))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): as many workers as the cores hold at the threads asked for (1 each by
    default), at most 2. ``OMP_NUM_THREADS=2`` on 2 cores gives one worker of 2 threads: two would put 4 threads on 2
    cores, and OpenMP threads that wait for each other on shared cores ran the suite 2.8x slower. Each worker loads
    the shared models (SmolLM2, its 20% prune) it needs once, so more workers repeat that work; on the 2-core
    machines the suite is budgeted for, 2 workers took it from 191 s (one process, 2 threads) to 140-168 s."""
    return max(1, min(2, (os.cpu_count() or 1) // (_requested_threads() or 1)))


torch.set_num_threads(_test_threads())
if _xdist_workers() > 1:
    # child processes (CLI runs, lm-eval, remote-code loads) take this worker's share too, not every core
    os.environ.setdefault("OMP_NUM_THREADS", str(_test_threads()))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def _smollm2_dense():
    if not have_shared(SMOLLM2_DIR / SMOLLM2_GGUF):
        pytest.skip("../shared/models/smollm2-135m-instruct-q4_1 is not available")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with gguf_parsed_once():  # the loader's own: the GGUF file is parsed once
            tok = AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    return model.eval(), tok


@pytest.fixture(scope="session")
def smollm2(_smollm2_dense):
    """(model, tokenizer) of SmolLM2-135M-Instruct, shared by the session: do not modify the model."""
    return _smollm2_dense


@pytest.fixture()
def smollm2_copy(_smollm2_dense):
    """A private deep copy of SmolLM2-135M (safe to prune) and its tokenizer."""
    model, tok = _smollm2_dense
    return copy.deepcopy(model), tok


@pytest.fixture(scope="session")
def smollm2_pruned20(_smollm2_dense):
    """(model, tokenizer, pruner): a copy of SmolLM2-135M pruned 20% by SlimGPT on 8 x 256 WikiText-2 validation
    tokens, shared by the session (the perplexity test in test_pruner, the checkpoint tests in test_saving, the
    llama.cpp parity test in test_gguf): do not modify the model. 8 windows, not more: the prune's cost grows with the
    calibration tokens (about 22 s for 16 x 256 on 2 idle cores), and 8 x 256 keeps the perplexity test's bound
    meaningful (its docstring has the numbers)."""
    from helpers import WIKITEXT_DIR
    from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner

    if not have_shared(WIKITEXT_DIR / "wiki.valid.tokens"):
        pytest.skip("../shared WikiText-2 missing")
    model, tok = _smollm2_dense
    rows = (WIKITEXT_DIR / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.2, dataset=rows, num_samples=8, seqlen=256, batch_size=8))
    return pruner.prune_model(copy.deepcopy(model), tok), tok, pruner


@pytest.fixture(scope="session")
def _stories_dense():
    if not have_shared(STORIES_BIN):
        pytest.skip("../shared/models/stories260K is not available")
    return load_stories260k()


@pytest.fixture()
def stories(_stories_dense):
    """A private deep copy of stories260K as LlamaForCausalLM (fp32)."""
    return copy.deepcopy(_stories_dense)


@pytest.fixture(scope="session")
def stories_stream():
    """60k TinyStories tokens (1-D), encoded with stories260K's own vocabulary."""
    from helpers import TINYSTORIES_TXT, stories_tokens

    if not have_shared(TINYSTORIES_TXT, STORIES_BIN):
        pytest.skip("../shared TinyStories data is not available")
    return stories_tokens(60_000)
