# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""What the vLLM plugin serves, and the checks it runs on a checkpoint before vLLM builds an engine.

Nothing here imports vLLM (or torch): the checks read ``config.json`` and the safetensors headers only, so
:func:`check_checkpoint` works, and is tested, where vLLM is not installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

__all__ = [
    "FAMILIES",
    "CheckpointInfo",
    "FamilyRules",
    "VLLMCheckpointError",
    "check_checkpoint",
    "check_config",
    "check_tensor_parallel",
    "layer_sizes",
]


class VLLMCheckpointError(ValueError):
    """A checkpoint the vLLM plugin cannot serve (raised before vLLM builds its engine)."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    """A config value from a ``config.json`` dict or a config object (the global value of per-layer keys)."""
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "global_value", None)
    return getter(key, default) if getter is not None else getattr(config, key, default)


@dataclass(frozen=True)
class FamilyRules:
    """How one family's decoder block looks in vLLM: which projections carry a bias, q/k norms.

    Attributes:
        base_model_type: the transformers ``model_type`` (``"llama"``); per-layer checkpoints are
            ``slimgpt_<base_model_type>``.
        architecture: the family's causal-LM class name; the plugin's is ``SlimGPT<architecture>``.
        qkv_bias / o_bias / mlp_bias: whether the family itself puts a bias on q/k/v, on ``o_proj``, on the
            three MLP projections (a function of the config, as in transformers).
        qk_norm: per-head RMSNorm of queries and keys (Qwen3): ``q_norm`` / ``k_norm`` of ``head_dim`` weights,
            shared by all heads, so removing heads leaves them as they are.
    """

    base_model_type: str
    architecture: str
    qkv_bias: Callable[[Any], bool]
    o_bias: Callable[[Any], bool]
    mlp_bias: Callable[[Any], bool]
    qk_norm: bool = False

    @property
    def model_type(self) -> str:
        return f"slimgpt_{self.base_model_type}"

    @property
    def plugin_architecture(self) -> str:
        return f"SlimGPT{self.architecture}"


def _flag(key: str) -> Callable[[Any], bool]:
    return lambda cfg: bool(_get(cfg, key, False))


def _never(cfg: Any) -> bool:
    return False


def _always(cfg: Any) -> bool:
    return True


#: The families the plugin serves with per-layer sizes, by base ``model_type``.
FAMILIES: dict[str, FamilyRules] = {
    r.base_model_type: r
    for r in (
        FamilyRules("llama", "LlamaForCausalLM", _flag("attention_bias"), _flag("attention_bias"), _flag("mlp_bias")),
        FamilyRules("mistral", "MistralForCausalLM", _never, _never, _never),
        FamilyRules("qwen2", "Qwen2ForCausalLM", _always, _never, _never),
        FamilyRules("qwen3", "Qwen3ForCausalLM", _flag("attention_bias"), _flag("attention_bias"), _never,
                    qk_norm=True),
    )
}

_LLAMA_LAYOUT = {"blocks": "model.layers", "attention": "self_attn", "mlp": "mlp", "q_proj": ["q_proj"],
                 "kv_proj": ["k_proj", "v_proj"], "o_proj": "o_proj", "qkv_proj": None, "channel_in":
                 ["gate_proj", "up_proj"], "channel_out": "down_proj", "gate_up_proj": None, "text_config": None,
                 "full_size_attention": False}
_SIZE_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def _supported() -> str:
    return ", ".join(f"slimgpt_{f}" for f in FAMILIES)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`check_config` / :func:`check_checkpoint` found: the family, the sizes of every layer
    (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``), ``head_dim``, ``hidden_size``
    and whether the output projections carry a bias in every layer (``pruned_out_bias``)."""

    family: FamilyRules
    layers: tuple
    head_dim: int
    hidden_size: int
    out_bias: bool


def layer_sizes(config: Any) -> list[dict]:
    """Per-layer sizes of a per-layer config (a ``config.json`` dict or a config object), canonical keys.

    Missing keys of a layer take the global value. Zero heads or channels are allowed here (a layer whose
    attention or FFN was removed whole is a no-op in vLLM)."""
    n = _get(config, "num_hidden_layers")
    if isinstance(config, dict):
        raw = config.get("per_layer_config")
    else:  # transformers' native spec (``per_layer_config`` is then a view), or the raw dict elsewhere
        spec = config.__dict__.get("_heterogeneity_spec")
        raw = spec.per_layer_overrides if spec is not None else config.__dict__.get("per_layer_config")
    if not isinstance(raw, dict) or not raw:
        raise VLLMCheckpointError("the config has no per_layer_config: this is not a per-layer pruned checkpoint")
    out = []
    for i in range(n):
        over = raw.get(str(i), raw.get(i, {})) or {}
        out.append({k: over.get(k, _get(config, k)) for k in _SIZE_KEYS})
    return out


