"""lm-evaluation-harness task definitions that read the zero-shot data from local files.

The Hugging Face Hub is not needed: each task is an lm-eval YAML whose data comes from a file under a data
directory (``shared/data`` by default, see :func:`optimum_slimgpt.evaluation.default_data_dir`). The YAML
templates next to this module (``<task>.yaml.in``) carry lm-eval's own prompts (``doc_to_text``,
``doc_to_choice``, ``doc_to_target``) and metrics; :func:`write_lm_eval_tasks` fills in the absolute data
paths and writes ``<task>.yaml`` files to a folder that ``lm_eval --include_path`` (or
``TaskManager(include_path=...)``) reads. Tasks found on an include path override lm-eval's built-in tasks of
the same name, so ``--tasks piqa,arc_easy,hellaswag,boolq,openbookqa`` runs on the local files.

========== ============================================ ================================================
task       data file (under the data directory)          how the YAML reads it
========== ============================================ ================================================
piqa       ``piqa/valid.jsonl`` + ``valid-labels.lst``   ``custom_dataset`` :func:`piqa_dataset` (json + labels)
arc_easy   ``mosaicml-eval/arc_easy.jsonl``              ``dataset_path: json``, :func:`process_arc`
hellaswag  ``hellaswag/hellaswag_val_full.txt``          ``dataset_path: text`` (one document), :func:`process_hellaswag`
boolq      ``mosaicml-eval/boolq.jsonl``                 ``dataset_path: json``, :func:`process_boolq`
openbookqa ``mosaicml-eval/openbook_qa.jsonl``           ``dataset_path: json``, :func:`process_openbookqa`
========== ============================================ ================================================

The ``process_*`` functions only turn the local records into the fields of lm-eval's standard datasets
(``question``, ``passage``, ``question_stem``, ...); the prompts are rendered by lm-eval from the YAML, not
by this package, so comparing them with the built-in scorer (:mod:`optimum_slimgpt.evaluation`) checks two
independent implementations.

From a shell::

    python -m optimum_slimgpt.lm_eval_tasks --out ./slimgpt_tasks [--data-dir ../shared/data]
    lm_eval --model hf --model_args pretrained=OUT,trust_remote_code=True \\
        --include_path ./slimgpt_tasks --tasks piqa,arc_easy,hellaswag,boolq,openbookqa
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..evaluation import default_data_dir, hellaswag_preprocess, hellaswag_text_rows, parse_boolq_query

__all__ = [
    "LM_EVAL_TASKS",
    "TASK_ALIASES",
    "lm_eval_task_name",
    "write_lm_eval_tasks",
    "piqa_dataset",
    "process_arc",
    "process_boolq",
    "process_openbookqa",
    "process_hellaswag",
]

PathLike = Union[str, "os.PathLike[str]"]

_HERE = Path(__file__).resolve().parent

#: lm-eval task name -> default data file, relative to the data directory
LM_EVAL_TASKS: dict[str, str] = {
    "piqa": "piqa/valid.jsonl",
    "arc_easy": "mosaicml-eval/arc_easy.jsonl",
    "hellaswag": "hellaswag/hellaswag_val_full.txt",
    "boolq": "mosaicml-eval/boolq.jsonl",
    "openbookqa": "mosaicml-eval/openbook_qa.jsonl",
}

#: names of the built-in scorer (:data:`optimum_slimgpt.evaluation.ZERO_SHOT_TASKS`) -> lm-eval's task name
TASK_ALIASES: dict[str, str] = {"openbook_qa": "openbookqa"}


def lm_eval_task_name(name: str) -> str:
    """lm-eval's name of a task (``openbook_qa`` -> ``openbookqa``; other names unchanged)."""
    return TASK_ALIASES.get(name, name)


def _piqa_files(path: Path) -> tuple[Path, Path]:
    data = path / "valid.jsonl" if path.is_dir() else path
    return data, data.with_name(data.stem + "-labels.lst")


