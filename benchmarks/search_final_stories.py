"""Which final model of ``schedule="search"`` is better: the stitched best candidate or the re-prune at its sizes?

stories260K (real weights, ../shared), 32 x 128 TinyStories calibration tokens, held-out perplexity on the first
16,384 tokens of the TinyStories slice (not used for calibration), at 30% and 50%. One search per ratio
(``search_final="stitched"``); the re-prune is its profile as an explicit schedule (the same model as
``search_final="reprune"``); ``log_increase`` at the ratio the search removed. A minute or two per ratio on one core.

    python benchmarks/search_final_stories.py
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import load_stories260k, stories_tokens  # noqa: E402

from optimum_slimgpt import SlimGPTConfig, SlimGPTPruner  # noqa: E402


@torch.no_grad()
def perplexity(model, held: torch.Tensor) -> float:
    total, n = 0.0, 0
    for b in held.split(16):
        total += float(model(b, labels=b).loss) * b.numel()
        n += b.numel()
    return math.exp(total / n)


def main() -> None:
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    dense, stream = load_stories260k(), stories_tokens(60_000)
    calib = torch.stack([stream[20_000 + i * 128 : 20_000 + (i + 1) * 128] for i in range(32)])
    held = stream[:16_384].view(-1, 256)
    print(f"dense: held-out ppl {perplexity(dense, held):.3f}")
    for ratio in (0.3, 0.5):
        base = dict(dataset=None, num_samples=32, seqlen=128, batch_size=8, pruning_ratio=ratio)
        searched = SlimGPTPruner(SlimGPTConfig(**base, schedule="search", search_generations=60, search_offspring=8,
                                               search_tokens=[256, 1024, 4096], search_survivors=[3, 1],
                                               search_final="stitched"))
        t = time.perf_counter()
        stitched = searched.prune_model(copy.deepcopy(dense), calibration=calib)
        seconds = time.perf_counter() - t
        res = searched.search_result
        reprune = SlimGPTPruner(SlimGPTConfig(**base, schedule=res.schedule)).prune_model(copy.deepcopy(dense),
                                                                                        calibration=calib)
        removed = searched.summary.achieved_ratio
        fixed = SlimGPTPruner(SlimGPTConfig(**dict(base, pruning_ratio=removed)))
        log_inc = fixed.prune_model(copy.deepcopy(dense), calibration=calib)
        print(f"ratio {ratio}: removed {removed:.4f} (log_increase {fixed.summary.achieved_ratio:.4f}); held-out ppl "
              f"stitched {perplexity(stitched, held):.3f}, reprune {perplexity(reprune, held):.3f}, log_increase "
              f"{perplexity(log_inc, held):.3f}; KL {res.evolution.history[0]:.4f} -> {res.evolution.fitness:.4f} in "
              f"{res.evolution.generations} generations, {seconds:.0f} s; profile {res.schedule}")


if __name__ == "__main__":
    main()
