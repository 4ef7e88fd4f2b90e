"""Save, load and share pruned models.

:func:`save_pruned_model` writes a pruned model in one of three formats:

``per_layer``
    The SlimGPT checkpoint format (``model_type="slimgpt_<family>"``): the original global sizes, an
    explicit ``head_dim``, transformers' ``per_layer_config`` for every layer, ``auto_map`` and the two
    pairs of self-contained code files (see :mod:`optimum_slimgpt.modeling`). Loads with
    ``AutoModelForCausalLM.from_pretrained(path)`` while ``optimum_slimgpt`` is imported, and with
    ``trust_remote_code=True`` anywhere else.
``uniform``
    Every layer has the same sizes: the *unchanged* base architecture (``model_type="llama"`` ...) with
    ``num_attention_heads``/``num_key_value_heads``/``intermediate_size`` updated and ``head_dim``
    explicit. Loads everywhere with nothing extra (vLLM, llama.cpp converters, TGI...).
``padded``
    Every layer zero-padded to the largest layer (query heads padded *per KV group* so that the
    ``repeat_kv`` mapping is unchanged, KV heads, FFN channels; zero rows in q/k/v/gate/up, zero columns
    in o_proj/down_proj, zero biases), saved as the plain base architecture. Exactly the same function,
    servable natively everywhere, but only as small as the largest layer.

``auto`` picks ``uniform`` when every layer has the same sizes, the model has no extra output biases and
the installed transformers accepts the plain config (``LlamaConfig`` rejects ``hidden_size %
num_attention_heads != 0`` since 5.4), and ``per_layer`` otherwise (``padded`` when no pruned class is
registered for the family).

Every save is atomic: the checkpoint is written into a temporary folder beside the target and renamed
into place; an existing target is only replaced with ``overwrite=True`` and stays intact if anything
fails.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from . import __version__
from .families import FamilyAdapter, get_adapter
from .modeling import base_config_dict, get_pruned_family

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportPlan", "SaveResult", "plan_export", "save_pruned_model"]

EXPORT_FORMATS = ("auto", "per_layer", "uniform", "padded")
_SIZE_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


class ExportError(ValueError):
    """The requested export format cannot represent this model."""


@dataclass
class SaveResult:
    """What :func:`save_pruned_model` wrote.

    Attributes:
        path: The checkpoint folder.
        format: ``"per_layer"``, ``"uniform"`` or ``"padded"``.
        reason: Why this format (for ``auto``) or how it was built.
        layers: Per-layer sizes *as saved* (the padded sizes for ``padded``).
        num_parameters: Parameters in the saved checkpoint (tied weights counted once).
        weights_bytes: Total size of the ``*.safetensors`` files.
        files: Files in the checkpoint folder.
        repo_id / commit_url: Set when pushed to the Hub.
    """

    path: Path
    format: str
    reason: str
    layers: list[dict] = field(default_factory=list)
    num_parameters: int = 0
    weights_bytes: int = 0
    files: list[str] = field(default_factory=list)
    repo_id: Optional[str] = None
    commit_url: Optional[str] = None


# ============================================================================================ planning
@dataclass
class ExportPlan:
    """How a model will be saved (see :func:`plan_export`)."""

    format: str
    reason: str
    layers: list[dict]  # saved sizes per layer
    plain_config: Any = None  # uniform/padded
    padded: Optional[dict] = None  # {"kv": K, "rep": R, "channels": I}


def _module_sizes(model: nn.Module, adapter: FamilyAdapter, blocks) -> list[dict]:
    out = []
    for b in blocks:
        lay = adapter.head_layout(b, model.config)
        out.append({"num_attention_heads": lay.num_heads, "num_key_value_heads": lay.num_kv_heads,
                    "intermediate_size": adapter.num_channels(b), "head_dim": lay.head_dim})
    return out


def _base_model_type(model) -> str:
    pc = getattr(model.config, "pruning_config", None) or {}
    return pc.get("base_model_type") or model.config.model_type


def _per_layer_key_map(model) -> dict:
    fam = get_pruned_family(_base_model_type(model))
    if fam is not None:
        return dict(fam.config_class.slimgpt_per_layer_keys)
    return {k: k for k in _SIZE_KEYS}


def _plain_config(model, sizes: dict, head_dim: int, pruning_extra: dict):
    """The plain base-architecture config with the given (global) sizes; raises if transformers rejects it."""
    from transformers import AutoConfig

    base_type = _base_model_type(model)
    d = base_config_dict(model.config)
    for k, attr in _per_layer_key_map(model).items():
        if attr:
            d[attr] = int(sizes[k])
    d["head_dim"] = int(head_dim)
    cfg = AutoConfig.for_model(base_type, **d)
    if hasattr(cfg, "validate"):
        cfg.validate()
    pc = copy.deepcopy(getattr(model.config, "pruning_config", None) or {})
    pc.update(pruning_extra)
    cfg.pruning_config = pc
    cfg._name_or_path = getattr(model.config, "_name_or_path", "")
    return cfg


def _extra_out_bias(model) -> list[str]:
    """Output projections that carry a bias the plain architecture cannot hold (``pruned_out_bias``). Families
    without a pruned class are checked later, when the tensors are matched against the plain model."""
    if getattr(model.config, "pruned_out_bias", False):
        return ["o_proj/down_proj (pruned_out_bias)"]
    return []


def _padded_head_layout(model, K: int, R: int, channels: int, head_dim: int, extra: dict):
    """Smallest (heads, kv_heads) >= (K*R, K) with whole KV groups of >= R heads that transformers accepts."""
    hidden = base_config_dict(model.config).get("hidden_size") or 0
    limit = max(8 * K * R, hidden)
    last_err = None
    for H in range(K * R, limit + 1):
        Kp = next((k for k in range(K, H + 1) if H % k == 0 and H // k >= R), None)
        if Kp is None:
            continue
        sizes = {"num_attention_heads": H, "num_key_value_heads": Kp, "intermediate_size": channels}
        try:
            cfg = _plain_config(model, sizes, head_dim, extra)
            _plain_skeleton(model, cfg)  # some families only reject sizes in their constructors (OPT)
        except Exception as e:  # noqa: BLE001 - any validator error means "try the next head count"
            last_err = e
            continue
        return H, Kp, cfg
    raise ExportError(f"no padded head count >= {K * R} is accepted by the base config ({last_err})")


def plan_export(model: nn.Module, export_format: str = "auto") -> ExportPlan:
    """Decide how ``model`` would be saved (no writing). See :func:`save_pruned_model`."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}")
    pc = getattr(model.config, "pruning_config", None)
    if not pc:
        raise ValueError(
            "this model carries no pruning record (config.pruning_config); prune it with SlimGPTPruner first "
            "(a mask_only model is not physically smaller and cannot be saved as pruned)"
        )
    adapter = get_adapter(model)
    blocks = adapter.get_blocks(model)
    sizes = _module_sizes(model, adapter, blocks)
    head_dims = {s.pop("head_dim") for s in sizes}
    if len(head_dims) != 1:
        raise ExportError(f"layers have different head_dim values {sorted(head_dims)}")
    head_dim = head_dims.pop()
    fam = get_pruned_family(_base_model_type(model))
    per_layer_ok = fam is not None and isinstance(model, fam.causal_lm_class)
    uniform = all(s == sizes[0] for s in sizes)
    extra_bias = _extra_out_bias(model)

    def uniform_plan() -> ExportPlan:
        if not uniform:
            distinct = sorted({tuple(s[k] for k in _SIZE_KEYS) for s in sizes})
            raise ExportError(
                "export_format='uniform' needs the same sizes in every layer, but the layers have "
                f"{len(distinct)} different (heads, kv_heads, channels) sizes {distinct}; use 'per_layer' or 'padded'"
            )
        if extra_bias:
            raise ExportError(
                f"export_format='uniform' cannot hold the extra output biases ({', '.join(extra_bias)}) of this "
                "model: the plain architecture has no such parameters; use 'per_layer'"
            )
        try:
            cfg = _plain_config(model, sizes[0], head_dim, {"export_format": "uniform"})
            _check_uniform_shapes(model, cfg)
        except Exception as e:  # noqa: BLE001
            raise ExportError(
                f"the installed transformers rejects a plain '{_base_model_type(model)}' config with "
                f"{sizes[0]} and head_dim={head_dim}: {e}; use 'per_layer' or 'padded'"
            ) from e
        return ExportPlan("uniform", "every layer has the same sizes and the plain config is valid", sizes, cfg)

    def padded_plan() -> ExportPlan:
        if extra_bias:
            raise ExportError(
                f"export_format='padded' cannot hold the extra output biases ({', '.join(extra_bias)}) of this "
                "model: the plain architecture has no such parameters; use 'per_layer'"
            )
        K = max(s["num_key_value_heads"] for s in sizes)
        R = max(s["num_attention_heads"] // s["num_key_value_heads"] for s in sizes)
        I = max(s["intermediate_size"] for s in sizes)
        H, Kp, cfg = _padded_head_layout(model, K, R, I, head_dim, {"export_format": "padded"})
        cfg.pruning_config["padded_to"] = {"num_attention_heads": H, "num_key_value_heads": Kp, "intermediate_size": I}
        saved = [{"num_attention_heads": H, "num_key_value_heads": Kp, "intermediate_size": I} for _ in sizes]
        why = f"zero-padded every layer to heads={H}, kv_heads={Kp}, channels={I}"
        if H != K * R or Kp != K:
            why += f" (rounded up from {K * R}/{K} so that the base config accepts it)"
        return ExportPlan("padded", why, saved, cfg, {"kv": Kp, "rep": H // Kp, "channels": I})

    def per_layer_plan(reason: str) -> ExportPlan:
        if not per_layer_ok:
            raise ExportError(
                f"export_format='per_layer' needs a pruned class for model_type {_base_model_type(model)!r}, "
                "registered with optimum_slimgpt.modeling.register_pruned_family; use 'uniform' or 'padded'"
            )
        return ExportPlan("per_layer", reason, sizes)

    if export_format == "uniform":
        return uniform_plan()
    if export_format == "padded":
        return padded_plan()
    if export_format == "per_layer":
        return per_layer_plan("requested")
    # auto
    if not uniform:
        why = "layers have different sizes"
    elif extra_bias:
        why = f"the model has extra output biases ({', '.join(extra_bias)})"
    else:
        try:
            return uniform_plan()
        except ExportError as e:
            why = " ".join(str(e).split("; use")[0].split())
    if per_layer_ok:
        return per_layer_plan(why)
    plan = padded_plan()
    plan.reason = f"{why} and no pruned class is registered: {plan.reason}"
    return plan


# ============================================================================================ plain exports
def _head_rows(slots: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([s * head_dim + j for s in slots for j in range(head_dim)], dtype=torch.long)


def _scatter(t: torch.Tensor, dim: int, index: torch.Tensor, size: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out.index_copy_(dim, index.to(t.device), t)
    return out


def _uses_default_layout(adapter: FamilyAdapter) -> bool:
    cls = type(adapter)
    return cls.prune_heads is FamilyAdapter.prune_heads and cls.prune_channels is FamilyAdapter.prune_channels


@torch.no_grad()
def _padded_state_dict(model, adapter: FamilyAdapter, blocks, kv: int, rep: int, channels: int) -> dict:
    """The model's state dict with every block zero-padded to (kv*rep heads, kv KV heads, channels)."""
    hook = getattr(adapter, "padded_block_state_dict", None)
    if hook is None and not _uses_default_layout(adapter):
        raise ExportError(
            f"padded export is not implemented for the {adapter.name!r} layout (its adapter overrides the "
            "surgery); give the adapter a padded_block_state_dict(block, config, kv, rep, channels) method"
        )
    sd = dict(model.state_dict())
    for i, b in enumerate(blocks):
        prefix = f"{adapter.blocks_path}.{i}."
        if hook is not None:
            block_sd = hook(b, model.config, kv, rep, channels)
        else:
            names = {id(m): n for n, m in b.named_modules()}
            lay = adapter.head_layout(b, model.config)
            hd, n_rep = lay.head_dim, lay.n_rep
            q_rows = _head_rows([(h // n_rep) * rep + h % n_rep for h in range(lay.num_heads)], hd)
            kv_rows = _head_rows(list(range(lay.num_kv_heads)), hd)
            ch = torch.arange(adapter.num_channels(b))
            block_sd = {}

            def put(lin: nn.Linear, dim: int, index: torch.Tensor, size: int) -> None:
                n = names[id(lin)]
                block_sd[f"{n}.weight"] = _scatter(lin.weight.detach(), dim, index, size)
                if lin.bias is not None:
                    block_sd[f"{n}.bias"] = (_scatter(lin.bias.detach(), 0, index, size) if dim == 0
                                             else lin.bias.detach())

            for lin in adapter.q_linears(b):
                put(lin, 0, q_rows, kv * rep * hd)
            for lin in adapter.kv_linears(b):
                put(lin, 0, kv_rows, kv * hd)
            put(adapter.attn_out_proj(b), 1, q_rows, kv * rep * hd)
            for lin in adapter.channel_in_linears(b):
                put(lin, 0, ch, channels)
            put(adapter.mlp_out_proj(b), 1, ch, channels)
        for k, v in block_sd.items():
            sd[prefix + k] = v
    return sd


def _plain_skeleton(model, cfg) -> nn.Module:
    """The plain base-architecture causal LM of ``cfg`` with empty (meta) weights."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    pc = getattr(model.config, "pruning_config", None) or {}
    cls = None
    for name in pc.get("base_architectures") or []:
        cand = getattr(transformers, name, None)
        if isinstance(cand, type) and issubclass(cand, transformers.PreTrainedModel) and name.endswith("ForCausalLM"):
            cls = cand
            break
    with init_empty_weights(include_buffers=False):
        return cls(cfg) if cls is not None else AutoModelForCausalLM.from_config(cfg)


def _check_uniform_shapes(model, cfg) -> None:
    """Raise unless the plain model of ``cfg`` has exactly the pruned model's parameter names and shapes
    (e.g. OPT derives ``head_dim`` from ``hidden_size // num_attention_heads``, so fewer heads do not fit)."""
    try:
        plain = _plain_skeleton(model, cfg)
    except Exception as e:  # noqa: BLE001 - the family's constructor rejects the sizes
        raise ExportError(f"the plain model cannot be built with these sizes: {e}") from e
    want = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if bad:
        raise ExportError(f"the plain model's parameters differ from the pruned ones: "
                          f"{[(k, have.get(k), want.get(k)) for k in bad[:4]]}")


def _plain_model(model, plan: ExportPlan, adapter, blocks) -> nn.Module:
    """A plain base-architecture model sharing (uniform) or padding (padded) the pruned model's tensors."""
    plain = _plain_skeleton(model, plan.plain_config)
    if plan.format == "padded":
        sd = _padded_state_dict(model, adapter, blocks, **plan.padded)
    else:
        sd = dict(model.state_dict())
    want = plain.state_dict()
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if unexpected:
        raise ExportError(
            f"the plain {type(plain).__name__} has no place for {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
            " (extra parameters, e.g. biases added by bias compensation); use export_format='per_layer'"
        )
    if missing:
        raise ExportError(f"the pruned model lacks parameters of the plain {type(plain).__name__}: {missing[:6]}")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in want.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ExportError(f"shape mismatch between the pruned tensors and the plain config: {bad[:4]}")
    plain.load_state_dict(sd, strict=True, assign=True)
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    plain.eval()
    return plain


# ============================================================================================ model card
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _base_model_id(model, base_model: Optional[str]) -> tuple[Optional[str], str]:
    """(Hub id for the card metadata or None, human-readable name)."""
    if base_model:
        return base_model, base_model
    pc = getattr(model.config, "pruning_config", None) or {}
    name = pc.get("base_model") or getattr(model.config, "_name_or_path", "") or ""
    if name and _HUB_ID.match(name) and not os.path.exists(name):
        return name, name
    return None, name or "unknown"


def _model_card(model, plan: ExportPlan, true_sizes: list[dict], num_params: int, eval_results: Optional[dict],
                base_model: Optional[str]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    import transformers

    pc = getattr(model.config, "pruning_config", None) or {}
    hub_id, base_name = _base_model_id(model, base_model)
    data = ModelCardData(
        base_model=hub_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["pruned", "slimgpt", "structured-pruning"] + ([pc["pruning_method"]] if pc.get("pruning_method")
                                                             and pc["pruning_method"] != "slimgpt" else []),
    )
    method = pc.get("pruning_method", "slimgpt")
    base_dims = pc.get("base_dims") or {}
    pretty = {"slimgpt": "SlimGPT", "slimllm": "SlimLLM"}.get(method, method)
    subject = f"`{base_name}`" if base_name != "unknown" else f"a {pc.get('base_model_type', '')} model"
    lines = [
        f"# {pretty} structured pruning of {subject}",
        "",
        f"This model is {subject} with attention heads and FFN channels removed by **{pretty}** "
        f"(layer-wise optimal brain surgeon; optimum-slimgpt {__version__}).",
        "",
        f"* base model: `{base_name}` (`{pc.get('base_model_type', '?')}`, "
        f"{', '.join(pc.get('base_architectures') or [])})",
        f"* pruning ratio: target {pc.get('pruning_ratio')}, achieved {pc.get('achieved_ratio')} of the decoder-block parameters",
        f"* schedule: {pc.get('schedule')}" + (f" (spread {pc.get('schedule_spread')})" if pc.get("schedule_spread") else ""),
        f"* parameters in this checkpoint: {num_params:,}",
        f"* checkpoint format: **{plan.format}** ({plan.reason})",
        "",
    ]
    cal = pc.get("calibration") or {}
    if cal:
        lines += ["## Calibration", ""]
        lines += [f"* {k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in cal.items()]
        lines += [f"* damp_percent: {pc.get('damp_percent')}", f"* head selection: {pc.get('head_selection')}, "
                  f"channel selection: {pc.get('channel_selection')}, compensation: {pc.get('compensate')}", ""]
    lines += ["## Per-layer layout", ""]
    if base_dims:
        lines += [f"Unpruned: {base_dims.get('num_attention_heads')} heads, {base_dims.get('num_key_value_heads')} "
                  f"KV heads, {base_dims.get('intermediate_size')} FFN channels per layer.", ""]
    ratios = pc.get("layer_ratios") or []
    head = "| layer | heads | kv heads | channels | ratio |"
    lines += [head, "|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(true_sizes):
        r = f"{ratios[i]:.3f}" if i < len(ratios) and ratios[i] is not None else ""
        lines.append(f"| {i} | {s['num_attention_heads']} | {s['num_key_value_heads']} | {s['intermediate_size']} | {r} |")
    lines.append("")
    if plan.format == "padded":
        lines += ["The weights are zero-padded to the largest layer so that the plain architecture can hold them; "
                  "the table shows the real (unpadded) sizes.", ""]
    if eval_results:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        for k, v in eval_results.items():
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
        lines.append("")
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM", ""]
    if plan.format == "per_layer":
        lines += ["# per-layer sizes: with `import optimum_slimgpt` no flag is needed; without it the model code",
                  "# shipped in this repository is used", "model = AutoModelForCausalLM.from_pretrained(\"<this repo>\", "
                  "trust_remote_code=True)"]
    else:
        lines += ["model = AutoModelForCausalLM.from_pretrained(\"<this repo>\")"]
    lines += ["```", "", f"Saved with transformers {transformers.__version__}.", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


# ============================================================================================ atomic IO
def _nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _swap_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        if _nonempty_dir(target):
            if not overwrite:
                raise FileExistsError(f"{target} is not empty; pass overwrite=True to replace it")
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
        os.rmdir(target)
    os.rename(tmp, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ============================================================================================ entry point
def save_pruned_model(
    model: nn.Module,
    save_dir: Union[str, os.PathLike],
    *,
    tokenizer=None,
    export_format: str = "auto",
    overwrite: bool = False,
    max_shard_size: Union[int, str] = "5GB",
    safe_serialization: bool = True,
    model_card: bool = True,
    eval_results: Optional[dict] = None,
    base_model: Optional[str] = None,
    push_to_hub: bool = False,
    repo_id: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: Optional[str] = None,
    **hub_kwargs: Any,
) -> SaveResult:
    """Save a pruned model so that ``AutoModelForCausalLM.from_pretrained(save_dir)`` loads it.

    Args:
        model: A model pruned by :class:`~optimum_slimgpt.SlimGPTPruner` (it carries
            ``config.pruning_config``).
        save_dir: The checkpoint folder. Written atomically (temporary folder beside it, then renamed).
        tokenizer: Saved alongside when given.
        export_format: ``"auto"``, ``"per_layer"``, ``"uniform"`` or ``"padded"`` (see the module docs).
        overwrite: Replace a non-empty ``save_dir`` (the old content survives any failure).
        max_shard_size: Passed to ``save_pretrained``.
        safe_serialization: Only ``True`` (safetensors) is supported by transformers 5.
        model_card: Write a ``README.md`` (YAML metadata, per-layer table, pruning and calibration details).
        eval_results: ``{metric: value}`` added to the model card.
        base_model: Hub id of the unpruned model for the card metadata (default: the config's
            ``_name_or_path`` when it looks like a Hub id).
        push_to_hub: Upload the saved folder with ``huggingface_hub`` (``create_repo`` + ``upload_folder``).
        repo_id: Target repository (default: the folder name); ``private``, ``commit_message`` and
            ``hub_kwargs`` (``token``, ``revision``, ``create_pr``...) go to ``huggingface_hub``.

    Returns:
        A :class:`SaveResult`.
    """
    if not safe_serialization:
        raise ValueError("only safetensors checkpoints are written (transformers 5 has no pickle format)")
    target = Path(save_dir).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if _nonempty_dir(target) and not overwrite:
        raise FileExistsError(f"{target} is not empty; pass overwrite=True to replace it")
    plan = plan_export(model, export_format)
    logger.info("saving the pruned model to %s as '%s': %s", target, plan.format, plan.reason)
    adapter = get_adapter(model)
    blocks = adapter.get_blocks(model)
    true_sizes = _module_sizes(model, adapter, blocks)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        if plan.format == "per_layer":
            num_params = _save_per_layer(model, tmp, max_shard_size)
        else:
            plain = _plain_model(model, plan, adapter, blocks)
            num_params = _count_params(plain)
            plain.save_pretrained(tmp, max_shard_size=max_shard_size)
            del plain
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card:
            (tmp / "README.md").write_text(
                _model_card(model, plan, true_sizes, num_params, eval_results, base_model), encoding="utf-8"
            )
        _swap_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    files = sorted(p.name for p in target.iterdir())
    result = SaveResult(
        path=target, format=plan.format, reason=plan.reason, layers=plan.layers, num_parameters=num_params,
        weights_bytes=sum(p.stat().st_size for p in target.glob("*.safetensors")), files=files,
    )
    if push_to_hub:
        result.repo_id, result.commit_url = _push(target, repo_id or target.name, private, commit_message, hub_kwargs)
    return result


def _count_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():  # parameters() already yields tied tensors once
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _save_per_layer(model: nn.Module, tmp: Path, max_shard_size) -> int:
    cfg = model.config
    pc = copy.deepcopy(getattr(cfg, "pruning_config", None) or {})
    pc["export_format"] = "per_layer"
    saved = cfg.pruning_config
    cfg.pruning_config = pc
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
    finally:
        cfg.pruning_config = saved
    return _count_params(model)


def _push(folder: Path, repo_id: str, private, commit_message, hub_kwargs: dict) -> tuple[str, Optional[str]]:
    from huggingface_hub import HfApi

    hub_kwargs = dict(hub_kwargs)
    api = HfApi(token=hub_kwargs.pop("token", None))
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    rid = getattr(repo, "repo_id", None) or repo_id
    commit = api.upload_folder(
        repo_id=rid, folder_path=str(folder), repo_type="model",
        commit_message=commit_message or "Upload pruned model (optimum-slimgpt)", **hub_kwargs,
    )
    url = getattr(commit, "commit_url", None) or (str(commit) if commit is not None else None)
    logger.info("pushed %s to the Hub as %s", folder, rid)
    return rid, url
