"""Recovery after pruning: distillation from the dense model (or plain next-token training) on transformers' Trainer.

:func:`recover` fine-tunes a pruned *student* so that it matches the unpruned *teacher* again. The loss
(``RecoveryConfig.loss``) is

* ``"kd"``: the KL divergence ``KL(p_teacher || p_student)`` of the next-token distributions at temperature
  ``T``, times ``T²`` (Hinton et al.; NVIDIA's Minitron recovers pruned models this way);
* ``"lm"``: the plain next-token cross-entropy on the data (no teacher needed);
* ``"kd+lm"``: ``kd + lm_weight · lm``.

The training loop is :class:`transformers.Trainer` with its own optimizer, schedule, logging (``report_to``),
mixed precision and gradient checkpointing, so ``accelerate launch`` (DDP), DeepSpeed and FSDP work through
``training_args`` without code here. LoRA adapters come from ``peft`` (``lora_r > 0``) and are merged back
(``merge_and_unload``), so the returned student has the same per-layer architecture as before and saves,
loads and exports like any pruned model; ``lora_r=0`` trains every weight.

Logit memory is bounded: the model is run with ``logits_to_keep=1`` and the vocabulary projection of the
student and the teacher is applied ``chunk_size`` positions at a time inside a checkpointed function, so at
most ``batch · chunk_size · vocab`` logits exist at once (forward and backward) instead of ``batch · seqlen ·
vocab``. The teacher may live on another device or be offloaded with accelerate hooks: its inputs go to its
own device and only hidden states and logit chunks cross over.

Data: the calibration sources (:mod:`optimum_slimgpt.calibration`): a registered name, a local file or folder,
a list of strings, a ``(n, seqlen)`` token tensor, or ``"self"``, text sampled from the teacher (no data at
all). Text is cut into non-overlapping windows of ``seqlen`` tokens, shuffled with ``seed``.

The recovery is recorded in the student's ``config.pruning_config`` (``PruningRecord.recovery``: data,
steps, tokens, loss, LoRA rank, final loss).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .config import ConfigError, DatasetLike, _check, _check_bool, _check_chat_instructions, _is_int, _is_number

logger = logging.getLogger(__name__)

__all__ = ["RecoveryConfig", "recover", "describe_recovery", "recovery_windows", "chunked_losses", "fields_from_record",
           "LOSSES"]

LOSSES = ("kd", "lm", "kd+lm")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RecoveryConfig:
    """How to recover a pruned model (:func:`recover`).

    Args:
        dataset: Training text, the calibration sources: ``"auto"`` (default: ``"self-chat"`` when the tokenizer has
            a chat template and there is a teacher, else ``"wikitext2"``), a registered name (``"wikitext2"``,
            ``"c4"``, ``"ptb"``), ``"self"`` (text sampled from the teacher; no data needed), ``"self-chat"``
            (conversations the teacher writes in its chat template), a local text/json/jsonl/csv/parquet file or
            dataset folder (a ``.jsonl``/``.json`` file of ``{"messages": [...]}`` records is a chat file, formatted
            with the chat template), a list of strings, or a ``(n, seqlen)`` integer tensor of token ids (used as is).
        chat_instructions: ``"self-chat"``: the instructions the teacher answers, a text file with one per line or a
            list of strings (``None``: the built-in ones).
        dataset_split: Split of a registered dataset or folder.
        dataset_text_field: Column holding the text for file/folder datasets.
        num_samples: Windows to train on (``None``: every non-overlapping window of the text; for ``"self"``:
            enough for ``max_steps``, or 64 with ``num_epochs``).
        seqlen: Tokens per training window.
        max_steps: Optimizer steps (``None``: use ``num_epochs``). Exactly one of the two is set.
        num_epochs: Passes over the windows (used when ``max_steps`` is ``None``).
        batch_size: Windows per device per forward.
        gradient_accumulation_steps: Forwards per optimizer step.
        learning_rate: Peak learning rate (> 0).
        lr_scheduler_type: A transformers scheduler name (``"cosine"``, ``"linear"``, ``"constant"``, ...).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping (``0``: off).
        loss: ``"kd"``, ``"lm"`` or ``"kd+lm"`` (see the module doc).
        temperature: Distillation temperature ``T`` (> 0); the KL is scaled by ``T²``.
        lm_weight: Weight of the next-token loss in ``"kd+lm"``.
        chunk_size: Sequence positions per logit chunk (bounds the logit memory).
        lora_r: LoRA rank; ``0`` trains every weight (full fine-tuning).
        freeze_embeddings: Full fine-tuning only: keep the input embeddings and the output head (tied or not) as they
            are. Pruning never changes them; freezing skips the head's weight gradient (a ``vocab × hidden`` matmul
            per step) and its optimizer state. LoRA never trains them.
        lora_alpha: LoRA scaling numerator (``None``: ``2 · lora_r``).
        lora_dropout: Dropout on the LoRA path.
        target_modules: Modules that get LoRA adapters (peft names; default ``"all-linear"``: every linear layer of
            the decoder blocks, not the output head).
        gradient_checkpointing: Recompute block activations in the backward pass (less memory, ~30% slower).
        dtype: Mixed-precision compute dtype: ``"float32"`` (none), ``"bfloat16"`` or ``"float16"`` (weights stay
            in their own dtype; Trainer's autocast).
        seed: Seed of the window order, the LoRA initialisation, dropout and self-generated text.
        logging_steps: Log the loss every N steps (HF logging and every ``report_to`` integration).
        report_to: Trainer's ``report_to`` (``"none"``, ``"tensorboard"``, ``"wandb"``, a list, ...).
        output_dir: Trainer's output folder (logs, integrations); ``None``: a temporary folder, removed afterwards.
        training_args: Extra :class:`transformers.TrainingArguments` fields (e.g. ``{"fsdp": "full_shard"}``,
            ``{"deepspeed": "ds.json"}``); they override the ones built from this config.
    """

    dataset: DatasetLike = field(default="auto", metadata={
        "help": "training data: auto (self-chat for a chat model, else wikitext2), a registered name (wikitext2, c4, "
                "ptb), 'self' (text sampled from the teacher: no data needed), 'self-chat' (conversations the teacher "
                "writes with its chat template), or a local .txt/.json/.jsonl/.csv/.parquet file, chat .jsonl "
                "(messages) or dataset folder"})
    chat_instructions: Union[str, list, None] = field(
        default=None, metadata={"help": "dataset self-chat: a text file with one instruction per line for the teacher "
                                        "to answer (default: 100 varied built-in ones)"})
    dataset_split: str = field(default="train", metadata={
        "help": "split of a registered dataset or dataset folder", "aliases": ["--split"]})
    dataset_text_field: str = field(default="text", metadata={
        "help": "column holding the text in a file or folder dataset"})
    num_samples: Optional[int] = field(default=None, metadata={
        "help": "training windows (None: every window of the text; 'self': steps x batch x accumulation)",
        "aliases": ["--samples"]})
    seqlen: int = field(default=512, metadata={"help": "tokens per training window"})
    max_steps: Optional[int] = field(default=100, metadata={
        "help": "optimizer steps (None: use num_epochs)", "aliases": ["--steps"]})
    num_epochs: Optional[float] = field(default=None, metadata={
        "help": "passes over the windows instead of max_steps", "aliases": ["--epochs"]})
    batch_size: int = field(default=1, metadata={"help": "windows per device per forward"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "forwards per optimizer step (gradient accumulation)", "aliases": ["--grad-accum"]})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (> 0)", "aliases": ["--lr"]})
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": "learning-rate schedule (a transformers scheduler name)", "choices": SCHEDULERS,
        "aliases": ["--scheduler"]})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    loss: str = field(default="kd", metadata={
        "help": "kd: KL to the teacher's logits, lm: next-token loss, kd+lm: both", "choices": LOSSES})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature (> 0)"})
    lm_weight: float = field(default=1.0, metadata={"help": "weight of the next-token loss in kd+lm"})
    chunk_size: int = field(default=128, metadata={"help": "sequence positions per logit chunk (bounds the memory)"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (merged after training); 0: full fine-tuning"})
    freeze_embeddings: bool = field(default=False, metadata={
        "help": "full fine-tuning: leave the embeddings and output head as they are (faster; pruning never "
                "changes them)"})
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "LoRA scaling numerator (None: 2 * lora_r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path"})
    target_modules: Union[str, list, None] = field(default="all-linear", metadata={
        "help": "modules that get LoRA adapters: all-linear or a comma list such as q_proj,v_proj"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute block activations in the backward pass (less memory, slower)"})
    dtype: str = field(default="float32", metadata={
        "help": "mixed-precision compute dtype (the weights keep theirs)", "choices": DTYPES,
        "flag": "--train-dtype"})
    seed: int = field(default=0, metadata={"help": "seed of the window order, LoRA init, dropout and 'self' text"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps"})
    report_to: Union[str, list] = field(default="none", metadata={
        "help": "Trainer integrations: none, all, or a comma list such as tensorboard,wandb"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "Trainer's folder for logs and integrations (None: a temporary folder, removed afterwards)"})
    training_args: dict = field(default_factory=dict, metadata={
        "help": "extra TrainingArguments fields as a JSON object, e.g. {\"fsdp\": \"full_shard\"}; they win"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` (naming the field) for any bad value."""
        d = self.dataset
        if isinstance(d, os.PathLike):
            self.dataset = d = os.fspath(d)
        ok = (isinstance(d, str) and d != "") or isinstance(d, torch.Tensor) or (
            isinstance(d, (list, tuple)) and len(d) > 0 and all(isinstance(t, str) for t in d))
        _check(ok, "dataset", "a dataset name, 'self', a path, a non-empty list of strings or a token tensor", d)
        if isinstance(d, torch.Tensor):
            _check(d.dim() == 2 and d.shape[0] > 0 and d.shape[1] >= 2 and not d.is_floating_point(), "dataset",
                   "a (n, seqlen) integer token tensor with seqlen >= 2", tuple(d.shape))
        if isinstance(self.chat_instructions, os.PathLike):
            self.chat_instructions = os.fspath(self.chat_instructions)
        _check_chat_instructions(self.chat_instructions)
        for name in ("dataset_split", "dataset_text_field", "lr_scheduler_type", "loss", "dtype"):
            _check(isinstance(getattr(self, name), str), name, "a string", getattr(self, name))
        if self.num_samples is not None:
            _check(_is_int(self.num_samples) and self.num_samples > 0, "num_samples", "None or a positive int",
                   self.num_samples)
        _check(_is_int(self.seqlen) and self.seqlen >= 2, "seqlen", "an int >= 2", self.seqlen)
        if self.max_steps is None and self.num_epochs is None:
            raise ConfigError("max_steps", "give max_steps (a positive int) or num_epochs (a positive number)")
        if self.max_steps is not None:
            _check(_is_int(self.max_steps) and self.max_steps > 0, "max_steps", "a positive int (optimizer steps)",
                   self.max_steps)
            if self.num_epochs is not None:
                raise ConfigError("num_epochs", "give max_steps or num_epochs, not both")
        else:
            _check(_is_number(self.num_epochs) and self.num_epochs > 0, "num_epochs", "a positive number",
                   self.num_epochs)
        for name in ("batch_size", "gradient_accumulation_steps", "chunk_size", "logging_steps"):
            v = getattr(self, name)
            _check(_is_int(v) and v > 0, name, "a positive int", v)
        _check(_is_number(self.learning_rate) and self.learning_rate > 0, "learning_rate", "a number > 0",
               self.learning_rate)
        _check(self.lr_scheduler_type in SCHEDULERS, "lr_scheduler_type", f"one of {SCHEDULERS}",
               self.lr_scheduler_type)
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "an int >= 0", self.warmup_steps)
        for name in ("weight_decay", "max_grad_norm", "lm_weight", "lora_dropout"):
            v = getattr(self, name)
            _check(_is_number(v) and v >= 0, name, "a number >= 0", v)
        _check(self.lora_dropout < 1, "lora_dropout", "< 1", self.lora_dropout)
        _check(self.loss in LOSSES, "loss", f"one of {LOSSES}", self.loss)
        _check(_is_number(self.temperature) and self.temperature > 0, "temperature", "a number > 0", self.temperature)
        _check(_is_int(self.lora_r) and self.lora_r >= 0, "lora_r", "an int >= 0 (0: full fine-tuning)", self.lora_r)
        if self.lora_alpha is not None:
            _check(_is_number(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "None or a number > 0",
                   self.lora_alpha)
        tm = self.target_modules
        _check(tm is None or isinstance(tm, str) or (isinstance(tm, (list, tuple)) and len(tm) > 0
                                                     and all(isinstance(t, str) for t in tm)),
               "target_modules", "None, a string such as 'all-linear' or a non-empty list of module names", tm)
        _check_bool(self, "gradient_checkpointing")
        _check_bool(self, "freeze_embeddings")
        _check(self.dtype in DTYPES, "dtype", f"one of {DTYPES}", self.dtype)
        _check(_is_int(self.seed), "seed", "an int", self.seed)
        rt = self.report_to
        _check(isinstance(rt, str) or (isinstance(rt, (list, tuple)) and all(isinstance(t, str) for t in rt)),
               "report_to", "a string or a list of strings", rt)
        _check(self.output_dir is None or isinstance(self.output_dir, (str, os.PathLike)), "output_dir",
               "None or a path", self.output_dir)
        _check(isinstance(self.training_args, dict), "training_args", "a dict of TrainingArguments fields",
               self.training_args)

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "lm" or (isinstance(self.dataset, str) and self.dataset in ("self", "self-chat"))

    @property
    def windows_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict:
        """JSON-safe fields (a token tensor is described by its shape, a list of texts by its count)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.dataset, torch.Tensor):
            d["dataset"] = {"type": "token_ids", "shape": list(self.dataset.shape)}
        elif isinstance(self.dataset, (list, tuple)):
            d["dataset"] = {"type": "texts", "count": len(self.dataset)}
        elif isinstance(self.dataset, str) and os.path.exists(self.dataset):
            d["dataset"] = os.path.basename(os.path.normpath(self.dataset))  # never a local path
        if isinstance(self.chat_instructions, str):
            d["chat_instructions"] = os.path.basename(self.chat_instructions)  # never a local path
        if isinstance(d["target_modules"], tuple):
            d["target_modules"] = list(d["target_modules"])
        d["output_dir"] = None
        return d


def fields_from_record(record: dict) -> dict:
    """The :class:`RecoveryConfig` fields of a recovery run, so that it can be repeated: ``record`` is a saved
    :meth:`RecoveryConfig.to_dict`, one entry of a record's ``recovery`` list (its ``config``, with the dataset
    it really used), or a pruning record or a checkpoint's whole ``config.json`` (its last recovery). A dataset the
    record can only describe (a local file by name and sha256, texts, token ids) stays a description (a dict):
    the caller has to supply the data."""
    d = dict(record)
    d = dict(d.get("pruning_config") or d)
    if "pruning_method" in d:  # a pruning record
        if not d.get("recovery"):
            raise ConfigError("recovery", "the pruning record holds no recovery run")
        d = dict(d["recovery"][-1])
    if isinstance(d.get("config"), dict):  # a recovery entry: its config, and the data it really used
        data = (d.get("data") or {}).get("dataset")
        d = {**d["config"], **({"dataset": data} if isinstance(data, dict) else {})}
    return d


# ---------------------------------------------------------------------------------------------- data
def recovery_windows(config: RecoveryConfig, tokenizer=None, teacher: Optional[nn.Module] = None) -> torch.Tensor:
    """The ``(n, seqlen)`` training windows of ``config``: non-overlapping windows of the tokenised text in an
    order shuffled by ``seed`` (at most ``num_samples``), a token tensor as given, text sampled from ``teacher`` for
    ``dataset="self"``, or chat conversations packed into windows (``"self-chat"``, written by ``teacher``, and chat
    files; see :mod:`optimum_slimgpt.calibration`). ``"auto"`` resolves as for calibration, with the teacher as the
    model that writes."""
    from .calibration import (SELF_CHAT, format_conversations, is_chat_file, load_texts, pack_conversations,
                              read_chat_file, resolve_dataset, tokenize_stream, _reshuffled, _warn_plain_text_for_chat)

    d = resolve_dataset(config.dataset, tokenizer, teacher)
    n_chat = config.num_samples or (config.max_steps * config.windows_per_step if config.max_steps else 64)
    if isinstance(d, str) and d == SELF_CHAT:
        from .config import SlimGPTConfig
        from .selfgen import generate_chat_calibration

        if teacher is None:
            raise ValueError("dataset='self-chat' has the teacher write its conversations: pass a teacher model")
        gen = SlimGPTConfig(dataset=SELF_CHAT, num_samples=n_chat, seqlen=config.seqlen, seed=config.seed,
                            batch_size=max(config.batch_size, 8), chat_instructions=config.chat_instructions)
        return generate_chat_calibration(gen, tokenizer, teacher)
    if is_chat_file(d):
        convs = format_conversations(tokenizer, read_chat_file(d), source=os.fspath(d))
        return pack_conversations(_reshuffled(convs, config.seed), n_chat, config.seqlen)
    if isinstance(d, torch.Tensor):
        data = d.long()
        if data.shape[1] != config.seqlen:
            logger.info("training on the given token windows of %d tokens (seqlen=%d ignored)", data.shape[1],
                        config.seqlen)
        return data[: config.num_samples] if config.num_samples else data
    if isinstance(d, str) and d == "self":
        from .config import SlimGPTConfig
        from .selfgen import generate_calibration

        if teacher is None:
            raise ValueError("dataset='self' samples its text from the teacher: pass a teacher model")
        n = config.num_samples or (config.max_steps * config.windows_per_step if config.max_steps else 64)
        gen = SlimGPTConfig(dataset="self", num_samples=n, seqlen=config.seqlen, seed=config.seed,
                            batch_size=max(config.batch_size, 8))
        return generate_calibration(gen, tokenizer, teacher)
    docs, joiner = load_texts(d, config.dataset_split, config.dataset_text_field)
    _warn_plain_text_for_chat(tokenizer, d)
    stream = tokenize_stream(tokenizer, docs, joiner)
    n = stream.numel() // config.seqlen
    if n < 1:
        raise ValueError(f"the recovery text is too short: {stream.numel()} tokens, fewer than one window of "
                         f"seqlen={config.seqlen}; use more text or a smaller seqlen")
    windows = stream[: n * config.seqlen].view(n, config.seqlen)
    order = list(range(n))
    random.Random(config.seed).shuffle(order)
    if config.num_samples:
        order = order[: config.num_samples]
    return windows[order]


class _Windows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i]}


def _collate(features: Sequence[dict]) -> dict:
    return {"input_ids": torch.stack([f["input_ids"] for f in features])}


# ---------------------------------------------------------------------------------------------- losses
def _device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s inputs should go: its first non-meta parameter (offloaded weights are on meta and moved
    in by accelerate's hooks, which also move the inputs), else the CPU."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _softcap(config) -> Optional[float]:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(cfg, "final_logit_softcapping", None)
    return float(cap) if cap else None


def _project(head: nn.Module, h: torch.Tensor, cap: Optional[float]) -> torch.Tensor:
    logits = head(h).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def chunked_losses(h_student: torch.Tensor, student_head: nn.Module, labels: torch.Tensor, *,
                   h_teacher: Optional[torch.Tensor] = None, teacher_head: Optional[nn.Module] = None,
                   temperature: float = 1.0, chunk_size: int = 128, want_lm: bool = True,
                   student_cap: Optional[float] = None, teacher_cap: Optional[float] = None) -> dict[str, torch.Tensor]:
    """Mean KD and next-token losses over the positions of ``labels`` (``-100``: ignored), computed
    ``chunk_size`` positions at a time.

    ``h_student``: ``(b, n, hidden)`` final hidden states at the positions that predict ``labels`` ``(b, n)``;
    ``h_teacher``: the teacher's at the same positions (any device). Each chunk's logits are built and reduced
    inside :func:`torch.utils.checkpoint.checkpoint`, so neither pass keeps more than one chunk of logits.
    Returns ``{"kd": ..., "lm": ...}`` (the keys that were asked for), float32 scalars.
    """
    from torch.utils.checkpoint import checkpoint

    want_kd = h_teacher is not None
    mask = labels != -100
    count = mask.sum().clamp(min=1)
    t2 = float(temperature) ** 2
    dev = h_student.device

    def chunk_fn(hs, ht, lab):
        out = []
        s_logits = _project(student_head, hs, student_cap)
        valid = lab != -100
        if want_kd:
            with torch.no_grad():
                t_logits = _project(teacher_head, ht, teacher_cap).to(dev)
                t_logp = torch.log_softmax(t_logits / temperature, dim=-1)
            s_logp = torch.log_softmax(s_logits / temperature, dim=-1)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
            out.append((kl * valid).sum() * t2)
        if want_lm:
            ce = nn.functional.cross_entropy(s_logits.flatten(0, 1), lab.flatten(), ignore_index=-100,
                                             reduction="sum")
            out.append(ce)
        return tuple(out)

    sums = None
    n = h_student.shape[1]
    for s in range(0, n, chunk_size):
        e = min(n, s + chunk_size)
        ht = h_teacher[:, s:e] if want_kd else None
        args = (h_student[:, s:e], ht, labels[:, s:e])
        if torch.is_grad_enabled() and h_student.requires_grad:
            parts = checkpoint(chunk_fn, *args, use_reentrant=False)
        else:
            parts = chunk_fn(*args)
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts))
    keys = (["kd"] if want_kd else []) + (["lm"] if want_lm else [])
    return {k: v / count for k, v in zip(keys, sums)}


def _final_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """The final (normed) hidden states of a causal LM, without its full logits (``logits_to_keep=1``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False,
                logits_to_keep=1)
    return out.hidden_states[-1]


