"""Per-layer pruned model classes (config + modeling) that travel with checkpoints."""

from __future__ import annotations

from torch import nn


def to_pruned_model(model: nn.Module, adapter, pruning_config: dict) -> nn.Module:
    """Attach the pruning record to ``model.config`` (per-layer sizes in ``pruning_config["layers"]``)."""
    model.config.pruning_config = pruning_config
    return model
