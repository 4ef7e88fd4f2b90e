"""Evaluation of (pruned) causal language models: perplexity and zero-shot multiple choice.

Everything here is plain ``torch`` + ``transformers`` and works on any ``*ForCausalLM`` whose forward
returns ``.logits`` (dense, pruned, quantised on load, ``device_map``-dispatched).

Perplexity (:func:`perplexity`, :func:`perplexity_details`)
    The protocol of the pruning papers (GPTQ / SparseGPT / SlimGPT / LLM-Pruner): the whole evaluation
    text is tokenised **once, without special tokens**; the token stream is cut into non-overlapping
    windows of ``seqlen`` tokens (the remainder is dropped); each window is one forward pass whose labels
    are the window itself, so positions ``1..seqlen-1`` are scored; ``PPL = exp(sum NLL / n scored)``.
    Because every window scores the same number of tokens this equals the papers'
    ``exp(mean over windows of the mean window loss)``. ``stride`` switches to the sliding-window protocol
    of the Hugging Face perplexity guide.

Evaluation texts
    :func:`wikitext2_test_text` rebuilds the Hugging Face ``wikitext-2-raw-v1`` test split from the files
    in ``shared/data/wikitext-2`` (see :func:`wikitext2_rows` for the layout); :func:`wikitext2_validation_text`
    gives the tokenised validation split (for calibration); :func:`ptb_text` joins PTB sentences.

Chat check (:func:`chat_check`)
    Whether a chat model still chats: greedy answers in its chat template to held-out instructions (the 60 of
    ``optimum_slimgpt/data/chat_check.txt``, none of them among the self-chat calibration ones), the share that
    are not empty, and the KL divergence of the model from a reference (the dense model) over the reference's own
    answers, teacher-forced.

Zero-shot multiple choice (:func:`zero_shot`, :func:`evaluate_zero_shot`)
    lm-evaluation-harness's ``multiple_choice`` scoring re-implemented: every choice is scored by the summed
    log-likelihood of its tokens given the context; ``acc`` takes the argmax of that sum and ``acc_norm``
    the argmax of the sum divided by the choice's length in characters. Tasks live in
    :data:`ZERO_SHOT_TASKS`; a task is a loader ``(path) -> list[MCItem]`` plus a default path relative
    to the data directory (:func:`default_data_dir`); add one with :func:`register_task`.

lm-evaluation-harness (:func:`evaluate_lm_eval`, formerly ``lm_eval_bridge``)
    Runs the real harness (``lm_eval.simple_evaluate`` with ``HFLM``) on an in-memory model, with task YAMLs that
    read the same local files (:mod:`optimum_slimgpt.lm_eval_tasks`), when ``lm_eval`` is installed
    (``pip install optimum-slimgpt[eval]``). :func:`evaluate_zero_shot` takes ``harness="lm-eval"`` to use it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

__all__ = [
    # texts
    "default_data_dir",
    "wikitext2_rows",
    "wikitext2_test_text",
    "wikitext2_validation_rows",
    "wikitext2_validation_text",
    "ptb_text",
    # perplexity
    "PerplexityResult",
    "perplexity",
    "perplexity_details",
    # chat
    "ChatCheckResult",
    "chat_check",
    # zero-shot
    "MCItem",
    "TaskSpec",
    "ZERO_SHOT_TASKS",
    "register_task",
    "load_task",
    "load_piqa",
    "load_hellaswag_text",
    "hellaswag_preprocess",
    "hellaswag_text_rows",
    "load_boolq_mosaic",
    "parse_boolq_query",
    "load_mosaicml_jsonl",
    "encode_pair",
    "loglikelihoods",
    "score_items",
    "zero_shot",
    "evaluate_zero_shot",
    "HARNESSES",
    # lm-eval
    "evaluate_lm_eval",
    "lm_eval_bridge",
    "zero_shot_task_names",
]

PathLike = Union[str, "os.PathLike[str]"]

# --------------------------------------------------------------------------------------------------
# data directory
# --------------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Directory holding the evaluation data (``wikitext-2/``, ``piqa/``, ``hellaswag/``, ``mosaicml-eval/``).

    In order: ``$SLIMGPT_DATA_DIR``; ``$SLIMGPT_SHARED_DIR/data``; ``<repository root>/../shared/data``
    (the layout of a source checkout next to ``shared/``); ``./shared/data``. The directory is not
    required to exist; loaders raise ``FileNotFoundError`` naming the file they looked for.
    """
    env = os.environ.get("SLIMGPT_DATA_DIR")
    if env:
        return Path(env)
    env = os.environ.get("SLIMGPT_SHARED_DIR")
    if env:
        return Path(env) / "data"
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data"
    if candidate.is_dir():
        return candidate
    return Path.cwd() / "shared" / "data"


def _resolve(path: Optional[PathLike], default_rel: Optional[str], data_dir: Optional[PathLike]) -> Path:
    if path is not None:
        return Path(path)
    if default_rel is None:
        raise ValueError("no path given and the task has no default path")
    return Path(data_dir if data_dir is not None else default_data_dir()) / default_rel


# --------------------------------------------------------------------------------------------------
# evaluation texts
# --------------------------------------------------------------------------------------------------

_WIKITEXT_TOKENS_TEST = "wiki.test.tokens"
_WIKITEXT_TOKENS_VALID = "wiki.valid.tokens"
_WIKITEXT_RAW_TEST = "wiki.test.raw.nonempty-crlf.txt"


def _wikitext_dir(path_dir: Optional[PathLike]) -> Path:
    return Path(path_dir) if path_dir is not None else default_data_dir() / "wikitext-2"


def _read_lines_keepends(path: Path) -> list[str]:
    # split on "\n" only: str.splitlines() would also split on \x85, \u2028, ... inside the text
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line + "\n" for line in lines]


def wikitext2_rows(path_dir: Optional[PathLike] = None) -> list[str]:
    """The rows of the Hugging Face ``Salesforce/wikitext`` ``wikitext-2-raw-v1`` **test** split (4,358 rows).

    Layout of the HF split: one row per line of the original ``wiki.test.raw``; a blank line (only
    whitespace) becomes ``""``; any other line is kept verbatim *including its trailing* ``"\\n"``
    (e.g. row 1 is ``" = Robert Boulter = \\n"``).

    ``path_dir`` (default ``<data dir>/wikitext-2``) must hold ``wiki.test.tokens`` (the tokenised test
    split, same 4,358-line layout) and ``wiki.test.raw.nonempty-crlf.txt`` (the raw text of the 2,891
    non-empty rows, without their ``"\\n"``, joined with CRLF). The layout is rebuilt by walking
    ``wiki.test.tokens`` line by line: a blank tokens line gives ``""``, any other gives the next raw row
    plus ``"\\n"``. With the Llama-2 tokenizer ``"\\n\\n".join(rows)`` is 341,469 tokens including BOS, the
    count every GPTQ-style evaluation reports, which checks the layout byte for byte.
    """
    d = _wikitext_dir(path_dir)
    raw_text = (d / _WIKITEXT_RAW_TEST).read_bytes().decode("utf-8")
    raw_rows = raw_text.split("\r\n")
    if raw_rows and raw_rows[-1] == "":
        raw_rows.pop()
    token_lines = _read_lines_keepends(d / _WIKITEXT_TOKENS_TEST)
    rows: list[str] = []
    it = iter(raw_rows)
    for line in token_lines:
        if not line.strip():
            rows.append("")
            continue
        try:
            rows.append(next(it) + "\n")
        except StopIteration:
            raise ValueError(f"{d / _WIKITEXT_RAW_TEST} has fewer non-empty rows than {d / _WIKITEXT_TOKENS_TEST}") from None
    leftover = sum(1 for _ in it)
    if leftover:
        raise ValueError(f"{d / _WIKITEXT_RAW_TEST} has {leftover} more non-empty rows than {d / _WIKITEXT_TOKENS_TEST}")
    return rows


