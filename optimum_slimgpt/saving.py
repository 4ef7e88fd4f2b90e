"""Save, load and share pruned models, through a registry of exporters.

:func:`save_pruned_model` writes a pruned model with one of the registered exporters (:data:`EXPORTERS`):

``per_layer``
    The SlimGPT checkpoint format (``model_type="slimgpt_<family>"``): the original global sizes, an explicit
    ``head_dim``, transformers' ``per_layer_config`` for every layer, ``auto_map`` and the two self-contained
    code files (see :mod:`optimum_slimgpt.modeling`). Loads with ``AutoModelForCausalLM.from_pretrained(path)``
    while ``optimum_slimgpt`` is imported, and with ``trust_remote_code=True`` anywhere else.
``uniform``
    Every layer has the same sizes: the *unchanged* base architecture (``model_type="llama"`` ...) with the head
    and FFN sizes updated and ``head_dim`` explicit. Loads everywhere with nothing extra (vLLM, llama.cpp
    converters, TGI...).
``padded``
    Every layer zero-padded to the largest layer (query heads padded *per KV group* so that the ``repeat_kv``
    mapping is unchanged, KV heads, FFN channels), saved as the plain base architecture. Exactly the same
    function, servable natively everywhere, but only as small as the largest layer.

``auto`` asks the exporters in the order of :data:`AUTO_ORDER` (``uniform``, ``per_layer``, ``padded``) and takes
the first that can represent the model, with the reasons why the earlier ones could not. A new format is one
:class:`Exporter` subclass decorated with :func:`register_exporter`.

Every save is atomic: the checkpoint is written into a temporary folder beside the target and renamed into
place; an existing target is only replaced with ``overwrite=True`` and stays intact if anything fails.

The weights are saved in the dtype of the checkpoint the model was pruned from (``dtype="auto"``: the pruning record's
``source_dtype``, :func:`source_dtype`; ``bfloat16`` for a GGUF source), whatever dtype the pruning computed in:
prune in float32, ship bf16. ``dtype=None`` keeps the model's own dtype, a dtype (or its name) chooses one.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

from huggingface_hub.errors import StrictDataclassError

import torch
from torch import nn

from . import __version__
from .families import FamilyAdapter, get_adapter
from .modeling import (BlockLayout, PruningRecord, UnusableModelError, base_config_dict, get_pruned_family,
                       unusable_reason)

logger = logging.getLogger(__name__)

__all__ = ["AUTO_ORDER", "EXPORTERS", "EXPORT_FORMATS", "ExportError", "ExportPlan", "Exporter", "SaveResult",
           "check_output_dir", "checkpoint_dtype", "checkpoint_layer_sizes", "clean_stale_work_dirs",
           "describe_checkpoint", "parse_dtype", "plan_export", "register_exporter", "save_pruned_model", "source_dtype"]

_SIZE_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


class ExportError(ValueError):
    """The requested export format cannot represent this model; ``reason`` is the short why."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass
class SaveResult:
    """What :func:`save_pruned_model` wrote.

    Attributes:
        path: The checkpoint folder.
        format: The exporter's name (``"per_layer"``, ``"uniform"``, ``"padded"``...).
        reason: Why this format (for ``auto``) or how it was built.
        layers: Per-layer sizes *as saved* (the padded sizes for ``padded``).
        num_parameters: Parameters in the saved checkpoint: the elements of the unique tensors in its
            ``*.safetensors`` files (tied weights are stored, and counted, once).
        weights_bytes: Total size of the ``*.safetensors`` files.
        files: Files in the checkpoint folder.
        dtype: The dtype of the saved floating-point weights (``"bfloat16"``...; ``None`` for a format with its own
            types, such as ``gguf``).
        repo_id / commit_url: Set when pushed to the Hub.
    """

    path: Path
    format: str
    reason: str
    layers: list[dict] = field(default_factory=list)
    num_parameters: int = 0
    weights_bytes: int = 0
    files: list[str] = field(default_factory=list)
    dtype: Optional[str] = None
    repo_id: Optional[str] = None
    commit_url: Optional[str] = None


@dataclass
class ExportPlan:
    """How a model will be saved (see :func:`plan_export`)."""

    format: str
    reason: str
    layers: list[dict]  # saved sizes per layer
    plain_config: Any = None  # uniform/padded
    padded: Optional[dict] = None  # {"kv": K, "rep": R, "channels": I}


