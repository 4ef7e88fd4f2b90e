"""Time estimates before the work: the prune probe (stories260K), the suggestion of smaller settings, perplexity."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import STORIES_BIN, have_shared
from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner
from optimum_slimgpt.estimate import PruneEstimate, _suggest, estimate_prune

needs_stories = pytest.mark.skipif(not have_shared(STORIES_BIN), reason="../shared/models/stories260K is missing")


def _est(**kw) -> PruneEstimate:
    base = dict(total=0.0, generation=0.0, capture=0.0, blocks=0.0, dense_pass=0.0, num_blocks=30, num_samples=128,
                seqlen=2048, device="cpu", probe_seconds=1.0)
    base.update(kw)
    return PruneEstimate(**base)


def test_the_suggestion_is_the_largest_calibration_that_fits():
    # 3600 s for 128 x 2048 tokens, 60 s of it solves: 3540 s / 262144 tokens
    est = _est(total=3600.0, fixed=60.0, per_token=3540.0 / (128 * 2048))
    s = _suggest(est, 600.0)
    assert est.for_settings(s["num_samples"], s["seqlen"]) == pytest.approx(s["seconds"]) and s["seconds"] <= 540
    tokens = s["num_samples"] * s["seqlen"]
    assert tokens == 32768  # 60 + 32768 * 0.0135 = 502.5 s; the next size up (65536 tokens) needs 945 s
    assert s["seqlen"] == 512  # of the equal sizes, the windows nearest 512 tokens
    assert "note" not in s
    est.suggestion = s
    assert "--samples" in est.message() and "32,768 calibration tokens instead of 262,144" in est.message()
    # when the solves alone do not fit, say that a GPU is the way
    slow = _est(total=4000.0, fixed=3000.0, per_token=1000.0 / (128 * 2048))
    assert "GPU" in _suggest(slow, 600.0)["note"]


@needs_stories
def test_the_probe_leaves_the_model_alone_and_suggests_only_past_the_budget(stories, stories_stream):
    cal = stories_stream[: 16 * 128].view(16, 128)
    before = {k: v.clone() for k, v in stories.state_dict().items()}
    pruner = SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.3, batch_size=8))
    est = pruner.estimate(stories, calibration=cal)
    assert all(torch.equal(before[k], v) for k, v in stories.state_dict().items())
    assert est.num_blocks == 5 and est.num_samples == 16 and est.seqlen == 128 and est.generation == 0
    assert est.total == pytest.approx(est.capture + est.blocks) and est.blocks > 0 and est.suggestion is None
    assert est.total == pytest.approx(est.for_settings(16, 128))
    tight = estimate_prune(SlimGPTPruner(SlimGPTConfig(pruning_ratio=0.3, batch_size=8, num_samples=16,
                                                       seqlen=128, dataset=cal)), stories, budget=0.0)
    assert tight.suggestion is not None and tight.suggestion["num_samples"] <= 16  # dataset=tensor: suggested
    pruner.prune_model(stories, calibration=cal)  # the pruner still runs after its probe
    assert pruner.summary.achieved_ratio == pytest.approx(0.3, abs=0.05)


@needs_stories
def test_perplexity_logs_its_estimate_after_the_first_batch(stories, stories_stream, caplog):
    from optimum_slimgpt.evaluation import perplexity

    with caplog.at_level(logging.INFO, logger="optimum_slimgpt.evaluation"):
        perplexity(stories, None, stories_stream[:1024], seqlen=128)
    assert "perplexity: 8 windows of 128 tokens, about" in caplog.text