def check_config(config: Any) -> CheckpointInfo:
    """Check that a checkpoint's config describes a per-layer pruned model the plugin serves.

    Raises :class:`VLLMCheckpointError` for a dense or foreign config (no ``slimgpt_<family>`` model type, no
    pruning record or no per-layer sizes), a family the plugin does not serve (with the ones it does), a
    family layout other than the Llama one, and sizes that are not whole heads / KV groups / channels.
    """
    model_type = _get(config, "model_type") or ""
    if not model_type.startswith("slimgpt_"):
        raise VLLMCheckpointError(
            f"model_type {model_type!r} is not a per-layer pruned checkpoint of optimum-slimgpt (those are "
            f"slimgpt_<family>): vLLM serves dense, uniform and padded checkpoints natively, without the "
            f"SlimGPT architectures of this plugin")
    family = FAMILIES.get(model_type.removeprefix("slimgpt_"))
    if family is None:
        raise VLLMCheckpointError(
            f"the vLLM plugin of optimum-slimgpt does not serve {model_type!r} checkpoints (it serves "
            f"{_supported()}); export the model with export_format='uniform' or 'padded' (a plain architecture "
            f"that vLLM serves natively)")
    record = _get(config, "pruning_config")
    if not isinstance(record, dict) or not record.get("layers"):
        raise VLLMCheckpointError(
            f"{model_type} config without a pruning record (pruning_config): not a checkpoint saved by "
            f"optimum-slimgpt; save the pruned model with save_pruned_model / pruner.save")
    if record.get("base_model_type") != family.base_model_type:
        raise VLLMCheckpointError(f"model_type {model_type!r} but the pruning record is of a "
                                  f"{record.get('base_model_type')!r} model")
    layout = record.get("layout") or {}
    odd = {k: layout[k] for k, v in _LLAMA_LAYOUT.items() if k in layout and layout[k] != v}
    if odd:
        raise VLLMCheckpointError(f"{model_type}: the pruning record's block layout differs from the "
                                  f"{family.base_model_type} layout the plugin serves ({odd})")
    sizes = layer_sizes(config)
    n = _get(config, "num_hidden_layers")
    if len(record["layers"]) != n:
        raise VLLMCheckpointError(f"{model_type}: the pruning record has {len(record['layers'])} layers, the "
                                  f"config {n}")
    head_dim = _get(config, "head_dim")
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise VLLMCheckpointError(f"{model_type}: needs an explicit positive head_dim, got {head_dim!r}")
    for i, s in enumerate(sizes):
        h, kv, ch = (s[k] for k in _SIZE_KEYS)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (h, kv, ch)):
            raise VLLMCheckpointError(f"{model_type}: layer {i} has sizes {s} (non-negative integers expected)")
        if (h == 0) != (kv == 0) or (kv and h % kv):
            raise VLLMCheckpointError(f"{model_type}: layer {i} has {h} query heads for {kv} KV heads (whole KV "
                                      f"groups expected, or 0 and 0 for a removed attention)")
        rec = {k: record["layers"][i].get(k) for k in _SIZE_KEYS}
        if rec != s:
            raise VLLMCheckpointError(f"{model_type}: layer {i}: per_layer_config says {s}, the pruning record {rec}")
    return CheckpointInfo(family, tuple(sizes), head_dim, _get(config, "hidden_size"),
                          bool(_get(config, "pruned_out_bias", False)))


def check_tensor_parallel(info: CheckpointInfo, tp_size: int) -> None:
    """Check that every layer splits over ``tp_size`` tensor-parallel ranks the way vLLM splits it.

    vLLM gives each rank ``1/tp_size`` of a layer's query heads and FFN channels, and of its KV heads (or a
    copy of them, when the layer has fewer KV heads than ranks and ``tp_size`` is a multiple of them), so every
    layer needs query heads and channels divisible by ``tp_size`` and KV heads a multiple or a divisor of it.
    Raises :class:`VLLMCheckpointError` naming the layers that do not.
    """
    if tp_size <= 1:
        return
    bad = []
    for i, s in enumerate(info.layers):
        h, kv, ch = (s[k] for k in _SIZE_KEYS)
        if h and (h % tp_size or (kv % tp_size and tp_size % kv)) or ch % tp_size:
            bad.append(f"layer {i} ({h} heads, {kv} KV heads, {ch} channels)")
    if bad:
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise VLLMCheckpointError(
            f"--tensor-parallel-size {tp_size} splits every layer's query heads and FFN channels in {tp_size} and "
            f"its KV heads in {tp_size} (or copies them when there are fewer): {', '.join(bad[:4])}{more} do not "
            f"split. Prune with kv_head_multiple={tp_size} (every layer keeps a multiple of {tp_size} KV heads) and "
            f"channel_multiple a multiple of {tp_size}, or serve with a tensor-parallel size that divides them")


