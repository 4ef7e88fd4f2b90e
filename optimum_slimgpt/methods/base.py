"""Pruning methods: how one block's heads and channels are chosen and the survivors repaired.

A method is registered for its config class (:func:`register_method`) and the pruner dispatches on the type of
the config it is given (as torchao's ``quantize_(model, config)`` does). For one decoder block and one part
(``"attention"``, ``"ffn"``) the method

* declares the statistics it needs as :class:`Observer` objects (where: the input of the part's output
  projection, ``o_proj``/``down_proj``, or of the part itself; and what accumulates it); the pruner attaches
  them for one calibration pass, and a method that declares none gets no pass at all;
* receives a task (:class:`AttentionTask`, :class:`FFNTask`) with the output projection's weight, the filled
  accumulators and, on demand, the part's input weights, and returns what to keep plus the repaired weight
  (and optionally a new output bias) as a :class:`PruneResult`. The pruner does the rest (hooks, forwards,
  surgery, records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..config import PruningConfig, register_config, registered_configs, unregister_config
from ..solvers import HessianAccumulator

__all__ = ["AttentionTask", "FFNTask", "Observer", "PruneResult", "PruningMethod", "get_method", "register_method",
           "registered_configs", "unregister_method", "HESSIAN"]

PARTS = ("attention", "ffn")


@dataclass(frozen=True)
class Observer:
    """One statistic of a part: ``make(features, device)`` builds the accumulator (anything with ``add(x)``)
    that the pruner feeds, batch after batch, with the inputs of ``site``: ``"output"``, the part's output
    projection (``o_proj``/``down_proj``), or ``"input"``, the part's first input linear (``q_proj``/``gate_proj``)."""

    site: str
    make: Callable[[int, torch.device], Any]

    def __post_init__(self) -> None:
        if self.site not in ("output", "input"):
            raise ValueError(f"Observer.site must be 'output' or 'input', got {self.site!r}")


#: the input Hessian ``2/n Σ x xᵀ`` (and mean) of the part's output projection
HESSIAN = Observer("output", HessianAccumulator)


@dataclass(kw_only=True)
class _Task:
    layer: int
    # the output projection's weight (hidden x units), the model's own tensor in its dtype: read it, never write it;
    # ``.float()`` for float32 math (a copy only when the model is not float32: one fewer at the peak)
    W: torch.Tensor
    bias: Optional[torch.Tensor]  # its current bias or None
    stats: dict[str, Any]  # the accumulators of the method's observers, by name
    config: PruningConfig
    name: str
    load_in_weights: Callable[[], Any] = field(default=list, repr=False)
    # low-memory runs (streaming): a folder where a solver may spill the Hessian to solve in its storage, else None
    spill_dir: Optional[str] = None


@dataclass(kw_only=True)
class AttentionTask(_Task):
    """Prune heads of one block. ``options``: the allowed ``(kv_heads, query_heads_per_kv)`` structures (equal
    parameter count)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    options: list[tuple[int, int]]

    def head_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Float32 copies of the weights whose rows are query-head / KV-head dimensions (``q_proj``;
        ``k_proj``, ``v_proj``), made on demand."""
        return self.load_in_weights()


@dataclass(kw_only=True)
class FFNTask(_Task):
    """Prune ``num_remove`` FFN channels of one block."""

    num_remove: int

    def channel_weights(self) -> list[torch.Tensor]:
        """Float32 copies of the weights whose rows are channels (gate and up, or fc1), made on demand."""
        return self.load_in_weights()


@dataclass
class PruneResult:
    """``kept``: query heads (new order) or channels; ``kept_kv``: KV heads (attention only); ``W``: the repaired
    full-width weight (removed columns zero); ``bias``: a new output bias or None (unchanged); ``error``:
    relative reconstruction error on the calibration inputs (0 when not computed)."""

    kept: list[int]
    W: torch.Tensor
    kept_kv: Optional[list[int]] = None
    bias: Optional[torch.Tensor] = None
    error: float = 0.0
    option: Optional[tuple[int, int]] = None


class PruningMethod:
    """Base class: subclasses implement :meth:`prune_attention` and :meth:`prune_ffn`, and
    :meth:`observers` when they need other statistics than the output projection's input Hessian."""

    config_class: type = PruningConfig  # set by register_method

    def observers(self, part: str, config: PruningConfig) -> dict[str, Observer]:
        """The statistics of ``part`` (``"attention"`` or ``"ffn"``) that the task's ``stats`` will hold."""
        return {"hessian": HESSIAN}

    def output_bias(self, config: PruningConfig) -> bool:
        """Whether the results will carry output-projection biases (``PruneResult.bias``); the pruner's dry run
        of the export (``prune_model(export_format=...)``) needs to know before pruning."""
        return False

    def plans_globally(self, config: PruningConfig) -> bool:
        """Whether this method sets the per-layer sizes itself from statistics of the *dense* model (FLAP's
        global allocation) instead of ``config.schedule``. Then the pruner runs one dense pass over every block,
        hands each part's output-projection weight and filled :meth:`observers` to :meth:`dense_scores`, and
        builds the plan with :meth:`allocate`, all before any weight changes."""
        return False

    def dense_scores(self, part: str, W: torch.Tensor, stats: dict[str, Any], num_heads: int, head_dim: int,
                     config: PruningConfig) -> torch.Tensor:  # pragma: no cover - only with plans_globally
        """Per-unit scores (query heads for ``"attention"``, channels for ``"ffn"``) of one dense block."""
        raise NotImplementedError

    def allocate(self, scores: list[dict[str, Optional[torch.Tensor]]], geoms: list, config: PruningConfig
                 ):  # pragma: no cover - only with plans_globally
        """The :class:`~optimum_slimgpt.solvers.PruningPlan` from every layer's :meth:`dense_scores` (``None`` for
        a part that is not pruned) and :class:`~optimum_slimgpt.solvers.LayerGeometry`."""
        raise NotImplementedError

    def prune_attention(self, task: AttentionTask) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune_ffn(self, task: FFNTask) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError


_METHODS: dict[type, PruningMethod] = {}


def register_method(config_class: type, *, override: bool = False) -> Callable[[type], type]:
    """Class decorator: ``@register_method(MyConfig)`` makes ``SlimGPTPruner(MyConfig(...))`` use the method."""
    if not (isinstance(config_class, type) and issubclass(config_class, PruningConfig) and config_class.method_name):
        raise TypeError(f"{config_class!r} must be a PruningConfig subclass with a method_name")
    clash = [c for c in _METHODS if c.method_name == config_class.method_name and c is not config_class]
    if clash and not override:
        raise ValueError(f"method {config_class.method_name!r} is already configured by {clash[0].__name__}; "
                         "pass override=True")

    def deco(method_cls: type) -> type:
        for c in clash:
            del _METHODS[c]
        method_cls.config_class = config_class
        _METHODS[config_class] = method_cls()
        register_config(config_class)  # the name -> config table of PruningConfig.for_method and the CLI
        return method_cls

    return deco


def unregister_method(config_class: type) -> None:
    """Forget the method registered for ``config_class`` (tests, plugins that reload)."""
    if _METHODS.pop(config_class, None) is not None:
        unregister_config(config_class)


def get_method(config: PruningConfig) -> PruningMethod:
    """The method registered for the type of ``config`` (or its nearest registered base class)."""
    for klass in type(config).__mro__:
        if klass in _METHODS:
            return _METHODS[klass]
    raise TypeError(f"no pruning method is registered for {type(config).__name__}; registered: "
                    f"{sorted(c.__name__ for c in _METHODS)}")