def write_lm_eval_tasks(
    out_dir: PathLike,
    tasks: Optional[Sequence[str]] = None,
    data_dir: Optional[PathLike] = None,
    paths: Optional[Mapping[str, PathLike]] = None,
) -> Path:
    """Write lm-eval task YAMLs with absolute local data paths into ``out_dir``; returns ``out_dir``.

    Args:
        out_dir: folder to write ``<task>.yaml`` into (created if needed; existing files of the same name are
            replaced). Pass it to ``lm_eval --include_path`` or ``TaskManager(include_path=...)``.
        tasks: which of :data:`LM_EVAL_TASKS` (default: all; ``openbook_qa`` is accepted for ``openbookqa``).
        data_dir: root of the data (default :func:`~optimum_slimgpt.evaluation.default_data_dir`).
        paths: per-task data files that replace the default ones (PIQA: ``valid.jsonl`` or its folder; its
            labels are the sibling ``<stem>-labels.lst``).

    Raises:
        KeyError: a task that has no local definition here.
        FileNotFoundError: a data file that does not exist (named in the message).
    """
    names = [lm_eval_task_name(t) for t in (tasks if tasks is not None else LM_EVAL_TASKS)]
    unknown = [t for t in names if t not in LM_EVAL_TASKS]
    if unknown:
        raise KeyError(f"no local lm-eval task {unknown}; available: {sorted(LM_EVAL_TASKS)}")
    overrides = {lm_eval_task_name(k): Path(v) for k, v in (paths or {}).items()}
    bad = sorted(set(overrides) - set(LM_EVAL_TASKS))
    if bad:
        raise KeyError(f"paths given for unknown task(s) {bad}; available: {sorted(LM_EVAL_TASKS)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(names):
        data = overrides.get(name, root / LM_EVAL_TASKS[name])
        fill = {}
        if name == "piqa":
            data, labels = _piqa_files(data)
            fill["@LABELS_FILE@"] = labels
        fill["@DATA_FILE@"] = data
        for f in fill.values():
            if not f.is_file():
                raise FileNotFoundError(f"data for lm-eval task {name!r} not found: {f}")
        text = (_HERE / f"{name}.yaml.in").read_text(encoding="utf-8")
        for key, value in fill.items():
            text = text.replace(key, json.dumps(str(value.resolve())))  # a JSON string is a valid YAML scalar
        (out / f"{name}.yaml").write_text(text, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------------------
# functions the YAMLs call (``!function optimum_slimgpt.lm_eval_tasks.<name>``)
# ------------------------------------------------------------------------------------------------------------


def piqa_dataset(data_file: PathLike, labels_file: PathLike, **_: Any):
    """PIQA's original release as a ``DatasetDict`` with one ``validation`` split: the ``{"goal", "sol1",
    "sol2"}`` rows of ``data_file`` (read by ``datasets``' json builder) plus ``label`` from ``labels_file``
    (one ``0``/``1`` per line), the fields of lm-eval's ``piqa`` dataset. Other keyword arguments (lm-eval
    passes the task metadata) are ignored."""
    import datasets

    ds = datasets.load_dataset("json", data_files={"validation": str(data_file)})["validation"]
    labels = [int(t) for t in Path(labels_file).read_text(encoding="utf-8").split()]
    if len(labels) != len(ds):
        raise ValueError(f"{data_file} has {len(ds)} items but {labels_file} has {len(labels)} labels")
    return datasets.DatasetDict({"validation": ds.add_column("label", labels)})


def process_arc(dataset):
    """MosaicML ARC rows (``query = "Question: ..."``) -> lm-eval ``arc_easy`` fields: ``question`` (the query
    without its ``"Question: "`` prefix), ``choices`` (list of answer texts), ``gold`` (index)."""

    def one(doc):
        q = doc["query"]
        return {"question": q[len("Question: "):] if q.startswith("Question: ") else q}

    return dataset.map(one)


def process_boolq(dataset):
    """MosaicML BoolQ rows -> lm-eval ``boolq`` fields ``passage``, ``question`` (without its ``"?"``) and
    ``label`` (0 = no, 1 = yes), split by :func:`~optimum_slimgpt.evaluation.parse_boolq_query`."""

    def one(doc):
        passage, question = parse_boolq_query(doc["query"])
        return {"passage": passage, "question": question, "label": int(doc["gold"])}

    return dataset.map(one)


def process_openbookqa(dataset):
    """MosaicML OpenBookQA rows -> lm-eval ``openbookqa`` field ``question_stem`` (the query as it is)."""
    return dataset.map(lambda doc: {"question_stem": doc["query"]})


def _lm_eval_preprocess():
    try:  # lm-eval's own function, so the lm-eval side does not depend on this package's copy
        from lm_eval.tasks.hellaswag.utils import preprocess
    except ImportError:  # pragma: no cover - the file moved in some lm-eval version
        preprocess = hellaswag_preprocess
    return preprocess


def process_hellaswag(dataset):
    """The one-document HellaSwag text (llama.cpp layout, 6 lines per item) -> lm-eval ``hellaswag`` docs:
    ``query = preprocess(line 1)``, ``choices = [preprocess(ending) ...]``, ``label`` (gold, as a string like
    the Hub dataset), with lm-eval's own ``preprocess``."""
    import datasets

    preprocess = _lm_eval_preprocess()
    docs = []
    for row in dataset:
        for ctx, gold, endings in hellaswag_text_rows(row["text"]):
            docs.append({"query": preprocess(ctx), "choices": [preprocess(e) for e in endings], "label": str(gold)})
    return datasets.Dataset.from_list(docs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m optimum_slimgpt.lm_eval_tasks --out DIR [--data-dir D] [--tasks a,b]``."""
    ap = argparse.ArgumentParser(prog="python -m optimum_slimgpt.lm_eval_tasks",
                                 description="Write lm-eval task YAMLs that read the local zero-shot files.")
    ap.add_argument("--out", required=True, help="folder to write the YAMLs to (then: lm_eval --include_path OUT)")
    ap.add_argument("--data-dir", default=None, help="data root (default: $SLIMGPT_DATA_DIR or ../shared/data)")
    ap.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(LM_EVAL_TASKS)}")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        out = write_lm_eval_tasks(args.out, tasks=tasks, data_dir=args.data_dir)
    except (KeyError, FileNotFoundError) as e:
        ap.error(str(e.args[0]) if e.args else str(e))
    print(out)
    return 0
