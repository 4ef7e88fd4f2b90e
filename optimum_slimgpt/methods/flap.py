"""FLAP: fluctuation scores, globally adaptive structure, bias compensation (a baseline; math in
:mod:`optimum_slimgpt.solvers.flap`).

Differences from the official code (``CASIA-IVA-Lab/FLAP``, ``AL-AM`` + ``WIFV``), all noted in
``docs/algorithms.md``:

* GQA: the global threshold gives each layer a number of query heads, rounded to the nearest structure the
  layout allows (whole KV groups, equal query heads per kept group); inside the layer the KV groups and heads
  with the largest scores are kept (:func:`~optimum_slimgpt.solvers.flap.select_heads_by_score`). The official
  code has no GQA support.
* The per-layer sizes come from the dense model, as in FLAP; the heads/channels kept and the bias are then
  computed, block after block, on the inputs the block sees once the blocks before it are pruned (the package's
  one block loop), not on the dense inputs: the mean that the bias replaces is the one the pruned model feeds.
* The variance is over all calibration tokens (the official code's running update weights each sample's mean).
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import FLAPConfig
from ..solvers.flap import (
    FlapLayerScores,
    fluctuation_scores,
    global_allocation,
    head_scores,
    mean_shift_bias,
    select_heads_by_score,
    standardize,
)
from ..solvers.obs import reconstruction_error
from .base import HESSIAN, AttentionTask, FFNTask, PruneResult, PruningMethod, register_method


def _variance(acc) -> torch.Tensor:
    return acc.covariance().diagonal()


def _cut(task, keep: torch.Tensor, config: FLAPConfig):
    """(W with the removed columns zero, new bias or None, relative calibration error)."""
    acc = task.stats["hessian"]
    W0 = task.W
    W = W0 * keep.to(W0.dtype)
    bias = mean_shift_bias(W0, task.bias, acc.mean(), ~keep) if config.bias_compensation else None
    H = acc.hessian()
    if bias is None:
        err, base = reconstruction_error(W0, W, H)
    else:  # the affine error ||(W0 − W) x + (b0 − b)||² from the moments
        from ..solvers.hessian import affine_hessian

        b0 = torch.zeros_like(bias) if task.bias is None else task.bias
        Ha = affine_hessian(H, acc.mean())
        err, base = reconstruction_error(torch.cat([W0, b0[:, None]], 1), torch.cat([W, bias[:, None]], 1), Ha)
    return W, bias, err / max(base, 1e-30)


@register_method(FLAPConfig)
class FLAPMethod(PruningMethod):
    def output_bias(self, config: FLAPConfig) -> bool:
        return config.bias_compensation

    def observers(self, part, config):
        return {"hessian": HESSIAN}  # the input mean and variance (and the second moments for the error report)

    # --------------------------------------------------------------- global allocation (dense model)
    def plans_globally(self, config: FLAPConfig) -> bool:
        return config.global_allocation

    def dense_scores(self, part, W, stats, num_heads, head_dim, config):
        s = fluctuation_scores(W, _variance(stats["hessian"]), square=part == "attention")
        s = standardize(s)
        return head_scores(s, head_dim) if part == "attention" else s

    def allocate(self, scores, geoms, config: FLAPConfig):
        layers = [FlapLayerScores(d.get("attention"), d.get("ffn")) for d in scores]
        return global_allocation(layers, geoms, config.pruning_ratio, min_heads=config.min_heads,
                                 min_channels=config.min_channels, channel_multiple=config.channel_multiple,
                                 kv_head_multiple=config.kv_head_multiple)

    # --------------------------------------------------------------- per block
    def prune_attention(self, task: AttentionTask) -> PruneResult:
        task = dataclasses.replace(task, W=task.W.float())  # the model's tensor: float32 math on a copy
        c: FLAPConfig = task.config
        s = fluctuation_scores(task.W, _variance(task.stats["hessian"]), square=True)
        hs = head_scores(standardize(s), task.head_dim)
        kept, kept_kv, option = select_heads_by_score(hs, task.num_kv_heads, task.options)
        keep = torch.zeros(task.W.shape[1], dtype=torch.bool, device=task.W.device)
        for h in kept:
            keep[h * task.head_dim : (h + 1) * task.head_dim] = True
        W, bias, err = _cut(task, keep, c)
        return PruneResult(kept, W, kept_kv=kept_kv, bias=bias, error=err, option=option)

    def prune_ffn(self, task: FFNTask) -> PruneResult:
        task = dataclasses.replace(task, W=task.W.float())  # the model's tensor: float32 math on a copy
        c: FLAPConfig = task.config
        s = fluctuation_scores(task.W, _variance(task.stats["hessian"]))
        n = task.W.shape[1]
        order = torch.argsort(s, descending=True, stable=True)
        kept = sorted(order[: n - task.num_remove].tolist())
        keep = torch.zeros(n, dtype=torch.bool, device=task.W.device)
        keep[torch.tensor(kept, dtype=torch.long, device=task.W.device)] = True
        W, bias, err = _cut(task, keep, c)
        return PruneResult(kept, W, bias=bias, error=err)
