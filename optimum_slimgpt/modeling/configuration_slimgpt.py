# Copyright 2026 The optimum-slimgpt developers. Licensed under the Apache License, Version 2.0.
"""Configuration of SlimGPT per-layer pruned models, and the two records every pruned model carries.

This file is *remote code*: ``save_pretrained`` copies it next to the weights and
``from_pretrained(..., trust_remote_code=True)`` runs it where ``optimum_slimgpt`` is not installed, so it
imports nothing but the standard library and ``transformers``.

* :class:`BlockLayout`: the declarative record of a family's decoder block (module names, fused projections,
  the config keys of the per-layer sizes...). Each family adapter owns one; surgery, masking, padding, the
  per-layer model classes and saving all read it, and every checkpoint carries it (``pruning_config["layout"]``).
* :class:`PruningRecord`: the versioned provenance of a pruning run, stored as ``config.pruning_config``.
* :func:`pruned_config_class`: the per-layer config of any family, ``SlimGPT<FamilyConfig>``
  (``model_type="slimgpt_<family>"``), built from the family's own config class. The module-level
  ``__getattr__`` builds it by name, which is how ``auto_map`` entries such as
  ``configuration_slimgpt.SlimGPTLlamaConfig`` resolve.

A pruned checkpoint keeps the *original* (unpruned) global sizes (upper bounds of every layer) and stores the
sizes of each layer with transformers' own ``per_layer_config`` schema, written for every layer and every key.
``head_dim`` is global and explicit. Reading a per-layer size on the global config raises transformers'
``AmbiguousGlobalPerLayerAttributeError`` on purpose; :meth:`SlimGPTConfigMixin.layer_config` gives a layer's.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import transformers

# The per-layer sizes under their canonical (Llama) names.
CANONICAL_PER_LAYER_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
RECORD_VERSION = 2


def join(*parts: str) -> str:
    """Dotted module path from parts, skipping empty ones (``join("", "fc2") == "fc2"``)."""
    return ".".join(p for p in parts if p)


@dataclass(frozen=True)
class BlockLayout:
    """Where the prunable structures of one decoder block are (the defaults describe Llama).

    Attributes:
        blocks: dotted path of the decoder-block ``ModuleList`` from the ``*ForCausalLM``.
        attention / mlp: attention and MLP sub-modules of a block (``mlp=""``: the FFN linears live on the
            block itself, as in OPT).
        q_proj / kv_proj / o_proj: linears (inside ``attention``) whose rows are query-head / KV-head
            dimensions, and the one whose input columns are the query heads.
        qkv_proj: one fused linear whose rows are ``[q heads | k heads | v heads]`` (Phi-3), instead of
            ``q_proj``/``kv_proj``.
        channel_in / channel_out: FFN linears (inside ``mlp``) whose rows are channels, and the one whose
            input columns are channels.
        gate_up_proj: one fused linear whose rows are ``[gate | up]`` (Phi-3), instead of ``channel_in``.
        mlp_norm / mlp_post_norm: the norm that opens the MLP branch (its input is the residual stream after
            attention) and an optional norm on the MLP output, when the block ends in
            ``h + post(mlp(norm(h)))`` (``mlp_norm=None`` otherwise).
        config_view: modules (paths inside a block) whose forward reads a per-layer size from
            ``self.config`` (Phi-3's attention); they get a per-layer view of the shared config.
        text_config: attribute of the model config holding the decoder's config (multimodal models).
        size_keys: canonical size name -> the family config's attribute (``None``: the family has no such
            size, e.g. OPT has no ``num_key_value_heads``).
        full_size_attention: the family's attention derives ``head_dim`` from ``hidden_size / heads``
            (OPT): a layer is built with the unpruned head count and its head projections shrunk after.
        decoder_layer: class name of the decoder layer (filled in from the model when it is pruned).
    """

    blocks: str = "model.layers"
    attention: str = "self_attn"
    mlp: str = "mlp"
    q_proj: tuple[str, ...] = ("q_proj",)
    kv_proj: tuple[str, ...] = ("k_proj", "v_proj")
    o_proj: str = "o_proj"
    qkv_proj: Optional[str] = None
    channel_in: tuple[str, ...] = ("gate_proj", "up_proj")
    channel_out: str = "down_proj"
    gate_up_proj: Optional[str] = None
    mlp_norm: Optional[str] = "post_attention_layernorm"
    mlp_post_norm: Optional[str] = None
    config_view: tuple[str, ...] = ()
    text_config: Optional[str] = None
    size_keys: dict = field(default_factory=lambda: {k: k for k in CANONICAL_PER_LAYER_KEYS})
    full_size_attention: bool = False
    decoder_layer: Optional[str] = None

    @property
    def out_projections(self) -> tuple[str, str]:
        """Block paths of the two output projections (``o_proj``, ``down_proj``): where output biases go."""
        return join(self.attention, self.o_proj), join(self.mlp, self.channel_out)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else copy.deepcopy(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockLayout":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown BlockLayout keys {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "size_keys" in d:  # canonical order (config.json is written with sorted keys)
            d["size_keys"] = {k: d["size_keys"][k] for k in CANONICAL_PER_LAYER_KEYS if k in d["size_keys"]}
        return cls(**d)


#: Layouts of the families known to this process, by base ``model_type`` (filled by the family registry of
#: ``optimum_slimgpt``); used for records that predate the layout field.
KNOWN_LAYOUTS: dict[str, BlockLayout] = {}


@dataclass
class PruningRecord:
    """Provenance of a pruned model, stored as ``config.pruning_config`` (``to_dict``) and versioned.

    ``layers``: per-layer sizes (canonical keys); ``layer_ratios`` / ``ffn_ratios``: the schedule's per-layer
    ratio for the attention and the FFN; ``config``: the pruning config (``PruningConfig.to_dict``);
    ``layout``: the family's :class:`BlockLayout` as a dict; ``export_format`` / ``padded_to``: set in saved
    checkpoints. ``calibration``: what the run really used (source without local paths, windows, a hash of the
    token ids). ``base_block_params``: the decoder-block parameters of the *unpruned* base model;
    ``cumulative_ratio``: the fraction of them removed so far (``achieved_ratio`` is this run's, against its own
    input); ``history``: the earlier runs when a pruned model was pruned again (oldest first); ``recovery``: the
    fine-tuning runs after this pruning (:func:`optimum_slimgpt.recovery.recover`: data, steps, tokens, loss, LoRA
    rank), oldest first (absent in older records, which load with an empty list). ``source_dtype``: the floating-point
    dtype of the checkpoint the base model was loaded from (``"bfloat16"`` for a GGUF file; ``None`` when unknown),
    which ``save_pretrained``/``save_pruned_model(dtype="auto")`` saves in; ``compute_dtype``: the dtype the weights
    were pruned in. ``search``: what a ``schedule="search"`` run found (absent otherwise): the per-layer ``schedule``
    (``[attention_ratio, ffn_ratio]`` pairs; ``PruningConfig(schedule=record.search["schedule"])`` reuses it without
    searching), the per-part ``levels`` (rung indices) and ``ladders``, the search ``settings``, the ``budget`` band,
    the parent's ``fitness_history`` (KL per generation) and ``final`` (``"reprune"`` or ``"stitched"``).
    """

    pruning_method: str
    base_model_type: str
    layers: list = field(default_factory=list)
    base_architectures: list = field(default_factory=list)
    base_dims: dict = field(default_factory=dict)
    pruning_ratio: Optional[float] = None
    achieved_ratio: Optional[float] = None
    schedule: Any = None
    layer_ratios: Optional[list] = None
    ffn_ratios: Optional[list] = None
    config: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    export_format: Optional[str] = None
    padded_to: Optional[dict] = None
    base_block_params: Optional[int] = None
    cumulative_ratio: Optional[float] = None
    history: list = field(default_factory=list)
    recovery: list = field(default_factory=list)
    source_dtype: Optional[str] = None
    compute_dtype: Optional[str] = None
    search: Optional[dict] = None
    format_version: int = RECORD_VERSION

    #: the fields of one run (what ``history`` keeps of each earlier run)
    RUN_FIELDS = ("pruning_method", "pruning_ratio", "achieved_ratio", "schedule", "layer_ratios", "ffn_ratios",
                  "config", "calibration", "layers", "meta", "recovery", "search")

    def run_summary(self) -> dict:
        """This run's own fields (method, ratios, config, calibration, sizes), as kept in a later run's history."""
        return copy.deepcopy({k: getattr(self, k) for k in self.RUN_FIELDS if k != "search" or self.search is not None})

    def to_dict(self) -> dict:
        """A JSON-ready copy; ``export_format`` / ``padded_to`` only once a checkpoint has set them, ``search`` only
        after a search."""
        d = copy.deepcopy(dataclasses.asdict(self))
        return {k: v for k, v in d.items() if v is not None or k not in ("export_format", "padded_to", "search")}

    @classmethod
    def from_dict(cls, d: dict) -> "PruningRecord":
        """Read a record; version-1 records (flat method options, no layout) are upgraded."""
        d = copy.deepcopy(dict(d))
        version = d.get("format_version", 1)
        if version > RECORD_VERSION:
            raise ValueError(f"pruning record version {version} is newer than this code ({RECORD_VERSION})")
        if version == 1:
            legacy = ("schedule_spread", "head_selection", "channel_selection", "compensate", "damp_percent", "seed")
            d["config"] = {k: d.pop(k) for k in legacy if k in d}
            d["format_version"] = RECORD_VERSION
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def of(cls, config) -> Optional["PruningRecord"]:
        """The record of a model config, or ``None`` for an unpruned model."""
        raw = getattr(config, "pruning_config", None)
        return cls.from_dict(raw) if raw else None

    def block_layout(self) -> BlockLayout:
        if self.layout:
            return BlockLayout.from_dict(self.layout)
        return KNOWN_LAYOUTS.get(self.base_model_type, BlockLayout())


def _has_native_per_layer_config(config_cls) -> bool:
    """transformers >= 5.14 (``HeterogeneousConfigMixin``): ``per_layer_config`` is a property."""
    return isinstance(getattr(config_cls, "per_layer_config", None), property)


class SlimGPTConfigMixin:
    """Mixed in *before* the family config class by :func:`pruned_config_class`.

    Extra (non-field) attributes serialised in ``config.json``: ``pruning_config`` (a :class:`PruningRecord`
    dict) and ``pruned_out_bias`` (the two output projections carry a bias in every layer even if the family
    has none: SlimLLM-style compensation; layers without one store zeros).
    """

    # (no annotations here: the family config is a dataclass and these must not become fields)
    slimgpt_base_model_type = ""
    pruning_config = None
    pruned_out_bias = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if _has_native_per_layer_config(type(self)):
            # transformers' default serialisation is sparse (overrides equal to the global value are dropped);
            # write every layer and every key so that readers without the native mechanism can rely on it.
            self.serialize_explicit_per_layer_config = True
        if self.global_value("head_dim") is None:
            heads, hidden = self.global_value("num_attention_heads"), self.global_value("hidden_size")
            if heads and hidden:
                self.head_dim = hidden // heads
        if self.global_value("auto_map") is None:
            self.auto_map = self.default_auto_map()
        self.validate_per_layer()

    # ------------------------------------------------------------------ helpers
    @classmethod
    def default_auto_map(cls) -> dict:
        """``auto_map`` of the remote code: this config, the family's base model and causal LM, pruned."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

        base = cls.slimgpt_base_model_type
        out = {"AutoConfig": f"configuration_slimgpt.{cls.__name__}"}
        for auto, names in (("AutoModel", MODEL_MAPPING_NAMES), ("AutoModelForCausalLM", MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)):
            if base in names:
                out[auto] = f"modeling_slimgpt.SlimGPT{names[base]}"
        return out

    def global_value(self, key: str, default: Any = None) -> Any:
        """An attribute's global value, without the per-layer ambiguity guard (the unpruned size)."""
        getter = getattr(self, "_getattr_without_heterogeneous_validation", None)
        return getter(key, default) if getter is not None else getattr(self, key, default)

    def record(self) -> Optional[PruningRecord]:
        return PruningRecord.of(self)

    def block_layout(self) -> BlockLayout:
        rec = self.record()
        return rec.block_layout() if rec is not None else KNOWN_LAYOUTS.get(self.slimgpt_base_model_type, BlockLayout())

    def _per_layer_overrides(self) -> dict[int, dict]:
        """Per-layer overrides as ``{layer: {attr: value}}`` (native spec, or the raw dict elsewhere)."""
        spec = self.__dict__.get("_heterogeneity_spec")
        if spec is not None:
            return {int(k): dict(v) for k, v in spec.per_layer_overrides.items()}
        raw = self.__dict__.get("per_layer_config")
        return {int(k): dict(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _global_view(self):
        """A shallow copy that is homogeneous (global values readable), e.g. to run the family validators."""
        view = copy.copy(self)
        view.__dict__.pop("_heterogeneity_spec", None)
        view.__dict__.pop("per_layer_config", None)
        return view

    # ------------------------------------------------------------------ per-layer access
    def layer_config(self, layer_idx: int):
        """The configuration of decoder layer ``layer_idx`` (a shallow copy with that layer's sizes)."""
        n = self.global_value("num_hidden_layers")
        if layer_idx < 0:
            layer_idx += n
        if not 0 <= layer_idx < n:
            raise IndexError(f"layer index {layer_idx} out of range for {n} layers")
        if _has_native_per_layer_config(type(self)):
            return self.per_layer_config[layer_idx]
        view = self._global_view()
        for attr, value in self._per_layer_overrides().get(layer_idx, {}).items():
            if attr != "skip":
                setattr(view, attr, value)
        return view

    def layer_sizes(self) -> list[dict]:
        """``[{"num_attention_heads", "num_key_value_heads", "intermediate_size"}, ...]`` (canonical keys)."""
        keys = self.block_layout().size_keys
        out = []
        for i in range(self.global_value("num_hidden_layers")):
            lc = self.layer_config(i)
            out.append({k: (getattr(lc, a, None) if a else None) for k, a in keys.items()})
        return out

    # ------------------------------------------------------------------ validation
    def validate_per_layer(self) -> None:
        """Raise ``ValueError`` unless every layer has positive sizes and whole KV groups."""
        n = self.global_value("num_hidden_layers")
        bad_idx = [i for i in self._per_layer_overrides() if not 0 <= i < (n or 0)]
        if bad_idx:
            raise ValueError(f"per_layer_config has layer indices {bad_idx} outside [0, {n})")
        head_dim = self.global_value("head_dim")
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
            raise ValueError(f"{type(self).__name__} needs an explicit positive integer head_dim, got {head_dim!r}")
        keys = self.block_layout().size_keys
        for i, sizes in enumerate(self.layer_sizes()):
            for k, attr in keys.items():
                v = sizes[k]
                if attr and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                    raise ValueError(f"layer {i}: {attr} must be a positive integer, got {v!r}")
            h, kv = sizes.get("num_attention_heads"), sizes.get("num_key_value_heads")
            if keys.get("num_key_value_heads") and h % kv != 0:
                raise ValueError(f"layer {i}: num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})")

    def validate(self) -> None:
        """The family's own validators on the global (unpruned) sizes, then the per-layer checks.

        Overrides the ``validate`` that ``@strict`` installs: the family's ``validate_architecture`` would
        read an ambiguous per-layer global (and Llama's rejects head counts that do not divide ``hidden_size``,
        which is fine here since ``head_dim`` is explicit).
        """
        if getattr(super(), "validate", None) is not None:
            getattr(super(SlimGPTConfigMixin, self._global_view()), "validate")()
        self.validate_per_layer()


_CONFIG_CLASSES: dict[type, type] = {}


def pruned_config_class(family_config: type) -> type:
    """``SlimGPT<FamilyConfig>``: the family config class with per-layer sizes (built once, then cached)."""
    cls = _CONFIG_CLASSES.get(family_config)
    if cls is None:
        name = f"SlimGPT{family_config.__name__}"
        attrs = {"__module__": __name__, "__qualname__": name, "model_type": f"slimgpt_{family_config.model_type}",
                 "slimgpt_base_model_type": family_config.model_type}
        cls = _CONFIG_CLASSES[family_config] = type(name, (SlimGPTConfigMixin, family_config), attrs)
        cls.register_for_auto_class()
    return cls


def transformers_class(name: str, base: type) -> Optional[type]:
    """The transformers class that ``SlimGPT<Name>`` prunes, if ``name`` is such a name."""
    if not name.startswith("SlimGPT"):
        return None
    cls = getattr(transformers, name[len("SlimGPT"):], None)
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def __getattr__(name: str):
    family_config = transformers_class(name, transformers.PreTrainedConfig)
    if family_config is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return pruned_config_class(family_config)
