"""Configuration of a pruning run.

:class:`SlimGPTConfig` is a plain, JSON-serialisable dataclass that needs no optional backend to be
built (unlike optimum's ``GPTQQuantizer``). It carries everything that decides the result of a run:
the budget (``pruning_ratio``), how the budget is spread over depth (``schedule``), where the
calibration text comes from and how it is cut, and the solver's numerics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch

SCHEDULES = ("log_increase", "linear_increase", "uniform", "layer_importance")
METHODS = ("slimgpt", "slimllm")
DatasetLike = Union[str, Sequence[str], torch.Tensor, None]


@dataclass
class SlimGPTConfig:
    """What to prune and how.

    Args:
        pruning_ratio: Fraction of the decoder-block parameters (attention and MLP linear layers,
            embeddings and norms excluded) to remove, ``0 <= r < 1``. The per-layer ratios of the
            schedule are *solved* so that the parameters actually removed, after rounding to whole
            heads and channels, match this fraction (within 0.5 percentage points on real models).
        schedule: How the ratio grows with depth (SlimGPT's *Incremental Pruning Ratio*):
            ``"log_increase"`` (default, ``r_i ∝ 1/k + (1 - 1/k) · ln(1+i)/ln(L)``),
            ``"linear_increase"`` (same with ``i/(L-1)``), ``"uniform"``, or an explicit list of
            per-layer ratios (used as given, not rescaled; ``pruning_ratio`` is then only reported).
            ``"layer_importance"`` (SlimLLM's layer-based ratios): the layers are ranked by the mean
            cosine similarity between each block's input and output hidden states on the dense model
            (computed by the pruner from the calibration data before pruning); only the
            ``importance_layers`` most redundant (highest cosine) are pruned, with ratios
            ``∝ softmax(importance_alpha · cos)`` over them, capped by ``max_layer_ratio`` and scaled
            to hit ``pruning_ratio``; the others are left dense.
        schedule_spread: ``k`` above: the ratio of the last layer's ratio to the first layer's.
            The official SlimGPT settings (0.0625 -> 0.25, 0.16 -> 0.64) use 4.
        max_layer_ratio: Upper bound of any layer's ratio.
        dataset: Calibration data: a registered name (``"wikitext2"``, ``"c4"``, ``"ptb"``, see
            :mod:`optimum_slimgpt.calibration`), a path to a local text/json/jsonl/csv/parquet file or a
            dataset folder (read with ``datasets``), a list of strings, or a ``LongTensor`` of token ids
            of shape ``(samples, seqlen)`` (then no tokenizer is needed).
        dataset_split: Split to read for a registered dataset name.
        dataset_text_field: Column holding the text for file/folder datasets.
        num_samples: Number of calibration windows.
        seqlen: Tokens per calibration window.
        batch_size: Windows per forward pass during calibration.
        damp_percent: Damping added to the Hessian diagonal, as a fraction of its mean.
        seed: Seed of the calibration window sampler (and anything else random).
        prune_heads: Remove attention heads.
        prune_ffn: Remove FFN channels.
        min_heads: Floor on query heads kept per layer.
        min_channels: Floor on FFN channels kept per layer.
        channel_multiple: Round the kept FFN channels of every layer to a multiple of this (1 = off).
        ffn_max_group: Largest group of FFN channels removed in one OBS step (Dynamic Group Size).
        ffn_min_group: Smallest group of FFN channels removed in one OBS step.
        compensate: Apply the OBS update to the kept weights (``False`` = plain removal, a baseline).
        head_selection: ``"obs"`` (exact grouped OBS error, default), ``"obs_official"`` (the official
            code's diagonal-of-Cholesky estimate) or ``"magnitude"`` (a baseline: L2 norm of all the
            head's weights, its ``q_proj`` rows and ``o_proj`` columns, plus the ``k/v_proj`` rows when
            a whole KV group goes). With ``compensate=True`` the magnitude choice is still made on the
            unpruned weights and the kept weights get the OBS update.
        channel_selection: ``"obs"`` (default) or ``"magnitude"`` (a baseline: L2 norm of the
            channel's ``gate/up_proj`` rows and ``down_proj`` column).
        method: ``"slimgpt"`` or ``"slimllm"``.
        importance_layers: ``schedule="layer_importance"``: how many layers (the most redundant) are
            pruned. ``None`` (default): ``round(L · (35 + 20·pruning_ratio)/48)``, capped to ``[1, L]``,
            the line through the official SlimLLM settings (26 of 32 layers at 20%, 30 of 32 at 50%).
        importance_alpha: ``schedule="layer_importance"``: softmax temperature ``α`` on the layer
            cosines (official default 10; the official 50% setting uses 7).
        slimllm_recovery: ``method="slimllm"``: fit the per-output scale and bias of ``o_proj`` and
            ``down_proj`` by linear regression after pruning (adds output biases to the model).
        slimllm_swap_search: ``method="slimllm"``: run the greedy swap search after the initial head
            (and KV-group) choice.
        slimllm_keep_lowest: ``method="slimllm"``: fraction of the FFN channels with the *lowest*
            importance that are always kept (the official code's undocumented rule uses 0.01; 0 = off).
        device: Where each block is processed (``None``: where the model's first block lives).
        offload_activations: Keep the calibration activations in (pinned) CPU memory.
    """

    pruning_ratio: float = 0.2
    schedule: Union[str, list[float]] = "log_increase"
    schedule_spread: float = 4.0
    max_layer_ratio: float = 0.9
    dataset: DatasetLike = "wikitext2"
    dataset_split: str = "train"
    dataset_text_field: str = "text"
    num_samples: int = 128
    seqlen: int = 2048
    batch_size: int = 8
    damp_percent: float = 0.01
    seed: int = 0
    prune_heads: bool = True
    prune_ffn: bool = True
    min_heads: int = 1
    min_channels: int = 1
    channel_multiple: int = 1
    ffn_max_group: int = 1024
    ffn_min_group: int = 64
    compensate: bool = True
    head_selection: str = "obs"
    channel_selection: str = "obs"
    method: str = "slimgpt"
    importance_layers: Union[int, None] = None
    importance_alpha: float = 10.0
    slimllm_recovery: bool = True
    slimllm_swap_search: bool = True
    slimllm_keep_lowest: float = 0.0
    device: Union[str, None] = None
    offload_activations: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field."""
        r = self.pruning_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"pruning_ratio must be a number, got {type(r).__name__}")
        if not (0.0 <= float(r) < 1.0) or math.isnan(float(r)):
            raise ValueError(f"pruning_ratio must satisfy 0 <= pruning_ratio < 1, got {r}")
        if isinstance(self.schedule, str):
            if self.schedule not in SCHEDULES:
                raise ValueError(f"schedule must be one of {SCHEDULES} or a list of per-layer ratios, got {self.schedule!r}")
        elif isinstance(self.schedule, (list, tuple)):
            self.schedule = [float(x) for x in self.schedule]
            bad = [x for x in self.schedule if not (0.0 <= x < 1.0)]
            if not self.schedule or bad:
                raise ValueError(f"explicit schedule ratios must be a non-empty list of values in [0, 1), got {self.schedule}")
        else:
            raise TypeError(f"schedule must be a string or a list of floats, got {type(self.schedule).__name__}")
        if not self.schedule_spread >= 1.0:
            raise ValueError(f"schedule_spread must be >= 1, got {self.schedule_spread}")
        if not (0.0 < self.max_layer_ratio < 1.0):
            raise ValueError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        for name in ("num_samples", "seqlen", "batch_size", "min_heads", "min_channels", "channel_multiple",
                     "ffn_max_group", "ffn_min_group"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.ffn_min_group > self.ffn_max_group:
            raise ValueError(f"ffn_min_group ({self.ffn_min_group}) must not exceed ffn_max_group ({self.ffn_max_group})")
        if not (0.0 <= self.damp_percent < 10.0):
            raise ValueError(f"damp_percent must be in [0, 10), got {self.damp_percent}")
        if not (self.prune_heads or self.prune_ffn) and self.pruning_ratio > 0:
            raise ValueError("prune_heads and prune_ffn are both False: nothing can be pruned")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        il = self.importance_layers
        if il is not None and (isinstance(il, bool) or not isinstance(il, int) or il < 1):
            raise ValueError(f"importance_layers must be None or a positive integer, got {il!r}")
        a = self.importance_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0.0 <= float(a) < math.inf):
            raise ValueError(f"importance_alpha must be a finite number >= 0, got {a!r}")
        for name in ("slimllm_recovery", "slimllm_swap_search"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        k = self.slimllm_keep_lowest
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0.0 <= float(k) < 1.0):
            raise ValueError(f"slimllm_keep_lowest must be in [0, 1), got {k!r}")
        if self.head_selection not in ("obs", "obs_official", "magnitude"):
            raise ValueError(f"head_selection must be 'obs', 'obs_official' or 'magnitude', got {self.head_selection!r}")
        if self.channel_selection not in ("obs", "magnitude"):
            raise ValueError(f"channel_selection must be 'obs' or 'magnitude', got {self.channel_selection!r}")
        d = self.dataset
        if d is not None and not isinstance(d, (str, list, tuple, torch.Tensor, os.PathLike)):
            raise TypeError(
                "dataset must be a dataset name, a file path, a list of strings or a LongTensor of token ids, "
                f"got {type(d).__name__}"
            )
        if isinstance(d, torch.Tensor) and (d.dim() != 2 or d.dtype not in (torch.long, torch.int, torch.int32)):
            raise ValueError(f"a token-id dataset must be an integer tensor of shape (samples, seqlen), got {tuple(d.shape)} {d.dtype}")
        if isinstance(d, (list, tuple)) and (not d or not all(isinstance(s, str) for s in d)):
            raise ValueError("a list dataset must be a non-empty list of strings")

    # ------------------------------------------------------------------ serialisation
    def describe_dataset(self) -> Any:
        """A JSON-safe description of the calibration data (never the raw text)."""
        d = self.dataset
        if isinstance(d, torch.Tensor):
            return {"type": "token_ids", "shape": list(d.shape)}
        if isinstance(d, (list, tuple)):
            return {"type": "texts", "count": len(d)}
        if isinstance(d, os.PathLike):
            return os.fspath(d)
        return d

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary; a tensor or list dataset is replaced by its description."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "dataset":
                v = self.describe_dataset()
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SlimGPTConfig":
        """Inverse of :meth:`to_dict`. Unknown keys raise (no silent swallowing)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SlimGPTConfig keys: {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("dataset"), dict):  # a description of in-memory data cannot be re-created
            d["dataset"] = None
        return cls(**d)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_string(cls, s: str) -> "SlimGPTConfig":
        return cls.from_dict(json.loads(s))

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "SlimGPTConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())