def wikitext2_test_text(path_dir: Optional[PathLike] = None) -> str:
    """The standard WikiText-2 (raw) evaluation text: ``"\\n\\n".join(wikitext2_rows(path_dir))``."""
    return "\n\n".join(wikitext2_rows(path_dir))


def wikitext2_validation_rows(path_dir: Optional[PathLike] = None) -> list[str]:
    """Rows of the WikiText-2 **validation** split from ``wiki.valid.tokens`` (3,760 rows).

    Only the tokenised release exists here (the HF ``wikitext-2-v1`` layout: ``<unk>`` for rare words,
    ``@-@`` etc.): blank lines become ``""``, other lines are kept with their ``"\\n"``. Use it as
    calibration text; never evaluate on it.
    """
    lines = _read_lines_keepends(_wikitext_dir(path_dir) / _WIKITEXT_TOKENS_VALID)
    return ["" if not line.strip() else line for line in lines]


def wikitext2_validation_text(path_dir: Optional[PathLike] = None) -> str:
    """``"\\n\\n".join(wikitext2_validation_rows(path_dir))`` (tokenised WikiText-2 validation, for calibration)."""
    return "\n\n".join(wikitext2_validation_rows(path_dir))


def ptb_text(rows: Iterable[str]) -> str:
    """Penn Treebank evaluation text in the GPTQ layout: the sentences joined with a single space.

    ``rows`` are the ``sentence`` column of ``ptb_text_only`` (``penn_treebank``) or the lines of
    ``ptb.test.txt``; GPTQ/SparseGPT/SlimGPT evaluate on ``" ".join(test["sentence"])``.
    """
    return " ".join(rows)


# --------------------------------------------------------------------------------------------------
# model helpers
# --------------------------------------------------------------------------------------------------


def _input_device(model: torch.nn.Module, device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        emb = model.get_input_embeddings()
        if emb is not None and getattr(emb, "weight", None) is not None:
            return emb.weight.device
    except (AttributeError, NotImplementedError):
        pass
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _EvalMode:
    """``model.eval()`` + ``torch.no_grad()`` for the block; restores training mode afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.was_training = model.training
        self._no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self._no_grad.__enter__()
        return self

    def __exit__(self, *exc):
        self._no_grad.__exit__(*exc)
        if self.was_training:
            self.model.train()
        return False


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    logits_to_keep: int = 0,
) -> torch.Tensor:
    """Logits of a causal LM; with ``logits_to_keep > 0`` (models that support it) only the last
    ``logits_to_keep`` positions go through the LM head."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits


def _bos_id(tokenizer: Any, model: torch.nn.Module) -> int:
    for src in (tokenizer, getattr(model, "config", None), getattr(model, "generation_config", None)):
        bos = getattr(src, "bos_token_id", None) if src is not None else None
        if isinstance(bos, (list, tuple)):
            bos = bos[0] if bos else None
        if bos is not None:
            return int(bos)
    raise ValueError("add_bos=True but neither the tokenizer nor the model config defines bos_token_id")


def _progress(iterable=None, **kwargs):
    # transformers' tqdm honours transformers.utils.logging.disable_progress_bar()
    return hf_logging.tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------------------------------
# perplexity
# --------------------------------------------------------------------------------------------------


@dataclass
class PerplexityResult:
    """Outcome of :func:`perplexity_details`.

    ``ppl = exp(nll_sum / n_tokens)``; ``n_tokens`` is the number of *scored* (predicted) tokens, i.e.
    ``n_windows * (seqlen - 1)`` for the non-overlapping protocol; ``n_stream_tokens`` is the length of
    the token stream after ``max_tokens`` truncation.
    """

    ppl: float
    nll_sum: float
    n_tokens: int
    n_windows: int
    seqlen: int
    stride: Optional[int] = None
    add_bos: bool = False
    n_stream_tokens: int = 0

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return self.nll_sum / self.n_tokens


def _to_token_stream(tokenizer: Any, text_or_dataset: Any) -> torch.Tensor:
    if isinstance(text_or_dataset, torch.Tensor):
        ids = text_or_dataset
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"a pre-tokenised stream must be a 1-D LongTensor, got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise TypeError(f"token ids must be integers, got {ids.dtype}")
        return ids.long().cpu()
    if isinstance(text_or_dataset, str):
        text = text_or_dataset
    elif hasattr(text_or_dataset, "column_names"):  # datasets.Dataset
        cols = text_or_dataset.column_names
        col = "text" if "text" in cols else ("sentence" if "sentence" in cols else None)
        if col is None:
            raise ValueError(f"dataset has no 'text' or 'sentence' column (columns: {cols})")
        text = "\n\n".join(text_or_dataset[col])
    elif isinstance(text_or_dataset, (list, tuple)) and all(isinstance(t, str) for t in text_or_dataset):
        text = "\n\n".join(text_or_dataset)
    else:
        raise TypeError("text_or_dataset must be a str, a list of str, a datasets.Dataset or a 1-D LongTensor")
    if tokenizer is None:
        raise ValueError("a tokenizer is required unless text_or_dataset is a tensor of token ids")
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False)
    return enc["input_ids"][0].long()


def _plan_windows(n: int, seqlen: int, stride: Optional[int], add_bos: bool) -> list[tuple[int, int, int]]:
    """``(begin, end, first_target)`` per window: stream tokens ``[begin, end)`` are the model input
    (after an optional BOS) and tokens ``[first_target, end)`` are scored."""
    span = seqlen - 1 if add_bos else seqlen  # stream tokens per window; the model sees ``seqlen`` positions
    first = 0 if add_bos else 1  # offset of the first scorable token inside a window
    if span < 1 or (not add_bos and span < 2):
        raise ValueError(f"seqlen={seqlen} is too short")
    windows: list[tuple[int, int, int]] = []
    if stride is None:
        for k in range(n // span):
            b = k * span
            windows.append((b, b + span, b + first))
        return windows
    if not 0 < stride <= span:
        raise ValueError(f"stride must be in [1, {span}] (window of {span} stream tokens), got {stride}")
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + span, n)
        ft = max(prev_end, begin + first)
        if end > ft:
            windows.append((begin, end, ft))
        prev_end = end
        if end == n:
            break
    return windows


