"""Configuration of a pruning run: one config class per method on a shared base.

:class:`PruningConfig` holds what every method shares: the budget (``pruning_ratio``), how it is spread over
depth (``schedule``), where the calibration text comes from and how it is cut, the structural floors, the
device and the seed. Each method's config adds only its own knobs: :class:`SlimGPTConfig` (OBS numerics,
selection and compensation) and :class:`SlimLLMConfig` (regression recovery, swap search). The pruner
dispatches on the config's *type* through one registry (:func:`optimum_slimgpt.methods.register_method`), so
a third-party method is a config subclass plus a registered method class; registering the method also registers
its config here by name (:func:`register_config`), so this module never imports the methods.

Every field is declared as ``name: T = field(default=..., metadata={"help": "one line"})``: the command line
builds its flags from these (:mod:`optimum_slimgpt.cli_args`), and the class docstrings document the same
fields at length (a test checks that every field has both).

There is no ``method=`` argument: ``SlimGPTConfig(method="slimllm")`` raises a ``ValueError`` that names
``SlimLLMConfig``. :meth:`PruningConfig.for_method` builds the config of a method given by name (the CLI
does this), and :meth:`PruningConfig.from_dict` reads any method's config back from its ``"method"`` key.
All configs are plain JSON-serialisable dataclasses that need no optional backend to be built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch

__all__ = ["ConfigError", "PruningConfig", "SlimGPTConfig", "SlimLLMConfig", "FLAPConfig", "SCHEDULES", "SEARCH_FINALS",
           "SEARCH_DATABASE_INPUTS", "DatasetLike", "register_config", "registered_configs", "config_class_for",
           "fields_from_record", "parse_schedule"]

SCHEDULES = ("log_increase", "linear_increase", "uniform", "layer_importance", "search")
SEARCH_FINALS = ("reprune", "stitched")
SEARCH_DATABASE_INPUTS = ("dense", "propagated")
HEAD_SELECTIONS = ("obs", "obs_official", "magnitude")
CHANNEL_SELECTIONS = ("obs", "magnitude")
DatasetLike = Union[str, Sequence[str], torch.Tensor, None]


class ConfigError(ValueError, TypeError):
    """A config field has a bad value (wrong type, out of range, unknown choice, not JSON-safe).

    Every field raises this one type. It subclasses both ``ValueError`` and ``TypeError``, so code that catches
    either keeps working. ``field`` names the offending field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check(ok: bool, name: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(name, f"{name} must be {what}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bool(obj: Any, *names: str) -> None:
    """Booleans must be real ``bool`` values: ``"False"``, ``0`` or ``None`` are refused, never read as truthy."""
    for name in names:
        v = getattr(obj, name)
        _check(isinstance(v, bool), name, "a bool (True or False, not a string or number)", v)


def _check_json_safe(name: str, value: Any) -> None:
    """``value`` must serialise as standard JSON (no NaN/Infinity, string keys, plain types)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(name, f"{name} must be standard-JSON serialisable (no NaN/inf, plain types), got "
                                f"{value!r}: {e}") from e


def _check_chat_instructions(value: Any) -> None:
    """``chat_instructions``: ``None``, a path, or a non-empty list of non-empty strings (the file is read when used)."""
    if value is None or isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return
    _check(isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v.strip() for v in value),
           "chat_instructions", "None, a text file (one instruction per line) or a non-empty list of non-empty strings",
           value)


def _check_device(value: Any) -> None:
    if value is None or isinstance(value, torch.device):
        return
    _check(isinstance(value, str), "device", "None, a device string such as 'cuda:0' or a torch.device", value)
    try:
        torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise ConfigError("device", f"device must be a valid torch device string such as 'cpu' or 'cuda:0', got "
                                    f"{value!r}") from e


def parse_schedule(raw: str) -> Union[str, list]:
    """A ``schedule`` given as text (``--schedule``): a name, a comma list of per-layer ratios, a comma list of
    ``attention:ffn`` ratio pairs, or the folder of a checkpoint pruned with ``schedule="search"`` (its profile,
    :func:`~optimum_slimgpt.search.searched_schedule`, reused without searching). ``ValueError`` says what is wrong;
    an unknown name is returned as it is, for :meth:`PruningConfig.validate` to refuse."""
    raw = raw.strip()
    if not raw or raw in SCHEDULES:
        return raw
    if Path(raw).expanduser().exists():
        from .search import searched_schedule

        return searched_schedule(Path(raw).expanduser())
    try:
        if ":" in raw:
            return [[float(y) for y in x.split(":")] for x in raw.split(",") if x.strip()]
        if "," in raw:
            return [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValueError("a list must be comma-separated numbers (per-layer ratios) or attention:ffn pairs") from None
    return raw


@dataclass
class PruningConfig:
    """What every pruning method shares. Use a method's config (:class:`SlimGPTConfig`, :class:`SlimLLMConfig`).

    Args:
        pruning_ratio: Fraction of the decoder-block parameters (attention and MLP linear layers, embeddings and
            norms excluded) to remove, ``0 <= r < 1``. The per-layer ratios of the schedule are *solved* so that
            the parameters actually removed, after rounding to whole heads and channels, match this fraction.
        schedule: How the ratio grows with depth (SlimGPT's *Incremental Pruning Ratio*): ``"log_increase"``
            (default, ``r_i ∝ 1/k + (1 - 1/k) · ln(1+i)/ln(L)``), ``"linear_increase"`` (same with ``i/(L-1)``),
            ``"uniform"``, ``"layer_importance"`` (SlimLLM's layer-based ratios: the ``importance_layers`` most
            redundant layers, by the mean cosine between each dense block's input and output on the calibration
            data, get ratios ``∝ softmax(importance_alpha · cos)``; the others stay dense), or an explicit list of
            per-layer ratios (used as given; ``pruning_ratio`` is then only reported), or an explicit list of
            per-layer ``[attention_ratio, ffn_ratio]`` pairs (the profile of a ``"search"`` run,
            ``PruningRecord.search["schedule"]``: it reproduces the searched sizes without searching again).
            ``"search"``: an evolutionary search for the per-layer sizes (EvoPress's (1+λ) loop, see
            :mod:`optimum_slimgpt.search`): every block's attention and FFN are pruned at each of the
            ``search_levels`` with the method's own solver, and the candidates, per-part level vectors that remove
            ``pruning_ratio`` of the block parameters (within half a ladder step), are ranked by the KL divergence
            of their next-token distribution from the dense model's on the calibration windows.
        schedule_spread: ``k`` above: the last layer's ratio over the first's (the official settings use 4).
        max_layer_ratio: Upper bound of any layer's ratio.
        importance_layers: ``layer_importance``: how many layers are pruned (``None``:
            ``round(L · (35 + 20·pruning_ratio)/48)``, the line through the official SlimLLM settings).
        importance_alpha: ``layer_importance``: softmax temperature on the layer cosines (official: 10).
        dataset: Calibration data: ``"auto"`` (default: ``"self-chat"`` when the tokenizer has a chat template and
            the model is loaded whole, else ``"wikitext2"``), a registered name (``"wikitext2"``, ``"c4"``, ``"ptb"``,
            ``"self"``: text sampled from the model, ``"self-chat"``: conversations the model writes with its own chat
            template), a local text/json/jsonl/csv/parquet file or dataset folder (a ``.jsonl``/``.json`` file of
            ``{"messages": [...]}`` records is a chat file, formatted with the chat template), a list of strings, or a
            ``(samples, seqlen)`` integer tensor of token ids (then no tokenizer is needed).
        chat_instructions: ``"self-chat"``: the instructions the model answers, a text file with one per line or a
            list of strings (``None``: the 100 varied ones shipped with the package).
        dataset_split: Split to read for a registered dataset name.
        dataset_text_field: Column holding the text for file/folder datasets.
        num_samples: Number of calibration windows.
        seqlen: Tokens per calibration window.
        batch_size: Windows per forward pass during calibration.
        seed: Seed of the calibration window sampler (and anything else random).
        prune_heads / prune_ffn: Remove attention heads / FFN channels.
        min_heads / min_channels: Floors on query heads / FFN channels kept per layer.
        channel_multiple: Keep every layer's FFN channels in multiples of this (the schedule is solved under the
            constraint). ``"auto"`` (default): per layer, the largest power of two dividing its dense width, at
            most 256 and at most a quarter of the width
            (:func:`~optimum_slimgpt.solvers.schedule.auto_channel_multiple`): 256 for SmolLM2 (1536),
            Llama-2/3, Mistral and most Qwen2 widths, so llama.cpp quantises every pruned ``ffn_down`` with its
            K-quants (rows of whole 256-value blocks; other rows fall back to Q5_0/Q8_0, or to F16 when not a
            multiple of 32) and GPU kernels get whole 64/128 tiles; a width the dense model does not align (172:
            4) gets no coarser steps than it has. An int is used for every layer (``1`` = whole channels, the
            setting before ``"auto"``).
        kv_head_multiple: Keep every layer's KV heads (and so its query heads) in multiples of this, the schedule
            solved under the constraint; set it to the tensor-parallel degree to serve the per-layer model with
            ``--tensor-parallel-size N`` (1 = off). Must divide the model's ``num_key_value_heads``.
        device: Where each block is processed (``None``: where the model's first block lives).
        offload_activations: Keep the calibration activations in (pinned) CPU memory.
        meta: Free-form notes recorded with the run.
        search_levels: ``schedule="search"``: the level grid, fractions of a part's parameters to remove (each is
            rounded to whole heads / channels as every schedule is; levels that round to the same size count once).
        search_generations: ``"search"``: generations of the (1+λ) loop.
        search_offspring: ``"search"``: offspring (λ) per generation.
        search_tokens: ``"search"``: calibration tokens of each selection step, cheapest first (whole ``seqlen``
            windows, then the first tokens of the next one; the windows of a step include those of the steps before).
        search_survivors: ``"search"``: offspring that go on from each selection step to the next (one entry per
            step but the last; non-increasing); the best of the last step replaces the parent if it is better.
        search_seed: ``"search"``: seed of the mutations (the search is deterministic for a seed).
        search_minutes: ``"search"``: time budget; the search stops after the generation running when it is spent
            and keeps the best candidate so far (``None``: no limit).
        search_final: ``"search"``: the model returned: ``"reprune"`` (default; the block loop re-prunes at the
            found sizes with propagated inputs) or ``"stitched"`` (the best candidate itself, each part as the level
            database pruned it).
        search_database_inputs: ``"search"``: the block inputs the level database is pruned on: ``"propagated"``
            (default: those of the model pruned at the starting candidate's levels, as the block loop propagates
            them: each block's variants see the error of the pruned blocks before it, and the stitched starting
            candidate is the block loop's model at its sizes) or ``"dense"`` (the dense model's, as EvoPress builds
            its database; one dense pass instead of the block loop's, about 15% less time for the database).
        search_max_memory_gb: ``"search"``: the level database (every part pruned at every level) may hold this
            much memory; a larger one needs ``search_offload_dir``.
        search_offload_dir: ``"search"``: keep the level database on disk there (safetensors) instead of in memory.
    """

    method_name: ClassVar[str] = ""
    #: display name in progress bars, logs and model cards
    label: ClassVar[str] = ""

    pruning_ratio: float = field(default=0.2, metadata={
        "help": "fraction of the decoder-block parameters (attention + MLP linears) to remove, in [0, 1)",
        "aliases": ["--ratio"]})
    schedule: Union[str, list[float]] = field(default="log_increase", metadata={
        "help": "how the ratio grows with depth, a comma list of layer ratios or of attention:ffn ratio pairs, or "
                "the folder of a model pruned with schedule search, to reuse its profile",
        "choices": SCHEDULES, "parse": parse_schedule})
    schedule_spread: float = field(default=4.0, metadata={
        "help": "the last layer's ratio over the first's in log_increase / linear_increase (>= 1)"})
    max_layer_ratio: float = field(default=0.9, metadata={"help": "upper bound of any layer's ratio, in (0, 1)"})
    importance_layers: Optional[int] = field(default=None, metadata={
        "help": "layer_importance: how many layers are pruned (None: round(L * (35 + 20 * ratio) / 48))"})
    importance_alpha: float = field(default=10.0, metadata={
        "help": "layer_importance: softmax temperature on the layer cosines"})
    dataset: DatasetLike = field(default="auto", metadata={
        "help": "calibration data: auto (self-chat for a chat model, else wikitext2), a registered name (wikitext2, "
                "c4, ptb), 'self' (text the model generates), 'self-chat' (conversations it writes with its chat "
                "template), or a local .txt/.json/.jsonl/.csv/.parquet file, chat .jsonl (messages) or dataset folder"})
    chat_instructions: Union[str, list[str], None] = field(
        default=None, metadata={"help": "dataset self-chat: a text file with one instruction per line for the model "
                                        "to answer (default: 100 varied built-in ones)"})
    dataset_split: str = field(default="train", metadata={
        "help": "split of a registered dataset or dataset folder", "aliases": ["--split"]})
    dataset_text_field: str = field(default="text", metadata={
        "help": "column holding the text in a file or folder dataset"})
    num_samples: int = field(default=128, metadata={"help": "number of calibration windows", "aliases": ["--samples"]})
    seqlen: int = field(default=2048, metadata={
        "help": "tokens per calibration window (at most the model's max_position_embeddings)"})
    batch_size: int = field(default=8, metadata={"help": "windows per calibration forward"})
    seed: int = field(default=0, metadata={"help": "seed of the window sampler (and of self-generated text)"})
    prune_heads: bool = field(default=True, metadata={"help": "remove attention heads", "aliases": ["--heads"]})
    prune_ffn: bool = field(default=True, metadata={"help": "remove FFN channels", "aliases": ["--ffn"]})
    min_heads: int = field(default=1, metadata={"help": "fewest query heads kept in any layer"})
    min_channels: int = field(default=1, metadata={"help": "fewest FFN channels kept in any layer"})
    channel_multiple: Union[int, str] = field(default="auto", metadata={
        "help": "keep each layer's FFN channels in multiples of this: 'auto' (the largest power of two dividing the "
                "dense width, at most 256 and width/4: llama.cpp K-quants and GPU kernels take them whole) or an int "
                "(1 = whole channels)"})
    kv_head_multiple: int = field(default=1, metadata={
        "help": "keep each layer's KV heads (and their query heads) in multiples of this, e.g. the tensor-parallel "
                "degree (must divide num_key_value_heads)"})
    device: Optional[str] = field(default=None, metadata={
        "help": "where each block is pruned, e.g. cuda:0 (None: where the model's first block is)"})
    offload_activations: bool = field(default=False, metadata={
        "help": "keep the calibration activations in (pinned) CPU memory"})
    meta: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "free-form notes recorded with the run (a JSON object)"})
    search_levels: list[float] = field(
        default_factory=lambda: [round(0.1 * k, 1) for k in range(10)],
        metadata={"help": "schedule=search: level grid, fractions of a part's parameters to remove"})
    search_generations: int = field(default=200, metadata={"help": "schedule=search: generations of the (1+λ) loop"})
    search_offspring: int = field(default=16, metadata={"help": "schedule=search: offspring (λ) per generation"})
    search_tokens: list[int] = field(
        default_factory=lambda: [1024, 4096, 16384],
        metadata={"help": "schedule=search: calibration tokens of each selection step, cheapest first"})
    search_survivors: list[int] = field(
        default_factory=lambda: [4, 2],
        metadata={"help": "schedule=search: offspring kept after each selection step but the last"})
    search_seed: int = field(default=0, metadata={"help": "schedule=search: seed of the mutations"})
    search_minutes: Optional[float] = field(
        default=None, metadata={"help": "schedule=search: time budget in minutes (stops with the best so far)"})
    search_final: str = field(
        default="reprune",
        metadata={"help": "schedule=search: reprune (re-prune at the found sizes) or stitched (the best candidate)",
                  "choices": SEARCH_FINALS})
    search_database_inputs: str = field(
        default="propagated",
        metadata={"help": "schedule=search: block inputs of the level database: dense or propagated (the starting "
                          "candidate's pruned model)", "choices": SEARCH_DATABASE_INPUTS})
    search_max_memory_gb: float = field(
        default=8.0, metadata={"help": "schedule=search: memory the level database may use (GiB)"})
    search_offload_dir: Optional[str] = field(
        default=None, metadata={"help": "schedule=search: keep the level database on disk in this folder"})
    method: InitVar[Optional[str]] = None

    def __post_init__(self, method: Optional[str] = None) -> None:
        if not self.method_name:
            raise TypeError("PruningConfig is the shared base: use a method's config (SlimGPTConfig, SlimLLMConfig, ...)")
        if method is not None and method != self.method_name:
            other = config_class_for(method)  # an unknown name raises, listing the registered ones
            raise ConfigError("method", f"{type(self).__name__} configures method {self.method_name!r}; method={method!r} "
                                        f"has its own config class: use {other.__name__}(...) or PruningConfig.for_method({method!r}, ...)")
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` (a ``ValueError`` and ``TypeError``) naming the first bad
        one. Called on construction and again by the pruner before a run (fields may be reassigned)."""
        r = self.pruning_ratio
        _check(_is_number(r), "pruning_ratio", "a number with 0 <= pruning_ratio < 1", r)
        _check(0.0 <= r < 1.0, "pruning_ratio", "a number with 0 <= pruning_ratio < 1", r)
        if isinstance(self.schedule, (list, tuple)):
            ratio = lambda x: _is_number(x) and 0.0 <= x < 1.0  # noqa: E731
            _check(bool(self.schedule) and (all(ratio(x) for x in self.schedule) or all(
                isinstance(x, (list, tuple)) and len(x) == 2 and all(ratio(y) for y in x) for x in self.schedule)),
                "schedule", "a non-empty list of numbers in [0, 1) (explicit schedule ratios) or of "
                "[attention_ratio, ffn_ratio] pairs in [0, 1)", self.schedule)
            self.schedule = [[float(y) for y in x] if isinstance(x, (list, tuple)) else float(x) for x in self.schedule]
        else:
            _check(isinstance(self.schedule, str) and self.schedule in SCHEDULES, "schedule",
                   f"one of {SCHEDULES} or a list of per-layer ratios", self.schedule)
        _check(_is_number(self.schedule_spread) and self.schedule_spread >= 1.0, "schedule_spread", "a number >= 1",
               self.schedule_spread)
        _check(_is_number(self.max_layer_ratio) and 0.0 < self.max_layer_ratio < 1.0, "max_layer_ratio",
               "a number in (0, 1)", self.max_layer_ratio)
        for name in ("num_samples", "seqlen", "batch_size", "min_heads", "min_channels", "kv_head_multiple"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer", getattr(self, name))
        cm = self.channel_multiple
        _check(cm == "auto" or (_is_int(cm) and cm >= 1), "channel_multiple", "'auto' or a positive integer", cm)
        il = self.importance_layers
        _check(il is None or (_is_int(il) and il >= 1), "importance_layers", "None or a positive integer", il)
        _check(_is_number(self.importance_alpha) and self.importance_alpha >= 0, "importance_alpha",
               "a finite number >= 0", self.importance_alpha)
        _check(_is_int(self.seed) and 0 <= self.seed < 2**63, "seed", "a non-negative integer", self.seed)
        _check_bool(self, "prune_heads", "prune_ffn", "offload_activations")
        if not (self.prune_heads or self.prune_ffn) and self.pruning_ratio > 0:
            raise ConfigError("prune_ffn", "prune_heads and prune_ffn are both False: nothing can be pruned")
        _check_device(self.device)
        self._validate_search()
        for name in ("dataset_split", "dataset_text_field"):
            _check(isinstance(getattr(self, name), str) and bool(getattr(self, name)), name, "a non-empty string",
                   getattr(self, name))
        _check(isinstance(self.meta, dict), "meta", "a dict", self.meta)
        _check_json_safe("meta", self.meta)
        d = self.dataset
        _check(d is None or isinstance(d, (str, list, tuple, torch.Tensor, os.PathLike)), "dataset",
               "a dataset name, a file path, a list of strings or a LongTensor of token ids", d)
        if isinstance(d, torch.Tensor):
            _check(d.dim() == 2 and d.dtype in (torch.long, torch.int, torch.int32), "dataset",
                   "an integer tensor of token ids of shape (samples, seqlen)", f"{tuple(d.shape)} {d.dtype}")
            _check(d.numel() > 0, "dataset", "a non-empty token tensor", tuple(d.shape))
            _check(bool((d >= 0).all()), "dataset", "token ids >= 0", int(d.min()))
        if isinstance(d, (list, tuple)):
            _check(bool(d) and all(isinstance(s, str) for s in d), "dataset", "a non-empty list of strings",
                   f"{type(d).__name__} of {len(d)} items")
        if isinstance(d, str):
            _check(bool(d.strip()), "dataset", "a non-empty name or path", d)
        if isinstance(self.chat_instructions, os.PathLike):
            self.chat_instructions = os.fspath(self.chat_instructions)
        _check_chat_instructions(self.chat_instructions)

    def _validate_search(self) -> None:
        lv = self.search_levels
        _check(isinstance(lv, (list, tuple)) and bool(lv), "search_levels",
               "a non-empty list of levels in [0, 1) (the search's level grid)", lv)
        _check(all(_is_number(x) and 0.0 <= x < 1.0 for x in lv), "search_levels", "a list of numbers in [0, 1)", lv)
        self.search_levels = sorted({float(x) for x in lv})
        for name in ("search_generations", "search_offspring"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, name, "a positive integer", v)
        tk, sv = self.search_tokens, self.search_survivors
        _check(isinstance(tk, (list, tuple)) and bool(tk) and all(_is_int(t) and t >= 1 for t in tk),
               "search_tokens", "a non-empty list of positive token counts (one per selection step)", tk)
        _check(all(a <= b for a, b in zip(tk, tk[1:])), "search_tokens", "non-decreasing (cheapest step first)", tk)
        _check(isinstance(sv, (list, tuple)) and all(_is_int(s) and s >= 1 for s in sv), "search_survivors",
               "a list of positive integers", sv)
        if len(sv) != len(tk) - 1:
            raise ConfigError("search_survivors", f"search_survivors must have one entry per selection step but the "
                                                  f"last: {len(tk) - 1} for search_tokens={list(tk)}, got {list(sv)}")
        _check(all(a >= b for a, b in zip(sv, sv[1:])), "search_survivors", "non-increasing", sv)
        _check(not sv or sv[0] <= self.search_offspring, "search_survivors",
               f"at most search_offspring={self.search_offspring} in its first entry", sv)
        self.search_tokens, self.search_survivors = [int(t) for t in tk], [int(s) for s in sv]
        _check(_is_int(self.search_seed) and 0 <= self.search_seed < 2**63, "search_seed", "a non-negative integer",
               self.search_seed)
        m = self.search_minutes
        _check(m is None or (_is_number(m) and m > 0), "search_minutes", "None or a number > 0", m)
        _check(self.search_final in SEARCH_FINALS, "search_final", f"one of {SEARCH_FINALS}", self.search_final)
        _check(self.search_database_inputs in SEARCH_DATABASE_INPUTS, "search_database_inputs",
               f"one of {SEARCH_DATABASE_INPUTS}", self.search_database_inputs)
        _check(_is_number(self.search_max_memory_gb) and self.search_max_memory_gb >= 0, "search_max_memory_gb",
               "a number >= 0", self.search_max_memory_gb)
        d = self.search_offload_dir
        _check(d is None or (isinstance(d, (str, os.PathLike)) and bool(os.fspath(d))), "search_offload_dir",
               "None or a folder path", d)
        if isinstance(d, os.PathLike):
            self.search_offload_dir = os.fspath(d)

    # ------------------------------------------------------------------ construction by name
    @staticmethod
    def for_method(method: str, **kwargs: Any) -> "PruningConfig":
        """The config of the registered method ``method`` (``"slimgpt"``, ``"slimllm"``...) built from ``kwargs``."""
        return config_class_for(method)(**kwargs)

    # ------------------------------------------------------------------ serialisation
    def describe_dataset(self) -> Any:
        """A JSON-safe description of the calibration data (never the raw text)."""
        d = self.dataset
        if isinstance(d, torch.Tensor):
            return {"type": "token_ids", "shape": list(d.shape)}
        if isinstance(d, (list, tuple)):
            return {"type": "texts", "count": len(d)}
        return os.fspath(d) if isinstance(d, os.PathLike) else d

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary with the method name; a tensor or list dataset is replaced by its description."""
        out: dict[str, Any] = {"method": self.method_name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = self.describe_dataset() if f.name == "dataset" else str(v) if isinstance(v, torch.device) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruningConfig":
        """Inverse of :meth:`to_dict`, for the method named by ``d["method"]``. Unknown keys raise."""
        d = dict(d)
        target = config_class_for(d.pop("method", None) or cls.method_name)
        if cls is not PruningConfig and not issubclass(target, cls):
            raise ConfigError("method", f"{cls.__name__}.from_dict got the config of {target.__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(target)}
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown {target.__name__} keys: {sorted(unknown)}")
        if isinstance(d.get("dataset"), dict):  # a description of in-memory data cannot be re-created
            d["dataset"] = None
        return target(**d)

    @classmethod
    def from_record(cls, record: dict[str, Any], **overrides: Any) -> "PruningConfig":
        """The config that made a pruned checkpoint, from its record (``model.config.pruning_config``, see
        :func:`fields_from_record`), with ``overrides`` (e.g. ``dataset=`` the calibration file, which the record
        names without its path) applied: pruning the same model with it repeats the run."""
        return cls.from_dict({**fields_from_record(record), **overrides})

    def to_json_string(self) -> str:
        """Standard JSON (``NaN``/``Infinity`` are refused, never written)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json_string(cls, s: str) -> "PruningConfig":
        return cls.from_dict(json.loads(s))

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: Union[str, os.PathLike]) -> "PruningConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())


@dataclass
class SlimGPTConfig(PruningConfig):
    """SlimGPT (Ling et al., 2024): structured Optimal Brain Surgeon. The shared fields are those of
    :class:`PruningConfig`; SlimGPT's own:

    Args:
        damp_percent: Damping added to the Hessian diagonal, as a fraction of its mean.
        ffn_max_group / ffn_min_group: Largest / smallest group of FFN channels removed in one OBS step
            (Dynamic Group Size).
        compensate: Apply the OBS update to the kept weights (``False`` = plain removal, a baseline).
        head_selection: ``"obs"`` (exact grouped OBS error, default), ``"obs_official"`` (the official code's
            diagonal-of-Cholesky estimate) or ``"magnitude"`` (a baseline: L2 norm of all the head's weights,
            its ``q_proj`` rows and ``o_proj`` columns, plus the ``k/v_proj`` rows when a whole KV group goes).
            With ``compensate=True`` the magnitude choice is made on the unpruned weights and the kept weights
            get the OBS update.
        channel_selection: ``"obs"`` (default) or ``"magnitude"`` (a baseline: L2 norm of the channel's
            ``gate/up_proj`` rows and ``down_proj`` column).
        bias_compensation: Affine OBS compensation: the reconstruction of ``o_proj``/``down_proj`` is the best
            linear-*plus-bias* map of the kept inputs (the inputs get a constant 1 that is never pruned, so the
            OBS update also moves an output bias), never worse on the calibration data than the plain update.
            Adds output biases to ``o_proj``/``down_proj`` (saved by the ``per_layer`` format, and by
            ``uniform`` for families with ``attention_bias``/``mlp_bias`` flags such as Llama). With
            ``compensate=False`` only the bias is repaired (the mean shift ``W_S μ_S`` of FLAP). See
            ``docs/algorithms.md``.
    """

    method_name: ClassVar[str] = "slimgpt"
    label: ClassVar[str] = "SlimGPT"

    damp_percent: float = field(default=0.01, metadata={
        "help": "Hessian damping, a fraction of its mean diagonal, in [0, 10)", "aliases": ["--damp"]})
    ffn_max_group: int = field(default=1024, metadata={
        "help": "largest group of FFN channels removed in one OBS step (Dynamic Group Size)"})
    ffn_min_group: int = field(default=64, metadata={
        "help": "smallest group of FFN channels removed in one OBS step"})
    compensate: bool = field(default=True, metadata={
        "help": "apply the OBS update to the kept weights (off: plain removal, a baseline)"})
    head_selection: str = field(default="obs", metadata={
        "help": "how heads are chosen: exact grouped OBS error, the official code's estimate or L2 magnitude",
        "choices": HEAD_SELECTIONS})
    channel_selection: str = field(default="obs", metadata={
        "help": "how FFN channels are chosen: OBS error or L2 magnitude", "choices": CHANNEL_SELECTIONS})
    bias_compensation: bool = field(default=False, metadata={
        "help": "affine OBS compensation: the update also moves an output bias of o_proj/down_proj"})

    def validate(self) -> None:
        super().validate()
        for name in ("ffn_max_group", "ffn_min_group"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer", getattr(self, name))
        if self.ffn_min_group > self.ffn_max_group:
            raise ConfigError("ffn_min_group", f"ffn_min_group ({self.ffn_min_group}) must not exceed ffn_max_group "
                                               f"({self.ffn_max_group})")
        _check(_is_number(self.damp_percent) and 0.0 <= self.damp_percent < 10.0, "damp_percent", "in [0, 10)",
               self.damp_percent)
        _check_bool(self, "compensate", "bias_compensation")
        _check(self.head_selection in HEAD_SELECTIONS, "head_selection",
               "'obs', 'obs_official' or 'magnitude'", self.head_selection)
        _check(self.channel_selection in CHANNEL_SELECTIONS, "channel_selection", "'obs' or 'magnitude'",
               self.channel_selection)


@dataclass
class SlimLLMConfig(PruningConfig):
    """SlimLLM (Guo et al., 2025): holistic head/channel importance and linear-regression recovery. The shared
    fields are those of :class:`PruningConfig`; SlimLLM's own:

    Args:
        recovery: Fit the per-output scale and bias of ``o_proj`` and ``down_proj`` by linear regression after
            pruning (adds output biases to the model).
        swap_search: Run the greedy swap search after the initial head (and KV-group) choice.
        keep_lowest: Fraction of the FFN channels with the *lowest* importance that are always kept (the
            official code's undocumented rule uses 0.01; 0 = off).
    """

    method_name: ClassVar[str] = "slimllm"
    label: ClassVar[str] = "SlimLLM"

    recovery: bool = field(default=True, metadata={
        "help": "fit the per-output scale and bias of o_proj/down_proj by linear regression after pruning"})
    swap_search: bool = field(default=True, metadata={
        "help": "run the greedy swap search after the initial head (and KV-group) choice"})
    keep_lowest: float = field(default=0.0, metadata={
        "help": "fraction of the lowest-importance FFN channels that are always kept (official code: 0.01; 0: off)"})

    def validate(self) -> None:
        super().validate()
        _check_bool(self, "recovery", "swap_search")
        _check(_is_number(self.keep_lowest) and 0.0 <= self.keep_lowest < 1.0, "keep_lowest", "in [0, 1)", self.keep_lowest)


@dataclass
class FLAPConfig(PruningConfig):
    """FLAP (An et al., AAAI 2024), a baseline: fluctuation-based head/channel scores, a globally adaptive
    structure and bias compensation, no weight update. The shared fields are those of :class:`PruningConfig`
    (``schedule`` is used only with ``global_allocation=False``); FLAP's own:

    Args:
        global_allocation: FLAP's adaptive structure (``AL-AM``): the scores of every layer's heads and channels
            are standardised per module and ranked together against one threshold, so the per-layer sizes come
            from one dense calibration pass, not from ``schedule``. ``False``: the sizes of ``schedule``, FLAP's
            scores inside each layer.
        bias_compensation: Replace the removed channels by their calibration mean, ``b ← b + W[:, S] μ_S`` on
            ``o_proj``/``down_proj`` (adds output biases to the model); ``False``: plain removal.
    """

    method_name: ClassVar[str] = "flap"
    label: ClassVar[str] = "FLAP"

    global_allocation: bool = field(default=True, metadata={
        "help": "FLAP's adaptive structure: the per-layer sizes from scores ranked across layers (off: the "
                "schedule's sizes)"})
    bias_compensation: bool = field(default=True, metadata={
        "help": "replace the removed channels by their calibration mean in an output bias (off: plain removal)"})

    def validate(self) -> None:
        super().validate()
        _check_bool(self, "global_allocation", "bias_compensation")


# ---------------------------------------------------------------------- the registry of method configs
# The config classes of the registered methods, by method name. ``register_method`` (methods/base.py) fills it,
# so this module never imports the methods: the dependency runs one way, methods -> config.
_CONFIGS: dict[str, type] = {}


def register_config(config_class: type) -> type:
    """Make ``config_class`` (a :class:`PruningConfig` subclass) the config of its ``method_name`` for
    :meth:`PruningConfig.for_method`, :meth:`PruningConfig.from_dict` and the command line. Called by
    :func:`optimum_slimgpt.register_method`."""
    if not (isinstance(config_class, type) and issubclass(config_class, PruningConfig) and config_class.method_name):
        raise TypeError(f"{config_class!r} must be a PruningConfig subclass with a method_name")
    _CONFIGS[config_class.method_name] = config_class
    return config_class


def unregister_config(config_class: type) -> None:
    """Forget ``config_class`` (if it is the registered config of its method)."""
    if _CONFIGS.get(config_class.method_name) is config_class:
        del _CONFIGS[config_class.method_name]


def registered_configs() -> list[type]:
    """The config classes of the registered methods, in registration order."""
    return list(_CONFIGS.values())


def config_class_for(method: Optional[str], missing_ok: bool = False) -> Optional[type]:
    """The config class of the registered method ``method``; an unknown name raises :class:`ConfigError` listing
    the registered ones (``missing_ok``: returns ``None``)."""
    if method in _CONFIGS:
        return _CONFIGS[method]
    if missing_ok:
        return None
    raise ConfigError("method", f"unknown pruning method {method!r}; registered: {sorted(_CONFIGS)}")


_config_class_for = config_class_for  # the former private name


# ---------------------------------------------------------------------- configs from pruning records
#: calibration facts a record keeps in ``calibration`` (what the run really used), not in ``config``
_RECORD_CALIBRATION = {"num_samples": "num_samples", "seqlen": "seqlen", "seed": "seed", "split": "dataset_split"}


def fields_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The config fields (with ``"method"``) that ``record`` describes, so that a run can be repeated.

    ``record`` may be a :meth:`PruningConfig.to_dict`, a pruned checkpoint's record (``config.pruning_config``:
    its ``config`` plus the calibration facts of ``calibration``: windows, length, seed, split, dataset) or the
    checkpoint's whole ``config.json``. The record's other keys (sizes, layout, history, recovery...) describe
    the result, not the run, and are left out. A dataset the record can only describe (a local file by its name
    and sha256, in-memory texts, token ids) stays a description (a dict): the caller has to supply the data.
    """
    d = dict(record)
    if isinstance(d.get("pruning_config"), dict):  # a checkpoint's config.json
        d = dict(d["pruning_config"])
    if "pruning_method" not in d:  # a saved config
        return d
    out = dict(d.get("config") or {})
    out.setdefault("method", d["pruning_method"])
    calibration = d.get("calibration") or {}
    out.update({name: calibration[key] for key, name in _RECORD_CALIBRATION.items() if key in calibration})
    source = calibration.get("dataset")
    if isinstance(source, dict) and "text_field" in source:
        out["dataset_text_field"] = source["text_field"]
    if source is not None:
        out["dataset"] = source
    return out