def expected_layer_tensors(info: CheckpointInfo, config: Any, i: int) -> dict[str, tuple]:
    """Name (inside ``model.layers.<i>``) -> shape of every tensor layer ``i`` must have in the weights."""
    fam, hd, d = info.family, info.head_dim, info.hidden_size
    h, kv, ch = (info.layers[i][k] for k in _SIZE_KEYS)
    out = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
    if h:
        out.update({"self_attn.q_proj.weight": (h * hd, d), "self_attn.k_proj.weight": (kv * hd, d),
                    "self_attn.v_proj.weight": (kv * hd, d), "self_attn.o_proj.weight": (d, h * hd)})
        if fam.qkv_bias(config):
            out.update({"self_attn.q_proj.bias": (h * hd,), "self_attn.k_proj.bias": (kv * hd,),
                        "self_attn.v_proj.bias": (kv * hd,)})
        if fam.qk_norm:
            out.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,)})
    if fam.o_bias(config) or info.out_bias:
        out["self_attn.o_proj.bias"] = (d,)
    if ch:
        out.update({"mlp.gate_proj.weight": (ch, d), "mlp.up_proj.weight": (ch, d), "mlp.down_proj.weight": (d, ch)})
        if fam.mlp_bias(config):
            out.update({"mlp.gate_proj.bias": (ch,), "mlp.up_proj.bias": (ch,)})
    if fam.mlp_bias(config) or info.out_bias:
        out["mlp.down_proj.bias"] = (d,)
    return out


def _tensor_shapes(folder: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="np") as st:
            shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


def check_checkpoint(path: Union[str, os.PathLike], config: Optional[Any] = None) -> CheckpointInfo:
    """Check a local checkpoint folder for the vLLM plugin: its config (:func:`check_config`) and its weights.

    Every decoder-layer tensor the per-layer record implies must be in the safetensors files with exactly that
    shape, and no other: a weight vLLM would not load (an output bias the record does not announce) is an
    error too, since vLLM would silently drop it. ``config`` defaults to the folder's ``config.json``.
    Raises :class:`VLLMCheckpointError` with every problem found (the first few, and how many).
    """
    folder = Path(path)
    if config is None:
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise VLLMCheckpointError(f"{folder} has no config.json")
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    info = check_config(config)
    shapes = _tensor_shapes(folder)
    if not shapes:
        raise VLLMCheckpointError(f"{folder} has no *.safetensors weights (the plugin reads safetensors only)")
    problems = []
    n = len(info.layers)
    prefix = "model.layers."
    extra_layers = sorted({int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)} - set(range(n)))
    if extra_layers:
        problems.append(f"the weights have layers {extra_layers} beyond the config's {n}")
    for i in range(n):
        want = expected_layer_tensors(info, config, i)
        have = {k[len(f"{prefix}{i}."):]: v for k, v in shapes.items() if k.startswith(f"{prefix}{i}.")}
        sizes = ", ".join(f"{k}={info.layers[i][k]}" for k in _SIZE_KEYS)
        for name, shape in want.items():
            if name not in have:
                problems.append(f"layer {i}: {name} is missing (record: {sizes})")
            elif tuple(have[name]) != shape:
                problems.append(f"layer {i}: {name} has shape {tuple(have[name])}, the per-layer record "
                                f"({sizes}, head_dim={info.head_dim}) needs {shape}")
        for name in sorted(set(have) - set(want)):
            if 0 in have[name]:  # an empty tensor of a removed part
                continue
            problems.append(f"layer {i}: unexpected tensor {name} {tuple(have[name])} (the config does not "
                            f"announce it{'; pruned_out_bias is false' if name.endswith('bias') else ''})")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise VLLMCheckpointError(f"{folder}: the weights disagree with the per-layer record in config.json: "
                                  + "; ".join(problems[:5]) + more)
    return info