def perplexity_details(
    model: torch.nn.Module,
    tokenizer: Any,
    text_or_dataset: Any,
    seqlen: int = 2048,
    batch_size: int = 1,
    stride: Optional[int] = None,
    max_tokens: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    add_bos: bool = False,
    show_progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text, with the counts behind it. See :func:`perplexity` for the protocol."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ids = _to_token_stream(tokenizer, text_or_dataset)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    n = int(ids.numel())
    windows = _plan_windows(n, seqlen, stride, add_bos)
    if not windows:
        raise ValueError(f"the token stream ({n} tokens) is shorter than one window (seqlen={seqlen})")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_pos, int) and seqlen > max_pos:
        logger.warning("seqlen=%d exceeds the model's max_position_embeddings=%d", seqlen, max_pos)
    dev = _input_device(model, device)
    prefix = torch.tensor([_bos_id(tokenizer, model)], dtype=torch.long) if add_bos else None
    offset = 1 if add_bos else 0

    # group consecutive windows of the same length into batches
    batches: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and (batches[-1][0][1] - batches[-1][0][0]) == (w[1] - w[0]):
            batches[-1].append(w)
        else:
            batches.append([w])

    nll_sum = 0.0
    n_scored = 0
    with _EvalMode(model):
        bar = _progress(total=len(windows), desc="perplexity", unit="window", disable=not show_progress)
        try:
            for k, batch in enumerate(batches):
                if k == 1 and show_progress:  # the first batch was the probe
                    _report_perplexity_estimate(time.perf_counter() - t_first, len(batches), len(windows), seqlen,
                                                dev, stride, add_bos)
                t_first = time.perf_counter() if k == 0 else t_first
                rows = [ids[b:e] if prefix is None else torch.cat([prefix, ids[b:e]]) for b, e, _ in batch]
                logits = _forward_logits(model, torch.stack(rows).to(dev))
                for r, (b, e, ft) in enumerate(batch):
                    lo, hi = ft - b + offset - 1, e - b + offset - 1
                    target = ids[ft:e].to(logits.device)
                    nll = F.cross_entropy(logits[r, lo:hi].float(), target, reduction="sum")
                    nll_sum += float(nll.item())
                    n_scored += e - ft
                del logits
                bar.update(len(batch))
        finally:
            bar.close()
    return PerplexityResult(
        ppl=math.exp(nll_sum / n_scored),
        nll_sum=nll_sum,
        n_tokens=n_scored,
        n_windows=len(windows),
        seqlen=seqlen,
        stride=stride,
        add_bos=add_bos,
        n_stream_tokens=n,
    )


def _report_perplexity_estimate(first: float, batches: int, windows: int, seqlen: int, device: torch.device,
                                stride: Optional[int], add_bos: bool) -> None:
    """Log the estimated time of a perplexity run from its first batch; on a CPU past 10 minutes, the ``max_tokens``
    that would fit."""
    from .estimate import CPU_BUDGET_S, format_seconds

    total = first * batches
    logger.info("perplexity: %d windows of %d tokens, about %s (the first batch took %.1f s)", windows, seqlen,
                format_seconds(total), first)
    if device.type == "cpu" and total > CPU_BUDGET_S and stride is None:
        fit = max(1, int(0.9 * CPU_BUDGET_S / first)) * windows // batches
        span = seqlen - 1 if add_bos else seqlen
        logger.warning("perplexity will take more than %s on a CPU: max_tokens=%d (--max-tokens %d, %d windows) would "
                       "take about %s, a noisier number from less text", format_seconds(CPU_BUDGET_S), fit * span,
                       fit * span, fit, format_seconds(fit * first * batches / windows))


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    text_or_dataset: Any,
    seqlen: int = 2048,
    batch_size: int = 1,
    stride: Optional[int] = None,
    max_tokens: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    add_bos: bool = False,
    show_progress: bool = True,
) -> float:
    """Perplexity of a causal LM on a text (the GPTQ / SlimGPT protocol by default).

    Args:
        model: a ``*ForCausalLM`` (any dtype; the NLL is computed in float32 from the logits). It is put in
            eval mode for the call (training mode is restored afterwards) and run under ``torch.no_grad``.
        tokenizer: used once on the whole text, with ``add_special_tokens=False``. May be ``None`` when
            ``text_or_dataset`` is already a tensor of token ids.
        text_or_dataset: a ``str``; a list of rows or a ``datasets.Dataset`` (column ``text``, else
            ``sentence``), joined with ``"\\n\\n"``; or a 1-D ``LongTensor`` of token ids.
        seqlen: model input length per window.
        batch_size: windows per forward pass (same numbers as ``batch_size=1``; memory grows with it).
        stride: ``None`` (default): non-overlapping windows of ``seqlen`` tokens, remainder dropped, each
            scoring its positions ``1..seqlen-1``. An int ``<= seqlen``: the sliding-window protocol of the
            Hugging Face perplexity guide: windows start every ``stride`` tokens, the first window scores
            all its tokens but the first, every later window only its tokens not scored before (its last
            ``stride``), and the last window may be shorter; nothing is dropped.
        max_tokens: keep only the first ``max_tokens`` tokens of the stream before cutting windows
            (e.g. ``65536``).
        device: where inputs go (default: the device of the input embeddings). The model is not moved.
        add_bos: feed ``[BOS] + window`` with windows of ``seqlen - 1`` stream tokens (the model still sees
            ``seqlen`` positions) and score every stream token of the window, the first one from BOS.
        show_progress: show a ``transformers`` progress bar (also off after
            ``transformers.utils.logging.disable_progress_bar()``).

    Returns:
        ``exp(total NLL / number of scored tokens)`` as a Python float.
    """
    return perplexity_details(
        model, tokenizer, text_or_dataset, seqlen=seqlen, batch_size=batch_size, stride=stride,
        max_tokens=max_tokens, device=device, add_bos=add_bos, show_progress=show_progress,
    ).ppl


# --------------------------------------------------------------------------------------------------
# chat check
# --------------------------------------------------------------------------------------------------


@dataclass
class ChatCheckResult:
    """Outcome of :func:`chat_check`.

    ``non_empty_share``: the share of the ``n`` answers that are not empty (an answer is *empty* when its first
    generated token ends the turn, or when it decodes to whitespace only). ``kl``: the mean over the reference's
    answer tokens (its end-of-turn token included) of ``KL(p_reference || p_model)`` at each position, in nats,
    with both models fed the same prompt and the reference's answer (teacher forcing); ``None`` without a
    reference. ``reference_non_empty_share``: the reference's own share. ``answers``: the model's decoded answers;
    ``reference_answer_ids``: the reference's token ids (pass them back as ``reference_answers`` to check another
    model against the same reference without generating again).
    """

    n: int
    non_empty: int
    non_empty_share: float
    max_new_tokens: int
    kl: Optional[float] = None
    kl_tokens: int = 0
    reference_non_empty_share: Optional[float] = None
    answers: Optional[list[str]] = None
    empty: Optional[list[bool]] = None
    reference_answer_ids: Optional[list[list[int]]] = None

    def summary(self) -> str:
        """One line: the non-empty share (and the reference's) and the KL."""
        ref = "" if self.reference_non_empty_share is None else f" (reference {self.reference_non_empty_share:.0%})"
        kl = "" if self.kl is None else f"; KL from the reference {self.kl:.4f} nats/token over {self.kl_tokens} tokens"
        return f"chat check: {self.non_empty}/{self.n} answers non-empty ({self.non_empty_share:.0%}){ref}{kl}"

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict (``eval --json``), without the reference's answer token ids."""
        return {k: v for k, v in asdict(self).items() if k != "reference_answer_ids"}