def _teacher_hidden(teacher: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """The teacher's final hidden states from its base model (no per-layer hidden states kept, no logits)."""
    base = getattr(teacher, "base_model", None)
    if isinstance(base, nn.Module) and base is not teacher:
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if getattr(out, "last_hidden_state", None) is not None:
            return out.last_hidden_state
    return _final_hidden(teacher, input_ids, attention_mask)


def _unwrap_lm(model: nn.Module) -> nn.Module:
    """The causal LM under DDP/peft wrappers (its ``get_output_embeddings`` and ``config``)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "get_output_embeddings"):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        else:
            return model


def _make_trainer_class():
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        """:class:`transformers.Trainer` whose loss is chunked KD from ``teacher`` and/or next-token CE."""

        loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps

        def __init__(self, *args, teacher=None, recovery: RecoveryConfig, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher
            self.recovery = recovery
            self._parts: dict[str, list[float]] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rc = self.recovery
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            labels = ids[:, 1:].clone()
            if mask is not None:
                labels[mask[:, 1:] == 0] = -100
            lm = _unwrap_lm(model)
            h_s = _final_hidden(model, ids, mask)[:, :-1]
            h_t = t_head = t_cap = None
            if rc.loss != "lm":
                t_dev = _device_of(self.teacher)
                with torch.no_grad():
                    h_t = _teacher_hidden(self.teacher, ids.to(t_dev), None if mask is None else mask.to(t_dev))[:, :-1]
                t_head, t_cap = self.teacher.get_output_embeddings(), _softcap(self.teacher.config)
            parts = chunked_losses(h_s, lm.get_output_embeddings(), labels.to(h_s.device), h_teacher=h_t,
                                   teacher_head=t_head, temperature=rc.temperature, chunk_size=rc.chunk_size,
                                   want_lm=rc.loss != "kd", student_cap=_softcap(lm.config), teacher_cap=t_cap)
            if rc.loss == "kd":
                loss = parts["kd"]
            elif rc.loss == "lm":
                loss = parts["lm"]
            else:
                loss = parts["kd"] + rc.lm_weight * parts["lm"]
            for k, v in parts.items():
                self._parts.setdefault(f"{k}_loss", []).append(float(v.detach()))
            return (loss, {"loss": loss}) if return_outputs else loss

        def log(self, logs: dict, *args, **kwargs) -> None:
            if "loss" in logs:  # the KD / LM components since the last log, next to Trainer's total
                for k, vals in self._parts.items():
                    if vals:
                        logs[k] = round(sum(vals) / len(vals), 4)
                self._parts = {}
            super().log(logs, *args, **kwargs)

    return DistillationTrainer


# ---------------------------------------------------------------------------------------------- checks
def _vocab(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def _max_positions(model: nn.Module) -> Optional[int]:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def _check_models(student: nn.Module, teacher: Optional[nn.Module], config: RecoveryConfig) -> None:
    from .modeling import unusable_reason

    if not isinstance(student, nn.Module) or not hasattr(student, "get_output_embeddings"):
        raise TypeError(f"the student must be a transformers causal LM, got {type(student).__name__}")
    reason = unusable_reason(student)
    if reason:
        raise ValueError(reason)
    limit = _max_positions(student)
    if limit and not isinstance(config.dataset, torch.Tensor) and config.seqlen > limit:
        raise ValueError(f"seqlen={config.seqlen} exceeds the model's max_position_embeddings={limit}")
    if teacher is None:
        if config.needs_teacher:
            why = "dataset='self' samples from it" if config.loss == "lm" else f"loss={config.loss!r} distils from it"
            raise ValueError(f"recovery needs a teacher model ({why}); pass the dense model, or use loss='lm' "
                             "with a text dataset")
        return
    if teacher is student:
        raise ValueError("the teacher is the student itself: pass the unpruned (dense) model as the teacher")
    vs, vt = _vocab(student), _vocab(teacher)
    if vs != vt:
        raise ValueError(f"the teacher's vocabulary has {vt} tokens but the student's has {vs}: distillation needs "
                         "the same tokenizer (use the dense model the student was pruned from)")
    if config.lora_r > 0:
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise ImportError("lora_r > 0 needs peft: pip install 'optimum-slimgpt[recovery]'") from e


def _check_windows(data: torch.Tensor, student: nn.Module) -> None:
    vocab = _vocab(student)
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"the recovery data has token ids in [{lo}, {hi}], outside the model's vocabulary of "
                         f"{vocab}: is it the model's tokenizer?")
    limit = _max_positions(student)
    if limit and data.shape[1] > limit:
        raise ValueError(f"seqlen={data.shape[1]} exceeds the model's max_position_embeddings={limit}")


# ---------------------------------------------------------------------------------------------- main entry
def recover(student: nn.Module, teacher: Optional[nn.Module], tokenizer, config: Optional[RecoveryConfig] = None,
            *, train_data: Optional[torch.Tensor] = None, merge: bool = True, callbacks: Optional[list] = None) -> nn.Module:
    """Fine-tune the pruned ``student`` towards ``teacher`` (see the module doc) and return it (the same object,
    LoRA merged, in eval mode, its ``pruning_config`` extended with the recovery).

    ``teacher``: the unpruned model (``None`` only for ``loss="lm"`` on text); it is never modified and may sit on
    another device or be offloaded. ``tokenizer``: for text datasets and ``"self"``. ``train_data``: explicit
    ``(n, seqlen)`` token windows, overriding ``config.dataset``. ``merge=False`` (LoRA only) returns the peft model
    with its adapters unmerged (``merge_and_unload()`` it before saving). ``callbacks``: extra
    :class:`transformers.TrainerCallback` objects for the Trainer.
    """
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    config = config if config is not None else RecoveryConfig()
    if not isinstance(config, RecoveryConfig):
        raise TypeError(f"config must be a RecoveryConfig, got {type(config).__name__}")
    config.validate()
    _check_models(student, teacher, config)
    t0 = time.perf_counter()
    data = train_data.long() if train_data is not None else recovery_windows(config, tokenizer, teacher)
    if data.dim() != 2 or data.shape[0] == 0 or data.shape[1] < 2:
        raise ValueError(f"the recovery data must be (n, seqlen >= 2) token ids, got shape {tuple(data.shape)}")
    _check_windows(data, student)
    gen_seconds = time.perf_counter() - t0

    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    student_device = _device_of(student)
    grads = {n: p.requires_grad for n, p in student.named_parameters()}
    hf_logging.get_logger("transformers").info(
        "recovery: %d windows of %d tokens, loss=%s, %s", data.shape[0], data.shape[1], config.loss,
        f"LoRA r={config.lora_r}" if config.lora_r else "full fine-tuning")

    model = student
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                          lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                          task_type="CAUSAL_LM", bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = get_peft_model(student, lcfg)
    else:
        for p in student.parameters():
            p.requires_grad_(True)
        if config.freeze_embeddings:
            for module in (student.get_input_embeddings(), student.get_output_embeddings()):
                for p in (module.parameters() if module is not None else ()):
                    p.requires_grad_(False)

    tmp = None
    out_dir = config.output_dir
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slimgpt-recovery-")
        out_dir = tmp.name
    steps = dict(max_steps=config.max_steps) if config.max_steps else dict(num_train_epochs=config.num_epochs)
    kw = dict(
        output_dir=os.fspath(out_dir), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, logging_steps=config.logging_steps,
        report_to=config.report_to, seed=config.seed, data_seed=config.seed, save_strategy="no",
        eval_strategy="no", remove_unused_columns=False, dataloader_pin_memory=False,
        bf16=config.dtype == "bfloat16", fp16=config.dtype == "float16",
        use_cpu=student_device.type == "cpu", **steps,
    )
    if config.gradient_checkpointing:  # named activation_checkpointing in newer transformers
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        kw[key] = True
        kw[f"{key}_kwargs"] = {"use_reentrant": False}
    kw.update(config.training_args)
    try:
        args = TrainingArguments(**kw)
        trainer = _make_trainer_class()(model=model, args=args, train_dataset=_Windows(data), data_collator=_collate,
                                        teacher=teacher, recovery=config, callbacks=callbacks)
        with torch.random.fork_rng(devices=[student_device] if student_device.type == "cuda" else []):
            result = trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
        step_count = int(trainer.state.global_step)
    finally:
        if tmp is not None:
            tmp.cleanup()
    peft_model = None
    if config.lora_r > 0:
        if merge:
            student = model.merge_and_unload()  # the base model it wrapped, LoRA folded into its weights
        else:
            peft_model, student = model, model.get_base_model()
    for n, p in student.named_parameters():
        if "lora_" not in n:
            p.requires_grad_(grads.get(n, False))
    if config.gradient_checkpointing:
        off = getattr(student, "activation_checkpointing_disable", None) or getattr(student, "gradient_checkpointing_disable", None)
        if off is not None:
            off()
    student.eval()

    from .calibration import resolve_dataset

    _record(student, config, data, step_count, result, history, time.perf_counter() - t0, gen_seconds,
            explicit=train_data is not None, source=resolve_dataset(config.dataset, tokenizer, teacher))
    if peft_model is not None:
        return peft_model.eval()
    return student


def _record(student, config: RecoveryConfig, data: torch.Tensor, steps: int, result, history, seconds: float,
            gen_seconds: float, explicit: bool = False, source=None) -> None:
    """Append this recovery to the student's ``PruningRecord`` (``recovery`` list)."""
    from .calibration import describe_source
    from .modeling import PruningRecord

    source = describe_source(config, data, explicit=explicit, source=source)
    entry = {
        "loss": config.loss,
        "temperature": config.temperature if config.loss != "lm" else None,
        "lora_r": config.lora_r,
        "steps": steps,
        "tokens": steps * config.windows_per_step * int(data.shape[1]) * max(1, _world_size()),
        "data": source,
        "final_train_loss": round(float(history[-1]["loss"]), 5) if history else round(float(result.training_loss), 5),
        "seconds": round(seconds, 1),
        "config": config.to_dict(),
    }
    if gen_seconds > 1:
        entry["data_seconds"] = round(gen_seconds, 1)
    record = PruningRecord.of(student.config)
    if record is None:
        logger.warning("the student has no pruning record (not pruned by optimum-slimgpt): the recovery is stored "
                       "in config.recovery only")
        student.config.recovery = [*getattr(student.config, "recovery", []), entry]
        return
    record.recovery = [*record.recovery, entry]
    student.config.pruning_config = record.to_dict()


def describe_recovery(model: nn.Module) -> str:
    """One line on the last recovery :func:`recover` recorded in ``model``'s config (its ``PruningRecord``, else
    ``config.recovery``): steps, tokens, loss, LoRA or full fine-tuning, the final train loss and the time."""
    from .modeling import PruningRecord

    rec = PruningRecord.of(model.config)
    r = (rec.recovery if rec else getattr(model.config, "recovery", []))[-1]
    return (f"recovered: {r['steps']} steps, {r['tokens']:,} tokens, loss {r['loss']}"
            + (f" (LoRA r={r['lora_r']}, merged)" if r["lora_r"] else " (full fine-tuning)")
            + f", final train loss {r['final_train_loss']:.4f}, {r['seconds']:.0f} s")


def _world_size() -> int:
    try:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except Exception:  # noqa: BLE001
        return 1
