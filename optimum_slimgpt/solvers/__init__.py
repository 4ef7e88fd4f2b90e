"""The math of structured pruning: Hessians, OBS solvers and schedules (pure torch, no transformers)."""

from .hessian import (
    HessianAccumulator,
    NotPositiveDefiniteError,
    SquareSumAccumulator,
    damped_inverse,
    full_precision_matmul,
)
from .obs import (
    ChannelPruneResult,
    HeadPruneResult,
    closed_form_group_obs,
    dgs_group_sizes,
    group_obs_remove,
    prune_channels,
    prune_heads,
    reconstruction_error,
    unit_scores,
)
from .schedule import (
    LayerGeometry,
    LayerPlan,
    PruningPlan,
    auto_channel_multiple,
    check_kv_head_multiple,
    plan_layer,
    resolve_channel_multiple,
    schedule_shape,
    solve_schedule,
)

__all__ = [
    "HessianAccumulator",
    "NotPositiveDefiniteError",
    "SquareSumAccumulator",
    "damped_inverse",
    "full_precision_matmul",
    "ChannelPruneResult",
    "HeadPruneResult",
    "closed_form_group_obs",
    "dgs_group_sizes",
    "group_obs_remove",
    "prune_channels",
    "prune_heads",
    "reconstruction_error",
    "unit_scores",
    "LayerGeometry",
    "LayerPlan",
    "PruningPlan",
    "plan_layer",
    "schedule_shape",
    "solve_schedule",
    "auto_channel_multiple",
    "resolve_channel_multiple",
    "check_kv_head_multiple",
]