def _is_empty_answer(tokenizer: Any, ids: Sequence[int], eos: Sequence[int]) -> bool:
    if not ids or ids[0] in eos:
        return True
    return not tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True).strip()


@torch.no_grad()
def _teacher_forced_kl(model, reference, tokenizer, prompts: Sequence[str], answers: Sequence[Sequence[int]],
                       batch_size: int) -> tuple[float, int]:
    """Sum over the answer tokens of KL(p_reference || p_model), and the number of tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for q, a in zip(prompts[start: start + batch_size], answers[start: start + batch_size]):
            p = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
            p = list(p["input_ids"]) if hasattr(p, "keys") else list(p)
            rows.append(p + list(a))
            spans.append((len(p) - 1, len(p) - 1 + len(a)))  # the logits that predict the answer tokens
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        logp = []
        for m in (reference, model):
            dev = _input_device(m, None)
            with _EvalMode(m):
                logp.append(torch.log_softmax(_forward_logits(m, ids.to(dev), mask.to(dev)).float().cpu(), dim=-1))
        for r, (lo, hi) in enumerate(spans):
            if hi > lo:
                pr, pm = logp[0][r, lo:hi], logp[1][r, lo:hi]
                total += float((pr.exp() * (pr - pm)).sum())
                count += hi - lo
    return total, count


def chat_check(
    model: torch.nn.Module,
    tokenizer: Any,
    reference: Optional[torch.nn.Module] = None,
    *,
    instructions: Optional[Union[Sequence[str], PathLike]] = None,
    n: int = 50,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    reference_answers: Optional[Sequence[Sequence[int]]] = None,
    show_progress: bool = True,
) -> ChatCheckResult:
    """Does a (pruned) chat model still chat? Greedy answers in the chat template to ``n`` instructions.

    Args:
        model: the model to check.
        tokenizer: its tokenizer, with a chat template.
        reference: the model to compare with (the dense one); gives :attr:`ChatCheckResult.kl` and the reference's
            own non-empty share.
        instructions: a list of strings or a text file with one per line (default: the held-out set shipped with
            the package, which self-chat calibration never uses); the first ``n`` are asked.
        n: how many instructions.
        max_new_tokens: the longest answer, in tokens (greedy, stops at the end of the turn).
        batch_size: prompts per generation batch and per teacher-forced forward.
        reference_answers: the reference's answer token ids from an earlier call (``reference_answer_ids``), so a
            second model is compared without generating the reference's answers again.

    Returns:
        :class:`ChatCheckResult`. The dense model checked against itself has ``kl == 0``; a model whose first token
        is always the end of the turn has ``non_empty_share == 0``.
    """
    from .calibration import read_instructions
    from .selfgen import _eos_ids, chat_generate

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    prompts = read_instructions(instructions, "check")[:n]
    eos = _eos_ids(tokenizer, model)
    total = len(prompts) * max_new_tokens * (2 if reference not in (None, model) and reference_answers is None else 1)
    bar = _progress(total=total, desc="chat check", unit="tok", disable=not show_progress)
    try:
        answers = chat_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                bar=bar)
        ref_answers = None
        if reference is model and reference_answers is None:  # the model against itself: the same answers
            ref_answers = [list(a) for a in answers]
        elif reference is not None:
            ref_answers = [list(a) for a in reference_answers] if reference_answers is not None else chat_generate(
                reference, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, bar=bar)
            if len(ref_answers) < len(prompts):
                raise ValueError(f"reference_answers has {len(ref_answers)} answers for {len(prompts)} instructions")
            ref_answers = ref_answers[: len(prompts)]
    finally:
        bar.close()
    empty = [_is_empty_answer(tokenizer, a, eos) for a in answers]
    res = ChatCheckResult(
        n=len(prompts), non_empty=len(prompts) - sum(empty), non_empty_share=1 - sum(empty) / len(prompts),
        max_new_tokens=max_new_tokens, answers=[tokenizer.decode(a, skip_special_tokens=True) for a in answers],
        empty=empty,
    )
    if ref_answers is not None:
        if reference is model:  # KL(p || p) = 0 exactly: no forward needed
            kl_sum, kl_n = 0.0, sum(len(a) for a in ref_answers)
        else:
            kl_sum, kl_n = _teacher_forced_kl(model, reference, tokenizer, prompts, ref_answers, batch_size)
        ref_empty = [_is_empty_answer(tokenizer, a, eos) for a in ref_answers]
        res.kl, res.kl_tokens = kl_sum / max(kl_n, 1), kl_n
        res.reference_non_empty_share = 1 - sum(ref_empty) / len(prompts)
        res.reference_answer_ids = ref_answers
    return res


# --------------------------------------------------------------------------------------------------
# zero-shot multiple choice: data
# --------------------------------------------------------------------------------------------------


@dataclass
class MCItem:
    """One multiple-choice question.

    ``context`` is the prompt; each entry of ``choices`` is the continuation scored after it, *as
    scored*, i.e. including its separator (usually a leading space: ``" " + answer``); ``gold`` is the
    index of the correct choice.
    """

    context: str
    choices: list[str]
    gold: int

    def __post_init__(self):
        if not self.choices:
            raise ValueError("an MCItem needs at least one choice")
        if not 0 <= int(self.gold) < len(self.choices):
            raise ValueError(f"gold={self.gold} out of range for {len(self.choices)} choices")
        self.gold = int(self.gold)


Loader = Callable[[Path], list[MCItem]]


@dataclass
class TaskSpec:
    """A registered zero-shot task: ``loader(path) -> list[MCItem]`` and its default data path
    (relative to the data directory, see :func:`default_data_dir`)."""

    name: str
    loader: Loader
    default_path: Optional[str] = None
    description: str = ""

    def load(self, path: Optional[PathLike] = None, data_dir: Optional[PathLike] = None) -> list[MCItem]:
        p = _resolve(path, self.default_path, data_dir)
        if not p.exists():
            raise FileNotFoundError(f"data for task {self.name!r} not found: {p}")
        return self.loader(p)


ZERO_SHOT_TASKS: dict[str, TaskSpec] = {}


def register_task(
    name: str,
    loader: Loader,
    default_path: Optional[str] = None,
    description: str = "",
    overwrite: bool = False,
) -> TaskSpec:
    """Register a zero-shot task under ``name`` in :data:`ZERO_SHOT_TASKS`.

    ``loader`` is one small function ``(path: Path) -> list[MCItem]``; ``default_path`` is used, relative
    to the data directory, when :func:`zero_shot` gets no ``path``. Re-registering an existing name
    needs ``overwrite=True``.
    """
    if name in ZERO_SHOT_TASKS and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    spec = TaskSpec(name=name, loader=loader, default_path=default_path, description=description)
    ZERO_SHOT_TASKS[name] = spec
    return spec


def load_task(
    task: str,
    path: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    limit: Optional[int] = None,
) -> list[MCItem]:
    """Items of a registered task (the first ``limit`` of them, in file order)."""
    try:
        spec = ZERO_SHOT_TASKS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; registered: {sorted(ZERO_SHOT_TASKS)}") from None
    items = spec.load(path, data_dir)
    return items if limit is None else items[: int(limit)]


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_piqa(path: PathLike) -> list[MCItem]:
    """PIQA in its original release layout, as lm-evaluation-harness prompts it.

    ``path`` is ``valid.jsonl`` (``{"goal", "sol1", "sol2"}`` per line) or the folder holding it; gold
    labels are read from the sibling ``<stem>-labels.lst`` (one ``0``/``1`` per line). Context
    ``"Question: {goal}\\nAnswer:"``, choices ``" " + sol1`` and ``" " + sol2`` (unchanged otherwise).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "valid.jsonl"
    labels_path = p.with_name(p.stem + "-labels.lst")
    docs = _read_jsonl(p)
    labels = [int(t) for t in labels_path.read_text(encoding="utf-8").split()]
    if len(labels) != len(docs):
        raise ValueError(f"{p} has {len(docs)} items but {labels_path} has {len(labels)} labels")
    return [
        MCItem(f"Question: {d['goal']}\nAnswer:", [" " + d["sol1"], " " + d["sol2"]], g)
        for d, g in zip(docs, labels)
    ]


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's ``hellaswag`` text clean-up (``tasks/hellaswag/utils.py: preprocess``): strip,
    ``" [title]"`` -> ``". "``, drop every ``[...]``, replace double spaces by one."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_text_rows(text: str, source: Any = "hellaswag text") -> list[tuple[str, int, list[str]]]:
    """``(context line, gold, four endings)`` per item of llama.cpp's 6-lines-per-item HellaSwag layout
    (lines split on ``"\\n"`` only, a trailing ``"\\r"`` dropped, trailing empty lines ignored)."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{source}: {len(lines)} lines is not a multiple of 6")
    return [(lines[i], int(lines[i + 1]), lines[i + 2 : i + 6]) for i in range(0, len(lines), 6)]


def load_hellaswag_text(path: PathLike) -> list[MCItem]:
    """HellaSwag in llama.cpp's text layout (``hellaswag_val_full.txt``): 6 lines per item.

    Line 1 is the context (``activity_label + ": " + ctx_a + " " + ctx_b``, already cleaned by the file's
    extractor), line 2 the gold index, lines 3-6 the four endings. As lm-eval's ``hellaswag``: context =
    ``preprocess(line 1)``, choices = ``" " + preprocess(ending)`` (:func:`hellaswag_preprocess`; it changes 14
    of the 50,210 strings of the full file). The one difference left: lm-eval capitalises ``ctx_b``
    (``str.capitalize``), which the joined line 1 no longer separates.
    """
    return [
        MCItem(hellaswag_preprocess(ctx), [" " + hellaswag_preprocess(e) for e in endings], gold)
        for ctx, gold, endings in hellaswag_text_rows(Path(path).read_text(encoding="utf-8"), path)
    ]


def load_mosaicml_jsonl(path: PathLike, delimiter: str = " ") -> list[MCItem]:
    """MosaicML llm-foundry ``local_data`` multiple-choice jsonl (``{"query", "choices", "gold"}``).

    As llm-foundry builds it (with ``strip_dataset``): ``query.strip() + delimiter + choice.strip()``,
    ``delimiter`` being the task's ``continuation_delimiter`` (``" "`` by default, ``"\\nAnswer: "`` for
    ARC, PIQA and BoolQ in llm-foundry's ``tasks_v0.3.yaml``). Trailing whitespace of the prompt then moves
    to the choices as in lm-eval, so e.g. PIQA gives context ``"Question: ...\\nAnswer:"`` and choices
    ``" " + answer``, the same strings as :func:`load_piqa`.
    """
    stripped = delimiter.rstrip()
    sep = delimiter[len(stripped):]
    items = []
    for d in _read_jsonl(Path(path)):
        items.append(MCItem(str(d["query"]).strip() + stripped, [sep + str(c).strip() for c in d["choices"]], int(d["gold"])))
    return items


def parse_boolq_query(query: str) -> tuple[str, str]:
    """``(passage, question)`` of a MosaicML BoolQ ``query`` (``"Passage: {passage}\\nQuestion: {question}?"``):
    the passage loses its ``"Passage: "`` prefix, the question its one trailing ``"?"`` (lm-eval's ``boolq``
    fields; the split is at the *last* ``"\\nQuestion: "``, since one passage contains that string itself)."""
    head, sep, question = query.strip().rpartition("\nQuestion: ")
    if not sep:
        raise ValueError(f"not a MosaicML BoolQ query (no '\\nQuestion: '): {query[:80]!r}")
    passage = head[len("Passage: "):] if head.startswith("Passage: ") else head
    return passage, question[:-1] if question.endswith("?") else question


def load_boolq_mosaic(path: PathLike) -> list[MCItem]:
    """BoolQ from MosaicML's jsonl with lm-eval's ``boolq`` prompt: ``"{passage}\\nQuestion: {question}?\\nAnswer:"``,
    choices ``" no"`` / ``" yes"``, gold from ``"gold"`` (0 = no, 1 = yes); fields from :func:`parse_boolq_query`.

    lm-eval's ``super_glue`` passages start with the Wikipedia title (``"Ethanol fuel -- All biomass ..."``);
    the MosaicML copy has no title, so that prefix is missing here.
    """
    items = []
    for d in _read_jsonl(Path(path)):
        passage, question = parse_boolq_query(str(d["query"]))
        if [str(c).strip().lower() for c in d["choices"]] != ["no", "yes"]:
            raise ValueError(f"{path}: BoolQ choices must be ['no', 'yes'], got {d['choices']!r}")
        items.append(MCItem(f"{passage}\nQuestion: {question}?\nAnswer:", [" no", " yes"], int(d["gold"])))
    return items


def _register_builtin_tasks() -> None:
    register_task("piqa", load_piqa, "piqa/valid.jsonl", "PIQA validation (1,838), original release, lm-eval prompt")
    register_task("hellaswag", load_hellaswag_text, "hellaswag/hellaswag_val_full.txt",
                  "HellaSwag validation (10,042), llama.cpp text layout, lm-eval prompt")
    register_task("boolq", load_boolq_mosaic, "mosaicml-eval/boolq.jsonl",
                  "BoolQ dev (3,270), MosaicML jsonl, lm-eval prompt")
    mosaic = {
        "arc_easy": ("\nAnswer: ", "ARC-Easy test (2,376)"),
        "openbook_qa": (" ", "OpenBookQA test (500), question stem only"),
        "openbookqa": (" ", "OpenBookQA test (500), question stem only (lm-eval's name)", "openbook_qa"),
        "piqa_mosaic": ("\nAnswer: ", "PIQA validation (1,838), MosaicML format", "piqa"),
        "copa": (" ", "COPA (100), MosaicML subset"),
        "siqa": (" ", "Social IQa dev (1,954)"),
        "commonsense_qa": (" ", "CommonsenseQA dev (1,221), letter answers"),
    }
    for name, (delim, desc, *file_stem) in mosaic.items():
        stem = file_stem[0] if file_stem else name
        register_task(name, functools.partial(load_mosaicml_jsonl, delimiter=delim),
                      f"mosaicml-eval/{stem}.jsonl", desc + f", MosaicML jsonl, delimiter {delim!r}")


_register_builtin_tasks()


# --------------------------------------------------------------------------------------------------
# zero-shot multiple choice: scoring
# --------------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str, add_special_tokens: Optional[bool] = None) -> list[int]:
    """``tokenizer(text)["input_ids"]``; ``add_special_tokens=None`` keeps the tokenizer's own default (as
    lm-eval's ``HFLM.tok_encode`` with ``add_bos_token`` unset), except that a text which already starts with
    the BOS string gets no special tokens (lm-eval's ``has_bos_prefix`` rule)."""
    kwargs: dict[str, Any] = {}
    if add_special_tokens is not None:
        kwargs["add_special_tokens"] = bool(add_special_tokens)
    else:
        bos = getattr(tokenizer, "bos_token", None)
        if isinstance(bos, str) and bos and text.startswith(bos):
            kwargs["add_special_tokens"] = False
    return list(tokenizer(text, **kwargs)["input_ids"])


def _prefix_token_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    raise ValueError("empty context but the tokenizer has neither a BOS nor an EOS token")


def encode_pair(
    tokenizer: Any,
    context: str,
    continuation: str,
    separate: bool = False,
    add_special_tokens: Optional[bool] = None,
) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``HFLM`` tokenisation of one ``(context, continuation)`` request (0.4.13).

    Trailing whitespace of the context moves to the continuation; the continuation tokens are those of
    ``encode(context + continuation)`` after the first ``len(encode(context))`` tokens. ``encode`` uses the
    tokenizer's default special tokens unless ``add_special_tokens`` says otherwise (lm-eval's
    ``add_bos_token``): a Llama/SentencePiece tokenizer that adds BOS by default gets BOS before every
    context, a GPT-2-style one (SmolLM2, Qwen) gets none. An empty context becomes ``[BOS]`` (else
    ``[EOS]``) and the continuation is encoded without special tokens; if the continuation itself starts
    with that token, its first token is the context instead. ``separate=True``: encode both parts
    independently (older lm-eval).
    """
    if context == "":
        cont = _encode(tokenizer, continuation, add_special_tokens=False)
        prefix = _prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = _encode(tokenizer, context, add_special_tokens)
    if separate:
        return ctx, _encode(tokenizer, continuation, add_special_tokens=False)
    whole = _encode(tokenizer, context + continuation, add_special_tokens)
    return ctx, whole[len(ctx):]


#: a tokenizer's ``model_max_length`` when it sets none (transformers' ``VERY_LARGE_INTEGER``)
_TOKENIZER_INFINITY = 1000000000000000019884624838656


def _max_length(model: torch.nn.Module, max_length: Optional[int], tokenizer: Any = None) -> int:
    """lm-eval's ``resolve_max_length``: ``n_positions``, ``max_position_embeddings`` or ``n_ctx`` of the
    (text) config, else the tokenizer's ``model_max_length``, else 2048."""
    if max_length is not None:
        return int(max_length)
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if v is not None:
            return int(v)
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < _TOKENIZER_INFINITY:
        return v
    return 2048


def loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    max_length: Optional[int] = None,
    separate_encoding: bool = False,
    show_progress: bool = True,
    add_special_tokens: Optional[bool] = None,
) -> list[float]:
    """Summed log-likelihood (nats) of each ``continuation`` given its ``context``.

    ``requests`` are ``(context, continuation)`` pairs, tokenised like lm-evaluation-harness's ``HFLM``
    (:func:`encode_pair`; ``add_special_tokens=None`` keeps the tokenizer's default, like ``HFLM``'s
    ``add_bos_token=None``); inputs longer than ``max_length`` (default: the model's
    ``max_position_embeddings``, see :func:`_max_length`) are truncated on the left. Requests are sorted by
    length and scored in right-padded batches with an attention mask; padding is on the right of a causal
    model, so the numbers equal unbatched scoring up to float rounding. Requests whose input ids are
    identical (one-token continuations of one context, as BoolQ's " no" / " yes") are run once, as lm-eval's
    context grouping does; ``batch_size`` counts distinct inputs. Log-probabilities are computed in float32,
    or float64 for a float64 model.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    maxlen = _max_length(model, max_length, tokenizer)
    encoded = []
    for ctx, cont in requests:
        c_ids, k_ids = encode_pair(tokenizer, ctx, cont, separate_encoding, add_special_tokens)
        if not k_ids:
            raise ValueError(f"continuation {cont!r} encodes to no tokens after context {ctx[-40:]!r}")
        full = (c_ids + k_ids)[-(maxlen + 1):]
        inp = full[:-1]
        n_cont = min(len(k_ids), len(inp))
        encoded.append((inp, k_ids[len(k_ids) - n_cont:]))
    # requests with the same input ids (one-token choices after a shared context, as in BoolQ) share one row
    rows: dict[tuple[int, ...], list[int]] = {}
    for i, (inp, _) in enumerate(encoded):
        rows.setdefault(tuple(inp), []).append(i)
    members = list(rows.values())
    order = sorted(range(len(members)), key=lambda g: (-len(encoded[members[g][0]][0]), g))
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    dev = _input_device(model, device)
    slice_head = _accepts_logits_to_keep(model)
    results: list[float] = [0.0] * len(encoded)
    with _EvalMode(model):
        bar = _progress(total=len(order), desc="loglikelihood", unit="req", disable=not show_progress)
        try:
            for s in range(0, len(order), batch_size):
                idx = [members[g][0] for g in order[s : s + batch_size]]
                width = max(len(encoded[i][0]) for i in idx)
                input_ids = torch.full((len(idx), width), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    inp = encoded[i][0]
                    input_ids[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
                    mask[r, : len(inp)] = 1
                # only positions from the earliest continuation start on need the LM head
                start = min(len(encoded[j][0]) - len(encoded[j][1]) for g in order[s : s + batch_size]
                            for j in members[g]) if slice_head else 0
                logits = _forward_logits(model, input_ids.to(dev), mask.to(dev),
                                        logits_to_keep=(width - start) if slice_head else 0)
                if logits.shape[1] != width - start:  # the model ignored logits_to_keep
                    start = width - logits.shape[1]
                for r, g in enumerate(order[s : s + batch_size]):
                    for i in members[g]:
                        inp, cont = encoded[i]
                        n = len(inp) - start
                        rows_ = logits[r, n - len(cont) : n]
                        lp = torch.log_softmax(rows_.to(torch.promote_types(rows_.dtype, torch.float32)), dim=-1)
                        tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                        results[i] = float(lp.gather(-1, tgt[:, None]).sum().item())
                    bar.update(len(members[g]))
                del logits
        finally:
            bar.close()
    return results


def score_items(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MCItem],
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    max_length: Optional[int] = None,
    separate_encoding: bool = False,
    show_progress: bool = True,
    add_special_tokens: Optional[bool] = None,
) -> list[list[float]]:
    """Per item, the summed log-likelihood of each choice given the item's context (see :func:`loglikelihoods`)."""
    requests = [(it.context, ch) for it in items for ch in it.choices]
    flat = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, device=device, max_length=max_length,
                          separate_encoding=separate_encoding, show_progress=show_progress,
                          add_special_tokens=add_special_tokens)
    out, k = [], 0
    for it in items:
        out.append(flat[k : k + len(it.choices)])
        k += len(it.choices)
    return out