@dataclass
class ModelView:
    """What the exporters read of a pruned model: its adapter, record, layout and real per-layer sizes."""

    model: nn.Module
    adapter: FamilyAdapter
    blocks: nn.ModuleList
    record: PruningRecord
    layout: BlockLayout
    sizes: list[dict]
    head_dim: int
    #: the dtype the floating-point tensors are saved in (``None``: the model's own)
    save_dtype: Optional[torch.dtype] = None

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (the first one's)."""
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    @property
    def saved_dtype(self) -> torch.dtype:
        """The dtype the floating-point weights are written in."""
        return self.save_dtype or self.model_dtype

    def cast(self, sd: dict) -> dict:
        """``sd`` with its floating-point tensors in :attr:`save_dtype` (tensors that share storage, such as tied
        embeddings, stay shared, so they are still saved once)."""
        if self.save_dtype is None:
            return sd
        done: dict = {}
        out = {}
        for k, t in sd.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != self.save_dtype:
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
                if key not in done:
                    done[key] = t.to(self.save_dtype)
                t = done[key]
            out[k] = t
        return out

    @classmethod
    def of(cls, model: nn.Module) -> "ModelView":
        if (why := unusable_reason(model)) is not None:
            raise UnusableModelError(why)
        record = PruningRecord.of(model.config)
        if record is None:
            raise ValueError("this model carries no pruning record (config.pruning_config); prune it with "
                             "SlimGPTPruner first (a mask_only model is not physically smaller and cannot be saved as pruned)")
        adapter = get_adapter(model)
        blocks = adapter.get_blocks(model)
        lays = [adapter.head_layout(b, model.config) for b in blocks]
        if len({lay.head_dim for lay in lays}) != 1:
            raise ExportError(f"layers have different head_dim values {sorted({lay.head_dim for lay in lays})}")
        sizes = [adapter.block_sizes(b, model.config) for b in blocks]
        return cls(model, adapter, blocks, record, adapter.layout, sizes, lays[0].head_dim)

    @property
    def uniform(self) -> bool:
        return all(s == self.sizes[0] for s in self.sizes)

    @property
    def hidden_size(self) -> int:
        return base_config_dict(self.adapter.text_config(self.model.config))["hidden_size"]

    @property
    def extra_bias(self) -> bool:
        """Output-projection biases that the plain architecture cannot hold (``pruned_out_bias``)."""
        return bool(getattr(self.model.config, "pruned_out_bias", False))

    def plain_config(self, sizes: dict, export_format: str):
        """The plain base-architecture config with these (global) sizes, validated by transformers."""
        from transformers import AutoConfig

        d = base_config_dict(self.model.config)
        text = d[self.layout.text_config] if self.layout.text_config else d
        text.update({attr: int(sizes[k]) for k, attr in self.layout.size_keys.items() if attr})
        text["head_dim"] = int(self.head_dim)
        cfg = AutoConfig.for_model(self.record.base_model_type, **d)
        cfg.validate()
        cfg.pruning_config = replace(self.record, export_format=export_format).to_dict()
        cfg.name_or_path = self.model.config.name_or_path
        return cfg

    def plain_skeleton(self, cfg) -> nn.Module:
        """The plain base-architecture causal LM of ``cfg`` with empty (meta) weights."""
        import transformers
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        names = [n for n in self.record.base_architectures if n.endswith(("ForCausalLM", "ForConditionalGeneration"))]
        cls = getattr(transformers, names[0], None) if names else None
        with init_empty_weights(include_buffers=False):
            return cls(cfg) if isinstance(cls, type) else AutoModelForCausalLM.from_config(cfg)


# ============================================================================================ dtypes
#: the names a saved dtype may be given by (``save_pruned_model(dtype=...)``, ``--save-dtype``)
DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                                       "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A floating-point ``torch.dtype`` from a dtype or one of :data:`DTYPE_NAMES` (``None`` stays ``None``);
    ``ValueError`` naming the choices otherwise."""
    if value is None or isinstance(value, torch.dtype) and value in DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[value.removeprefix("torch.")]
    raise ValueError(f"unknown dtype {value!r}: choose 'auto', None or one of {', '.join(DTYPE_NAMES)}")


def source_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The floating-point dtype of the checkpoint ``model`` was loaded from, found without loading anything: an
    earlier pruning record's ``source_dtype`` (a pruned model pruned again keeps its base's); ``bfloat16`` for a model
    read from a GGUF file (its quantised blocks have no float dtype of their own; bf16 holds their range); else the
    ``dtype`` (or ``torch_dtype``) of ``config.json`` in the folder ``config.name_or_path`` (without one, the dtype of
    its safetensors weights), or of a Hub model's ``config.json`` already in the local cache (never downloaded).
    ``None`` when none of these says."""
    prev = PruningRecord.of(model.config)
    if prev is not None and prev.source_dtype:
        return parse_dtype(prev.source_dtype)
    q = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
    if getattr(method, "value", method) == "gguf":
        return torch.bfloat16
    name = getattr(model.config, "name_or_path", None) or ""
    file: Any = Path(name) / "config.json" if name else None
    if name and not (file and file.is_file()) and _HUB_ID.match(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001 - no cache, odd names: unknown
            file = None
        file = Path(file) if isinstance(file, str) else None
    if not file or not file.is_file():
        return None
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
        value = cfg.get("dtype") or cfg.get("torch_dtype") or checkpoint_dtype(file.parent)  # (else: the weights')
        return parse_dtype(value) if value else None
    except (OSError, ValueError, AttributeError):
        return None


def _resolve_save_dtype(model: nn.Module, record: PruningRecord, dtype) -> Optional[torch.dtype]:
    """``save_pruned_model``'s ``dtype``: ``"auto"`` -> the record's source dtype (``None`` if unknown: the
    model's own), ``None`` -> the model's own, else the named dtype."""
    if isinstance(dtype, str) and dtype == "auto":
        return parse_dtype(record.source_dtype) if record.source_dtype else None
    return parse_dtype(dtype)


def checkpoint_dtype(folder: Union[str, os.PathLike]) -> Optional[str]:
    """The dtype of most floating-point tensors in a saved checkpoint's ``*.safetensors`` files (read from the
    headers: what the weights are, whatever the config says); ``None`` without such tensors."""
    counts: dict[str, int] = {}
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__" and v.get("dtype") in names:
                counts[names[v["dtype"]]] = counts.get(names[v["dtype"]], 0) + 1
    return max(counts, key=counts.get) if counts else None


# ============================================================================================ exporters
#: what a family config's own validation raises (transformers' strict config dataclasses: StrictDataclassError)
_CONFIG_REJECTED = (ValueError, TypeError, StrictDataclassError)


class Exporter:
    """One checkpoint format: :meth:`plan` says whether (and how) it can represent a model, raising
    :class:`ExportError` when it cannot; :meth:`write` writes the planned checkpoint into a folder."""

    name: ClassVar[str] = ""
    #: can write its checkpoint from weights streamed in by the caller (``prune_pretrained``): :meth:`write` with
    #: ``weights=False`` writes everything but the tensors, :meth:`saved_names` says which tensors the caller writes
    streamable: ClassVar[bool] = False
    #: :meth:`write` takes ``tokenizer=`` (the format stores the tokenizer inside its own file, as GGUF does)
    needs_tokenizer: ClassVar[bool] = False
    #: :meth:`write` saves the floating-point tensors in ``view.saved_dtype`` (``False``: the format has its own
    #: types, as GGUF's ``outtype``)
    writes_dtype: ClassVar[bool] = True

    def plan(self, view: ModelView) -> ExportPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, view: ModelView, plan: ExportPlan, folder: Path, max_shard_size, weights: bool = True) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def saved_names(self, view: ModelView, plan: ExportPlan) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError


def _saved_keys(model: nn.Module) -> list[str]:
    """The tensor names ``save_pretrained`` writes for ``model`` (tied weights once), also for meta tensors."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    return list(remove_tied_weights_from_state_dict(dict(model.state_dict()), model))


EXPORTERS: dict[str, Exporter] = {}
#: the formats ``export_format="auto"`` tries, in order
AUTO_ORDER: list[str] = ["uniform", "per_layer", "padded"]


def register_exporter(cls: type) -> type:
    """Class decorator: make ``save_pruned_model(..., export_format=cls.name)`` use this exporter."""
    if not cls.name or cls.name == "auto":
        raise ValueError(f"{cls.__name__} needs a name other than 'auto'")
    EXPORTERS[cls.name] = cls()
    return cls


def __getattr__(name: str):  # EXPORT_FORMATS follows the registry
    if name == "EXPORT_FORMATS":
        return ("auto", *EXPORTERS)
    raise AttributeError(name)


#: family-config flags that give every attention / MLP linear a bias (Llama's ``attention_bias``, ``mlp_bias``): a
#: plain checkpoint with them set holds the extra output biases, the other biases stored as zeros
BIAS_FLAGS = ("attention_bias", "mlp_bias")


def _bias_config(view: ModelView, cfg):
    """``cfg`` with the family's :data:`BIAS_FLAGS` set when the model has extra output biases, checked on the plain
    skeleton to hold them (every output projection biased; the only other new tensors are biases, saved as zeros);
    ``None`` when the family has no such flags."""
    text = getattr(cfg, view.layout.text_config) if view.layout.text_config else cfg
    flags = [f for f in BIAS_FLAGS if hasattr(text, f)]
    if not flags:
        return None
    for f in flags:
        setattr(text, f, True)
    have = dict(view.model.state_dict())
    want = view.plain_skeleton(cfg).state_dict()
    prefix = view.layout.blocks + "."
    outs = [f"{prefix}{i}.{p}.bias" for i in range(len(view.blocks)) for p in view.layout.out_projections]
    if any(k not in want for k in outs) or any(not k.endswith(".bias") for k in want if k not in have):
        return None
    return cfg


def _zero_biases(plain: nn.Module, sd: dict) -> dict:
    """The state dict with zeros for the plain model's biases that the pruned one does not have (see
    :func:`_bias_config`)."""
    sd = dict(sd)
    for name, t in plain.state_dict().items():
        if name not in sd and name.endswith(".bias"):
            weight = sd[name[: -len("bias")] + "weight"]
            sd[name] = torch.zeros(t.shape, dtype=weight.dtype, device=weight.device)
    return sd


class _PlainExporter(Exporter):
    """Shared by the formats that save the plain family architecture."""

    def _no_bias(self, view: ModelView) -> None:
        if view.extra_bias:
            raise ExportError(
                f"export_format={self.name!r} cannot hold the extra output biases (o_proj/down_proj, pruned_out_bias) "
                "of this model: the plain architecture has no such parameters; use 'per_layer'",
                reason="the model has extra output biases (o_proj/down_proj, pruned_out_bias)")

    def _config(self, view: ModelView, sizes: dict):
        try:
            return view.plain_config(sizes, self.name)
        except _CONFIG_REJECTED as e:  # the family's own config validation
            why = f"the installed transformers rejects a plain {view.record.base_model_type!r} config with {sizes} " \
                  f"and head_dim={view.head_dim}"
            raise ExportError(f"{why}: {e}; use 'per_layer' or 'padded'", reason=why) from e

    @staticmethod
    def _check_shapes(view: ModelView, plain: nn.Module, sd: dict) -> None:
        want = plain.state_dict()
        bad = sorted(k for k in want.keys() | sd.keys() if k not in sd or k not in want or sd[k].shape != want[k].shape)
        if bad:
            raise ExportError(f"the plain {type(plain).__name__} does not hold the pruned tensors: "
                              f"{[(k, tuple(sd[k].shape) if k in sd else None, tuple(want[k].shape) if k in want else None) for k in bad[:4]]}")

    def state_dict(self, view: ModelView, plan: ExportPlan) -> dict:
        return dict(view.model.state_dict())

    def write(self, view: ModelView, plan: ExportPlan, folder: Path, max_shard_size, weights: bool = True) -> None:
        plain = view.plain_skeleton(plan.plain_config)
        if getattr(view.model, "generation_config", None) is not None:
            plain.generation_config = copy.deepcopy(view.model.generation_config)
        if not weights:  # (the config records the dtype of the parameters: the saved one, as after loading them)
            plain.to(view.saved_dtype)
            plain.eval().save_pretrained(folder, state_dict={})
            return
        sd = view.cast(self.state_dict(view, plan))
        if view.extra_bias:
            sd = _zero_biases(plain, sd)
        self._check_shapes(view, plain, sd)
        plain.load_state_dict(sd, strict=True, assign=True)
        plain.tie_weights()  # assign=True unties the head from the embeddings: tie them again (stored once)
        plain.eval().save_pretrained(folder, max_shard_size=max_shard_size)

    def saved_names(self, view: ModelView, plan: ExportPlan) -> list[str]:
        return _saved_keys(view.plain_skeleton(plan.plain_config))


@register_exporter
class UniformExporter(_PlainExporter):
    name = "uniform"
    streamable = True

    def plan(self, view: ModelView) -> ExportPlan:
        if not view.uniform:
            distinct = sorted({tuple(s[k] for k in _SIZE_KEYS) for s in view.sizes})
            raise ExportError(f"export_format='uniform' needs the same sizes in every layer, but the layers have "
                              f"{len(distinct)} different (heads, kv_heads, channels) sizes {distinct}; use 'per_layer' "
                              "or 'padded'", reason="layers have different sizes")
        heads = view.sizes[0]["num_attention_heads"]
        if view.layout.full_size_attention and heads * view.head_dim != view.hidden_size:
            why = (f"the plain {view.record.base_model_type!r} attention derives head_dim from hidden_size / heads, so it "
                   f"cannot hold {heads} heads of {view.head_dim}")
            raise ExportError(f"{why}; use 'per_layer' or 'padded'", reason=why)
        cfg = self._config(view, view.sizes[0])
        reason = "every layer has the same sizes and the plain config is valid"
        sd = dict(view.model.state_dict())
        if view.extra_bias:  # output biases (SlimLLM, affine OBS, FLAP): only with the family's bias flags
            if _bias_config(view, cfg) is None:
                self._no_bias(view)
            plain = view.plain_skeleton(cfg)
            sd = _zero_biases(plain, sd)
            reason += "; the output biases are held by the family's bias flags (attention_bias/mlp_bias=True, the " \
                      "other linears' biases stored as zeros)"
        self._check_shapes(view, view.plain_skeleton(cfg), sd)
        return ExportPlan("uniform", reason, view.sizes, cfg)


@register_exporter
class PaddedExporter(_PlainExporter):
    name = "padded"

    def plan(self, view: ModelView) -> ExportPlan:
        self._no_bias(view)
        K = max(s["num_key_value_heads"] for s in view.sizes)
        R = max(s["num_attention_heads"] // s["num_key_value_heads"] for s in view.sizes)
        I = max(s["intermediate_size"] for s in view.sizes)
        hidden = view.hidden_size
        H, Kp = K * R, K
        if view.layout.full_size_attention:  # the plain attention has hidden_size / head_dim heads, one KV each
            H = Kp = hidden // view.head_dim
        sizes = {"num_attention_heads": H, "num_key_value_heads": Kp, "intermediate_size": I}
        try:
            cfg = view.plain_config(sizes, self.name)
        except _CONFIG_REJECTED:  # the family wants heads that divide hidden_size: the next such layout
            H = next(h for h in range(K * R, hidden + 1) if hidden % h == 0)
            Kp = next(k for k in range(K, H + 1) if H % k == 0 and H // k >= R)
            sizes = {"num_attention_heads": H, "num_key_value_heads": Kp, "intermediate_size": I}
            cfg = self._config(view, sizes)
        cfg.pruning_config = replace(view.record, export_format=self.name, padded_to=sizes).to_dict()
        why = f"zero-padded every layer to heads={H}, kv_heads={Kp}, channels={I}"
        if (H, Kp) != (K * R, K):
            why += f" (from {K * R}/{K}, so that the base config accepts it)"
        return ExportPlan("padded", why, [dict(sizes) for _ in view.sizes], cfg, {"kv": Kp, "rep": H // Kp, "channels": I})

    def state_dict(self, view: ModelView, plan: ExportPlan) -> dict:
        sd = dict(view.model.state_dict())
        for i, b in enumerate(view.blocks):
            for k, v in view.adapter.padded_block_state_dict(b, view.model.config, **plan.padded).items():
                sd[f"{view.layout.blocks}.{i}.{k}"] = v
        return sd


@register_exporter
class PerLayerExporter(Exporter):
    name = "per_layer"
    streamable = True

    def plan(self, view: ModelView) -> ExportPlan:
        fam = None if view.layout.text_config else get_pruned_family(view.record.base_model_type)
        if fam is None or not isinstance(view.model, fam.causal_lm_class):
            why = f"no per-layer class is registered for model_type {view.record.base_model_type!r}"
            raise ExportError(f"export_format='per_layer' needs a per-layer class: {why}; use 'uniform' or 'padded'",
                              reason=why)
        return ExportPlan("per_layer", "requested", view.sizes)

    def write(self, view: ModelView, plan: ExportPlan, folder: Path, max_shard_size, weights: bool = True) -> None:
        cfg = view.model.config
        saved, saved_dtype = cfg.pruning_config, getattr(cfg, "dtype", None)
        cfg.pruning_config = replace(view.record, export_format=self.name).to_dict()
        cast = view.saved_dtype != view.model_dtype
        try:
            sd = {} if not weights else view.cast(dict(view.model.state_dict())) if cast else None
            view.model.save_pretrained(folder, max_shard_size=max_shard_size,
                                       **({} if sd is None else {"state_dict": sd}))
            if cast:  # save_pretrained records the parameters' dtype: the saved one it is
                cfg.dtype = _dtype_name(view.saved_dtype)
                cfg.to_json_file(Path(folder) / "config.json", use_diff=True)
        finally:
            cfg.pruning_config = saved
            cfg.dtype = saved_dtype

    def saved_names(self, view: ModelView, plan: ExportPlan) -> list[str]:
        return _saved_keys(view.model)


def plan_export(model: nn.Module, export_format: str = "auto") -> ExportPlan:
    """Decide how ``model`` would be saved (no writing). See :func:`save_pruned_model`."""
    if export_format != "auto" and export_format not in EXPORTERS:
        raise ValueError(f"export_format must be one of {('auto', *EXPORTERS)}, got {export_format!r}")
    view = ModelView.of(model)
    if export_format != "auto":
        return EXPORTERS[export_format].plan(view)
    reasons = []
    for name in AUTO_ORDER:
        try:
            plan = EXPORTERS[name].plan(view)
        except ExportError as e:
            reasons.append(e.reason)
            continue
        plan.reason = " and ".join(reasons) + (f": {plan.reason}" if plan.format == "padded" else "") if reasons else plan.reason
        return plan
    raise ExportError(f"no export format can represent this model: {'; '.join(reasons)}")


# ============================================================================================ model card
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _base_model_id(model, base_model: Optional[str]) -> tuple[Optional[str], str]:
    """(Hub id for the card metadata or None, human-readable name). A local path is never written (the card is
    uploaded by ``push_to_hub``): only the folder's own name is shown."""
    if base_model:
        return base_model, base_model
    name = getattr(model.config, "name_or_path", "") or ""
    if name and _HUB_ID.match(name) and not os.path.exists(name):
        return name, name
    if name and (os.path.isabs(name) or os.path.exists(name) or os.sep in name):
        return None, Path(name).name or "unknown"
    return None, name or "unknown"