def choice_length(choice: str) -> int:
    """The length that ``acc_norm`` divides by: lm-eval's ``len(doc_to_choice(doc))``, without the target
    delimiter (one leading space), at least 1."""
    n = len(choice) - 1 if choice.startswith(" ") else len(choice)
    return max(n, 1)


def first_argmax(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties (as lm-eval's ``np.argmax``)."""
    best = 0
    for j in range(1, len(values)):
        if values[j] > values[best]:
            best = j
    return best


def _stderr(hits: Sequence[float]) -> float:
    n = len(hits)
    if n < 2:
        return float("nan")
    mu = sum(hits) / n
    var = sum((h - mu) ** 2 for h in hits) / (n - 1)
    return math.sqrt(var / n)


def zero_shot(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Union[str, Sequence[MCItem]],
    path: Optional[PathLike] = None,
    limit: Optional[int] = None,
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    data_dir: Optional[PathLike] = None,
    max_length: Optional[int] = None,
    separate_encoding: bool = False,
    return_details: bool = False,
    show_progress: bool = True,
    add_special_tokens: Optional[bool] = None,
) -> dict[str, Any]:
    """Zero-shot multiple-choice accuracy, lm-evaluation-harness style.

    Args:
        task: a name in :data:`ZERO_SHOT_TASKS` or a list of :class:`MCItem`.
        path: data file for the task (default: the task's default path under ``data_dir``).
        limit: score only the first ``limit`` items (file order, no shuffling).
        batch_size: sequences per forward pass (right padding + attention mask; same numbers as 1). Requests
            are sorted by length, but padding still costs compute: on CPU 4-8 is fastest, on a GPU use 32+.
        data_dir: root of the data (default :func:`default_data_dir`).
        max_length: left-truncation length (default the model's ``max_position_embeddings``).
        separate_encoding: tokenise context and continuation independently instead of lm-eval 0.4's
            "encode the whole string, split at the context length".
        return_details: also return ``"logliks"`` (per item, per choice) and ``"gold"``.
        add_special_tokens: ``None`` (default): the tokenizer's default, as lm-eval's ``HFLM`` with
            ``add_bos_token`` unset (BOS before every context for tokenizers that add it, none for GPT-2-style
            ones); ``True`` / ``False`` force it (``HFLM(add_bos_token=...)``).

    Scoring (as lm-eval 0.4.13's ``multiple_choice`` with ``HFLM``): trailing whitespace of the context moves
    to the continuation; special tokens as the tokenizer adds them by default (an empty context is replaced
    by BOS/EOS); the choice's log-likelihood is the sum over its tokens of
    ``log p(token | context, previous choice tokens)``.
    ``acc`` = mean of ``argmax(ll) == gold``; ``acc_norm`` = mean of ``argmax(ll / len(choice)) == gold``
    with ``len`` in characters not counting the leading separator space (lm-eval's ``len(doc_to_choice)``).
    Ties resolve to the first choice.

    Returns:
        ``{"task", "acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"}`` (+ details).
    """
    if isinstance(task, str):
        name = task
        items = load_task(task, path=path, data_dir=data_dir, limit=limit)
    else:
        name = "custom"
        items = list(task) if limit is None else list(task)[: int(limit)]
    if not items:
        raise ValueError(f"task {name!r} has no items")
    lls = score_items(model, tokenizer, items, batch_size=batch_size, device=device, max_length=max_length,
                      separate_encoding=separate_encoding, show_progress=show_progress,
                      add_special_tokens=add_special_tokens)
    hits, hits_norm = [], []
    for it, ll in zip(items, lls):
        hits.append(float(first_argmax(ll) == it.gold))
        normed = [v / choice_length(c) for v, c in zip(ll, it.choices)]
        hits_norm.append(float(first_argmax(normed) == it.gold))
    n = len(items)
    out: dict[str, Any] = {
        "task": name,
        "acc": sum(hits) / n,
        "acc_norm": sum(hits_norm) / n,
        "acc_stderr": _stderr(hits),
        "acc_norm_stderr": _stderr(hits_norm),
        "n": n,
    }
    if return_details:
        out["logliks"] = lls
        out["gold"] = [it.gold for it in items]
    return out


#: zero-shot harnesses: the package's scorer and lm-evaluation-harness
HARNESSES = ("builtin", "lm-eval")


def zero_shot_task_names(harness: str = "builtin") -> list[str]:
    """Task names :func:`evaluate_zero_shot` accepts with ``harness`` (``"builtin"``: :data:`ZERO_SHOT_TASKS`;
    ``"lm-eval"``: the local lm-eval tasks of :mod:`optimum_slimgpt.lm_eval_tasks`, plus ``openbook_qa``)."""
    if harness == "builtin":
        return sorted(ZERO_SHOT_TASKS)
    if harness == "lm-eval":
        from .lm_eval_tasks import LM_EVAL_TASKS, TASK_ALIASES

        return sorted([*LM_EVAL_TASKS, *TASK_ALIASES])
    raise ValueError(f"unknown harness {harness!r}; choose from {HARNESSES}")


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: Optional[int] = None,
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    data_dir: Optional[PathLike] = None,
    paths: Optional[dict[str, PathLike]] = None,
    harness: str = "builtin",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy on each task; ``{task: result}``. ``paths`` overrides data files per task; ``limit``
    applies to every task.

    ``harness="builtin"`` (default): :func:`zero_shot` per task (other keyword arguments go to it).
    ``harness="lm-eval"``: :func:`evaluate_lm_eval` on the same local files (needs ``lm_eval``; ``device`` is
    not used there: ``HFLM`` runs where the model is; other keyword arguments go to :func:`evaluate_lm_eval`).
    The two give the same per-item choices (``benchmarks/scorer_agreement.py``); results are keyed by the task
    names as given.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if harness == "lm-eval":
        out = evaluate_lm_eval(model, tokenizer, list(tasks), limit=limit, batch_size=batch_size, data_dir=data_dir,
                               paths=paths, **kwargs)
        from .lm_eval_tasks import lm_eval_task_name

        return {t: dict(out[lm_eval_task_name(t)], task=t) for t in tasks}
    if harness != "builtin":
        raise ValueError(f"unknown harness {harness!r}; choose from {HARNESSES}")
    paths = paths or {}
    return {
        t: zero_shot(model, tokenizer, t, path=paths.get(t), limit=limit, batch_size=batch_size, device=device,
                     data_dir=data_dir, **kwargs)
        for t in tasks
    }


# --------------------------------------------------------------------------------------------------
# lm-evaluation-harness
# --------------------------------------------------------------------------------------------------


_LM_EVAL_MISSING = "needs lm-evaluation-harness: pip install optimum-slimgpt[eval]  (lm-eval 0.4.x)"


def _import_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise ImportError(f"evaluate_lm_eval {_LM_EVAL_MISSING}") from e
    return lm_eval


class _KeepRNG:
    """Restores Python's, NumPy's and torch's global RNG states on exit (lm-eval's ``simple_evaluate`` reseeds
    them, which would otherwise change what a caller draws afterwards, e.g. calibration samples)."""

    def __enter__(self):
        import random

        self.py = random.getstate()
        try:
            import numpy as np

            self.np = np.random.get_state()
        except ImportError:  # pragma: no cover - numpy comes with lm-eval
            self.np = None
        self.torch = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return self

    def __exit__(self, *exc):
        import random

        random.setstate(self.py)
        if self.np is not None:
            import numpy as np

            np.random.set_state(self.np)
        torch.random.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        return False


class _maybe_skip_env_info:
    """Replaces ``lm_eval.evaluator.add_env_info`` by a no-op for the block when ``skip`` is true."""

    def __init__(self, skip: bool):
        self.skip = skip

    def __enter__(self):
        if self.skip:
            import lm_eval.evaluator as evaluator

            self.module, self.saved = evaluator, getattr(evaluator, "add_env_info", None)
            if self.saved is not None:
                evaluator.add_env_info = lambda storage: None
        return self

    def __exit__(self, *exc):
        if self.skip and self.saved is not None:
            self.module.add_env_info = self.saved
        return False


def _summarise_lm_eval(out: dict, names: Sequence[str], return_details: bool) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        res = out["results"].get(name)
        if res is None:
            raise RuntimeError(f"lm-eval returned no result for task {name!r} (got {sorted(out['results'])})")
        row: dict[str, Any] = {"task": name}
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if filt == "none" and isinstance(value, (int, float)):
                row[metric] = float(value)
        n = out.get("n-samples", {}).get(name, {})
        row["n"] = int(n.get("effective", n.get("original", 0)))
        if return_details:
            samples = sorted(out.get("samples", {}).get(name, []), key=lambda d: d["doc_id"])
            row["logliks"] = [[float(r[0]) for r in d["filtered_resps"]] for d in samples]
            row["gold"] = [d["target"] for d in samples]
        summary[name] = row
    return summary


def evaluate_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Union[str, Sequence[str]],
    limit: Optional[int] = None,
    batch_size: Union[int, str] = 8,
    data_dir: Optional[PathLike] = None,
    paths: Optional[dict[str, PathLike]] = None,
    include_path: Optional[Union[PathLike, Sequence[PathLike]]] = None,
    add_bos_token: Optional[bool] = None,
    return_details: bool = False,
    return_raw: bool = False,
    env_info: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run lm-evaluation-harness (``lm_eval.simple_evaluate`` with ``HFLM``) on an in-memory model, on local data.

    The tasks ``piqa``, ``arc_easy``, ``hellaswag``, ``boolq`` and ``openbookqa`` (``openbook_qa`` is accepted)
    come from :mod:`optimum_slimgpt.lm_eval_tasks`: lm-eval YAMLs with lm-eval's own prompts whose data are
    the files under ``data_dir`` (written to a temporary folder and passed as the task manager's include path).
    lm-eval's built-in task registry is **not** loaded, so nothing is downloaded; other tasks need YAMLs of
    your own in ``include_path``.

    Args:
        model: a ``*ForCausalLM`` (dense or pruned); it is used where it is (``HFLM`` takes its device) and put
            back in training mode afterwards if it was.
        tokenizer: a ``transformers`` tokenizer (a copy is given to ``HFLM``, which may set a pad token on it).
        tasks: task names (a string or a sequence).
        limit: only the first ``limit`` documents of each task (lm-eval's ``limit``; file order).
        batch_size: ``HFLM`` batch size (or ``"auto"``).
        data_dir: root of the data files (default :func:`default_data_dir`).
        paths: per-task data files overriding the defaults (see
            :func:`optimum_slimgpt.lm_eval_tasks.write_lm_eval_tasks`).
        include_path: more folders of lm-eval task YAMLs (searched after the local ones; same names win later).
        add_bos_token: ``HFLM``'s ``add_bos_token`` (``None``: the tokenizer's default, as the ``lm_eval`` CLI).
        return_details: add per-document ``"logliks"`` (per choice) and ``"gold"`` to each task's row.
        return_raw: return lm-eval's own result dict (``simple_evaluate``'s) instead of the summary.
        env_info: let lm-eval add its environment report to the raw result (``torch.utils.collect_env``, which runs
            ``pip`` in subprocesses: about 3 s per call); off by default.
        **kwargs: passed to ``lm_eval.simple_evaluate`` (e.g. ``num_fewshot``, ``bootstrap_iters``).

    Returns:
        ``{task: {"task", "acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n", ...}}`` (the same keys as
        :func:`evaluate_zero_shot`, plus any other metric the task reports), or the raw dict.

    Raises:
        ImportError: ``lm_eval`` is not installed (``pip install optimum-slimgpt[eval]``).
        KeyError: a task with no local definition and no ``include_path``.
    """
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from .lm_eval_tasks import LM_EVAL_TASKS, lm_eval_task_name, write_lm_eval_tasks

    names = [lm_eval_task_name(t) for t in ([tasks] if isinstance(tasks, str) else list(tasks))]
    if not names:
        raise ValueError("no tasks given")
    local = [t for t in names if t in LM_EVAL_TASKS]
    extra = [] if include_path is None else (
        [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path))
    if not extra and len(local) < len(names):
        missing = [t for t in names if t not in LM_EVAL_TASKS]
        raise KeyError(f"no local lm-eval task {missing}; available: {sorted(LM_EVAL_TASKS)} "
                       "(or pass include_path= with your own task YAMLs)")
    paths = {lm_eval_task_name(k): v for k, v in (paths or {}).items()}
    with tempfile.TemporaryDirectory(prefix="slimgpt-lm-eval-tasks-") as tmp:
        if local:
            write_lm_eval_tasks(tmp, tasks=local, data_dir=data_dir, paths={k: v for k, v in paths.items() if k in local})
        manager = TaskManager(include_path=[tmp, *map(str, extra)], include_defaults=False)
        with _EvalMode(model), _KeepRNG(), _maybe_skip_env_info(not env_info):
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size,
                      add_bos_token=add_bos_token)
            log_samples = bool(kwargs.pop("log_samples", False)) or return_details
            out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                          log_samples=log_samples, **kwargs)
    if return_raw:
        return out
    return _summarise_lm_eval(out, names, return_details)


#: the former name of :func:`evaluate_lm_eval`
lm_eval_bridge = evaluate_lm_eval