def _dtype_line(view: ModelView, exporter: "Exporter") -> list[str]:
    """The card's line on the weights' dtype: what is saved, and how it relates to the source and the computation."""
    if not exporter.writes_dtype:
        return []
    rec, saved = view.record, _dtype_name(view.saved_dtype)
    notes = []
    if rec.source_dtype:
        notes.append("the source checkpoint's dtype" if rec.source_dtype == saved else f"the source was {rec.source_dtype}")
    if rec.compute_dtype and rec.compute_dtype != saved:
        notes.append(f"pruned in {rec.compute_dtype}")
    return [f"* weights: {saved}" + (f" ({'; '.join(notes)})" if notes else "")]


def _model_card(view: ModelView, plan: ExportPlan, num_params: int, eval_results: Optional[dict],
                base_model: Optional[str]) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    import transformers

    rec = view.record
    hub_id, base_name = _base_model_id(view.model, base_model)
    method = rec.pruning_method
    data = ModelCardData(base_model=hub_id, library_name="transformers", pipeline_tag="text-generation",
                         tags=["pruned", "slimgpt", "structured-pruning"] + ([method] if method != "slimgpt" else []))
    pretty = {"slimgpt": "SlimGPT", "slimllm": "SlimLLM"}.get(method, method)
    subject = f"`{base_name}`" if base_name != "unknown" else f"a {rec.base_model_type} model"
    spread = rec.config.get("schedule_spread")
    lines = [
        f"# {pretty} structured pruning of {subject}", "",
        f"This model is {subject} with attention heads and FFN channels removed by **{pretty}** "
        f"(optimum-slimgpt {__version__}).", "",
        f"* base model: `{base_name}` (`{rec.base_model_type}`, {', '.join(rec.base_architectures)})",
        f"* pruning ratio: target {rec.pruning_ratio}, achieved {rec.achieved_ratio} of the decoder-block parameters",
        f"* schedule: {rec.schedule}" + (f" (spread {spread})" if spread else ""),
        f"* parameters in this checkpoint: {num_params:,}",
        *_dtype_line(view, EXPORTERS[plan.format]),
        f"* checkpoint format: **{plan.format}** ({plan.reason})", "",
    ]
    if rec.calibration:
        lines += ["## Calibration", ""]
        lines += [f"* {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in rec.calibration.items()]
        shared = {"pruning_ratio", "schedule", "schedule_spread", "dataset_split", "dataset_text_field", "num_samples",
                  "seqlen", "seed", "meta", "method"}
        if rec.schedule != "search":  # the search's settings only where it ran
            shared |= {k for k in rec.config if k.startswith("search_")}
        lines += [f"* {pretty} options: " + ", ".join(f"{k}={v}" for k, v in rec.config.items() if k not in shared), ""]
    if rec.search:
        se = rec.search
        lines += ["## Per-layer sizes found by search", "",
                  f"The per-layer sizes come from an evolutionary search (EvoPress's (1+λ) loop, {se.get('generations')} "
                  f"generations) for the lowest KL divergence from the base model's next-token distribution on the "
                  f"calibration data ({se.get('fitness_history', ['?'])[0]} -> {se.get('fitness')}); final model: "
                  f"{se.get('final')}. The profile, `[attention_ratio, ffn_ratio]` per layer: "
                  f"`{json.dumps(se.get('schedule'))}`.", ""]
    lines += ["## Per-layer layout", ""]
    if rec.base_dims:
        d = rec.base_dims
        lines += [f"Unpruned: {d.get('num_attention_heads')} heads, {d.get('num_key_value_heads')} KV heads, "
                  f"{d.get('intermediate_size')} FFN channels per layer.", ""]
    ratios = rec.layer_ratios or []
    lines += ["| layer | heads | kv heads | channels | ratio |", "|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(view.sizes):
        r = f"{ratios[i]:.3f}" if i < len(ratios) and ratios[i] is not None else ""
        lines.append(f"| {i} | {s['num_attention_heads']} | {s['num_key_value_heads']} | {s['intermediate_size']} | {r} |")
    lines.append("")
    if plan.format == "padded":
        lines += ["The weights are zero-padded to the largest layer so that the plain architecture can hold them; "
                  "the table shows the real (unpadded) sizes.", ""]
    if eval_results:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in eval_results.items()]
        lines.append("")
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM", ""]
    if plan.format == "per_layer":
        lines += ["# per-layer sizes: with `import optimum_slimgpt` no flag is needed; without it the model code",
                  "# shipped in this repository is used",
                  "model = AutoModelForCausalLM.from_pretrained(\"<this repo>\", trust_remote_code=True)"]
    else:
        lines += ["model = AutoModelForCausalLM.from_pretrained(\"<this repo>\")"]
    lines += ["```", "", f"Saved with transformers {transformers.__version__}.", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# ============================================================================================ atomic IO
def _nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(save_dir: Union[str, os.PathLike], *, overwrite: bool = False, sources: Sequence = (),
                     needed_bytes: Optional[int] = None) -> Path:
    """Check, before any work, that a checkpoint can be written to ``save_dir``; return its absolute path.

    Raises ``FileExistsError`` (a file is there, or a non-empty folder without ``overwrite``), ``ValueError``
    (``save_dir`` is one of the ``sources`` (the model's own folder or file), lies inside one, or contains one:
    saving there would replace the model being read), ``NotADirectoryError``/``PermissionError`` (it cannot be
    created or written) and ``OSError(ENOSPC)`` (the file system has less free space than ``needed_bytes`` plus
    5%; with ``overwrite`` the old checkpoint stays until the new one is complete, so its space is not counted).
    """
    target = Path(save_dir).expanduser().absolute()
    real = target.resolve()
    for src in sources:
        if not src or not os.path.exists(src):
            continue
        s = Path(src).resolve()
        if real == s or s in real.parents:
            raise ValueError(f"the output {target} is the model's own source {s} or lies inside it: saving there "
                             "would overwrite the model being pruned; choose another folder")
        if real in s.parents:
            raise ValueError(f"the output {target} contains the model's source {s}: replacing it would delete the "
                             "model being pruned; choose another folder")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if _nonempty_dir(target) and not overwrite:
        raise FileExistsError(f"{target} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    anchor = _nearest_existing(target)
    if not anchor.is_dir():
        raise NotADirectoryError(f"cannot create {target}: {anchor} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".slimgpt-write-probe-", dir=anchor)
        os.rmdir(probe)
    except OSError as e:
        raise PermissionError(f"the output {target} is not writable: cannot create files in {anchor} "
                              f"({e.strerror or e})") from e
    if needed_bytes:
        free = shutil.disk_usage(anchor).free
        if free < needed_bytes * 1.05:
            raise OSError(errno.ENOSPC, f"not enough disk space for the checkpoint in {anchor}: about "
                                        f"{needed_bytes / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB free")
    return target


# Temporary and replaced folders are named ``.<name>.tmp-<host>.<pid>-<random>`` / ``.<name>.old-...`` beside the
# target, so that a later save can tell those of dead processes (SIGKILL, power loss) from those in use.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _work_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_HOST}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_work_dirs(target: Union[str, os.PathLike]) -> list[Path]:
    """Remove the temporary folders that interrupted saves to ``target`` left beside it (their process, on this
    host, is gone), and put back a checkpoint that an overwrite interrupted between its two renames moved aside
    (only on file systems without an atomic exchange). Returns what was removed. Called by every save."""
    target = Path(target).expanduser().absolute()
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(.+)\.(\d+)-[^/]*$")
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for entry in sorted(target.parent.iterdir()):
        m = pattern.match(entry.name)
        if not m or not entry.is_dir() or m.group(2) != _HOST or _pid_alive(int(m.group(3))):
            continue
        if m.group(1) == "old" and not target.exists():
            os.rename(entry, target)  # the overwrite died between its renames: the old checkpoint comes back
            logger.warning("restored %s from %s (an interrupted overwrite had moved it aside)", target, entry.name)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        logger.info("removed %s, left by an interrupted save (process %s)", entry, m.group(3))
    return removed


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def _swap_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished checkpoint ``tmp`` to ``target``. A non-empty ``target`` (``overwrite``) is replaced by
    one atomic exchange, so ``target`` always holds a complete checkpoint, the old or the new one; the old one
    then sits in ``tmp`` and is deleted (a later save deletes it if this process dies first)."""
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        if _nonempty_dir(target):
            if not overwrite:
                raise FileExistsError(f"{target} is not empty; pass overwrite=True to replace it")
            if _exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # no atomic exchange on this file system: two renames (a crash between them is repaired by the next
            # save, see clean_stale_work_dirs)
            old = Path(tempfile.mkdtemp(prefix=_work_prefix(target, "old"), dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return
    os.rename(tmp, target)  # onto nothing, or onto an empty folder (POSIX rename replaces it)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While saving, SIGTERM raises ``KeyboardInterrupt`` so that the temporary folder is removed; afterwards the
    previous handler is restored and the signal delivered again (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list = []

    def handler(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt("SIGTERM while saving")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here (embedded interpreters)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if hit:  # cleaned up: now let the termination happen as it would have
            os.kill(os.getpid(), signal.SIGTERM)


def _readable_files(folder: Path) -> None:
    """Give the files written into ``folder`` the permissions of a file the user creates (``0o666`` less the
    umask): some writers (the safetensors weights) create them readable by their owner only."""
    mode = 0o666 & ~_umask()
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _checkpoint_params(folder: Path) -> int:
    """Elements of every tensor stored in the folder's ``*.safetensors`` files (read from their headers)."""
    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


# ============================================================================================ reading back
def _tensor_shapes(folder: Path) -> dict[str, tuple]:
    """Name -> shape of every tensor in the folder's ``*.safetensors`` files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


def checkpoint_layer_sizes(folder: Union[str, os.PathLike]) -> list[dict]:
    """The per-layer sizes of a saved checkpoint as its *weights* have them (``num_attention_heads``,
    ``num_key_value_heads``, ``intermediate_size`` per layer), read from the safetensors headers with the
    family layout (the record's, or the registered family's for an unpruned model). What ``optimum-slimgpt info``
    shows: a record can be stale (a padded export, a file edited by hand), the weights cannot."""
    from .modeling.configuration_slimgpt import KNOWN_LAYOUTS

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    record = PruningRecord.from_dict(cfg["pruning_config"]) if cfg.get("pruning_config") else None
    model_type = record.base_model_type if record else cfg.get("model_type")
    layout = record.block_layout() if record else KNOWN_LAYOUTS.get(model_type)
    if layout is None:
        get_adapter(model_type)  # raises the "unsupported architecture" error naming the supported families
        layout = KNOWN_LAYOUTS[model_type]
    text = cfg.get(layout.text_config) or cfg if layout.text_config else cfg
    heads0 = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (text["hidden_size"] // heads0 if heads0 else None)
    shapes = _tensor_shapes(folder)
    if not shapes:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights")
    prefixes = [layout.blocks, layout.blocks.removeprefix("model."), f"model.{layout.blocks}"]
    prefix = next((p for p in prefixes if any(k.startswith(p + ".0.") for k in shapes)), None)
    if prefix is None:
        raise ValueError(f"{folder}: no decoder-block tensors under '{layout.blocks}' in the weights")
    n = 1 + max(int(k[len(prefix) + 1:].split(".")[0]) for k in shapes if k.startswith(prefix + "."))

    def shape(i: int, *parts: str) -> tuple:
        name = ".".join(x for x in (prefix, str(i), *parts, "weight") if x)
        if name not in shapes:
            raise ValueError(f"{folder}: tensor {name} is missing from the weights")
        return shapes[name]

    sizes = []
    for i in range(n):
        q = shape(i, layout.attention, layout.o_proj)[1]
        heads = q // head_dim
        if layout.size_keys.get("num_key_value_heads") is None:
            kv = heads
        elif layout.qkv_proj:
            kv = (shape(i, layout.attention, layout.qkv_proj)[0] - q) // 2 // head_dim
        else:
            kv = shape(i, layout.attention, layout.kv_proj[0])[0] // head_dim
        sizes.append({"num_attention_heads": heads, "num_key_value_heads": kv,
                      "intermediate_size": shape(i, layout.mlp, layout.channel_out)[1]})
    return sizes


def describe_checkpoint(folder: Union[str, os.PathLike], config: Optional[dict] = None) -> tuple[list[str],
                                                                                                   Optional[str]]:
    """What ``optimum-slimgpt info`` prints about the saved checkpoint in ``folder`` (``config``: its
    ``config.json``, read here when not given): the lines of the report (model type, the weights' dtype, the
    per-layer heads, KV heads and FFN channels as the *weights* have them (:func:`checkpoint_layer_sizes`) with the
    schedule's ratios, and the pruning provenance), and a warning when the pruning record disagrees with the
    weights (``None`` when it does not). An unreadable ``pruning_config`` is a ``ValueError``."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8")) if config is None else config
    try:
        record = PruningRecord.from_dict(cfg["pruning_config"]) if cfg.get("pruning_config") else None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'}: unreadable pruning_config ({e})") from e
    layers = checkpoint_layer_sizes(folder)  # from the weights themselves, not from the record
    lines = [f"model_type: {cfg.get('model_type')}  architectures: {cfg.get('architectures')}"]
    weights = checkpoint_dtype(folder)  # what the weights are (headers), whatever the config says
    notes = [f"source {record.source_dtype}" if record and record.source_dtype else "",
             f"pruned in {record.compute_dtype}" if record and record.compute_dtype else ""]
    lines.append(f"dtype: {weights}" + (f" ({', '.join(n for n in notes if n)})" if any(notes) else ""))
    lines.append(f"{'layer':>5} {'heads':>6} {'kv':>4} {'channels':>9} {'head ratio':>10} {'ffn ratio':>9}")
    ratios = (record.layer_ratios if record else None) or [None] * len(layers)
    ffn = (record.ffn_ratios if record else None) or [None] * len(layers)
    for i, lay in enumerate(layers):
        hr = "-" if i >= len(ratios) or ratios[i] is None else f"{ratios[i]:.3f}"
        fr = "-" if i >= len(ffn) or ffn[i] is None else f"{ffn[i]:.3f}"
        lines.append(f"{i:>5} {lay['num_attention_heads']:>6} {lay['num_key_value_heads']:>4} "
                     f"{lay['intermediate_size']:>9} {hr:>10} {fr:>9}")
    if not record:
        return lines, None
    lines.append(f"method: {record.pruning_method}  ratio: {record.pruning_ratio}  removed: {record.achieved_ratio}  "
                 f"schedule: {record.schedule}  format: {record.export_format}  record v{record.format_version}")
    if record.history:
        lines.append(f"pruned {len(record.history) + 1} times; removed from the base model: {record.cumulative_ratio}")
    lines.append(f"calibration: {json.dumps(record.calibration)}")
    if record.search:
        from .search import describe_search

        lines += describe_search(record.search)
    for r in record.recovery:
        lines.append(f"recovered: {r.get('steps')} steps, {r.get('tokens')} tokens, loss {r.get('loss')}, "
                     f"LoRA r={r.get('lora_r')}, data {json.dumps(r.get('data', {}).get('dataset'))}, "
                     f"final train loss {r.get('final_train_loss')}")
    canon = [{k: lay.get(k) for k in _SIZE_KEYS} for lay in record.layers]
    if record.export_format == "padded" and canon != layers:
        lines.append("the weights are zero-padded to the largest layer; the sizes of the function are those of the "
                     "pruning record: " + json.dumps(canon))
    elif canon and canon != layers:
        bad = [i for i, (a, b) in enumerate(zip(canon, layers)) if a != b] or ["count"]
        return lines, f"the pruning record disagrees with the weights in layer(s) {bad}: the table shows the weights"
    return lines, None


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
    write_weights: Optional[Callable[[Path, list[str]], None]] = None,
    dtype: Union[str, torch.dtype, None] = "auto",
    **hub_kwargs: Any,
) -> SaveResult:
    """Save a pruned model so that ``AutoModelForCausalLM.from_pretrained(save_dir)`` loads it.

    Args:
        model: A model pruned by :class:`~optimum_slimgpt.SlimGPTPruner` (it carries ``config.pruning_config``).
        save_dir: The checkpoint folder. Written atomically (temporary folder beside it, then renamed).
        tokenizer: Saved alongside when given.
        export_format: ``"auto"`` or a registered exporter's name (``"per_layer"``, ``"uniform"``, ``"padded"``).
        overwrite: Replace a non-empty ``save_dir`` (the old content survives any failure).
        max_shard_size: Passed to ``save_pretrained``.
        safe_serialization: Only ``True`` (safetensors) is supported by transformers 5.
        model_card: Write a ``README.md`` (YAML metadata, per-layer table, pruning and calibration details).
        eval_results: ``{metric: value}`` added to the model card.
        base_model: Hub id of the unpruned model for the card metadata (default: the config's ``name_or_path``
            when it looks like a Hub id).
        push_to_hub: Upload the saved folder with ``huggingface_hub`` (``create_repo`` + ``upload_folder``).
        repo_id: Target repository (default: the folder name); ``private``, ``commit_message`` and ``hub_kwargs``
            (``token``, ``revision``, ``create_pr``...) go to ``huggingface_hub``.
        write_weights: For a model whose weights are not in memory (:func:`~optimum_slimgpt.prune_pretrained`):
            ``write_weights(folder, names)`` writes the tensors ``names`` (``*.safetensors`` and their index) into
            the temporary folder; the exporter writes the rest. Only for exporters with ``streamable``. It writes
            the tensors in the saved dtype (``SaveResult.dtype``; the exporter's config says that one).
        dtype: The dtype of the saved floating-point weights. ``"auto"`` (default): the dtype of the checkpoint the
            model was pruned from (the record's ``source_dtype``: bf16/fp16 for such checkpoints, bf16 for a GGUF
            file), whatever dtype the pruning computed in; the model's own when the source is unknown. ``None``: the
            model's own dtype. A ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ``"float16"``): that one.
            The model in memory is not changed (the cast is of a copy of the tensors, shared ones cast once).

    Returns:
        A :class:`SaveResult`.
    """
    if not safe_serialization:
        raise ValueError("only safetensors checkpoints are written (transformers 5 has no pickle format)")
    view = ModelView.of(model)  # refuses unpruned and half-pruned (failed) models
    view.save_dtype = _resolve_save_dtype(model, view.record, dtype)
    plan = plan_export(model, export_format)
    if write_weights is not None and not EXPORTERS[plan.format].streamable:
        raise ExportError(f"export_format={plan.format!r} cannot be written from streamed weights; use 'per_layer' "
                          "or 'uniform'", reason=f"{plan.format!r} is not streamable")
    clean_stale_work_dirs(save_dir)
    source = getattr(model.config, "name_or_path", None) or None
    elem = torch.empty(0, dtype=view.saved_dtype).element_size()
    needed = sum(t.numel() * (elem if t.is_floating_point() else t.element_size())
                 for t in {id(t): t for t in model.state_dict().values()}.values())
    # (for streamed weights this counts the whole checkpoint, of which the work folder holds the blocks already)
    target = check_output_dir(save_dir, overwrite=overwrite, sources=[source] if source else [], needed_bytes=needed)
    exporter = EXPORTERS[plan.format]
    saved_dtype = _dtype_name(view.saved_dtype) if exporter.writes_dtype else None
    logger.info("saving the pruned model to %s as '%s'%s: %s", target, plan.format,
                f" in {saved_dtype}" if saved_dtype else "", plan.reason)

    target.parent.mkdir(parents=True, exist_ok=True)
    with _terminate_as_interrupt():
        tmp = Path(tempfile.mkdtemp(prefix=_work_prefix(target, "tmp"), dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            if write_weights is None:
                # (an exporter that writes the tokenizer into its own file, e.g. gguf, is given it)
                extra = {"tokenizer": tokenizer} if exporter.needs_tokenizer else {}
                exporter.write(view, plan, tmp, max_shard_size, **extra)
            else:
                exporter.write(view, plan, tmp, max_shard_size, weights=False)
                write_weights(tmp, exporter.saved_names(view, plan))
            num_params = _checkpoint_params(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if model_card:
                (tmp / "README.md").write_text(_model_card(view, plan, num_params, eval_results, base_model),
                                               encoding="utf-8")
            _readable_files(tmp)
            _swap_into_place(tmp, target, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    result = SaveResult(
        path=target, format=plan.format, reason=plan.reason, layers=plan.layers, num_parameters=num_params,
        weights_bytes=sum(p.stat().st_size for p in target.glob("*.safetensors")),
        files=sorted(p.name for p in target.iterdir()), dtype=saved_dtype,
    )
    if push_to_hub:
        result.repo_id, result.commit_url = _push(target, repo_id or target.name, private, commit_message, hub_kwargs)
    return result


def _push(folder: Path, repo_id: str, private, commit_message, hub_kwargs: dict) -> tuple[str, Optional[str]]:
    from huggingface_hub import HfApi

    hub_kwargs = dict(hub_kwargs)
    api = HfApi(token=hub_kwargs.pop("token", None))
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    rid = getattr(repo, "repo_id", None) or repo_id
    commit = api.upload_folder(repo_id=rid, folder_path=str(folder), repo_type="model",
                               commit_message=commit_message or "Upload pruned model (optimum-slimgpt)", **hub_kwargs)
    url = getattr(commit, "commit_url", None) or (str(commit) if commit is not None else None)
    logger.info("pushed %s to the Hub as %s", folder, rid)
    return rid, url
