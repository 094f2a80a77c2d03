"""The paper's 10 text-classification tasks: files, templates, verbalizers, metrics (``docs/data.md``).

Every task loads as a ``datasets.Dataset`` with columns ``text``, ``text_pair`` (pair tasks only) and
``label`` (a ``ClassLabel``). Data comes from ``<data_dir>/<folder>/*.tsv`` (GLUE layout), where
``data_dir`` is the argument, else ``$FEDLIB_DATA``, else the project's ``data/``; when the files are
absent and the machine is online, from the Hugging Face hub. Malformed files raise
:class:`TaskDataError` naming ``file:line`` and what was expected; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runtime import offline

__all__ = ["TaskSpec", "TaskDataError", "TASKS", "get_task", "load_task", "compute_metric", "data_root"]

log = logging.getLogger(__name__)
SPLITS = ("train", "eval")


class TaskDataError(ValueError):
    """A task's data cannot be found or does not have the documented layout."""


@dataclass(frozen=True)
class TaskSpec:
    """One task. ``labels`` are the raw label strings in the files, in class-index order.

    ``columns``: header names of (text, text_pair or None, label); for header-less files
    (``n_fields`` set) they are 0-based column indices. ``files``: file name per split; ``eval`` is the
    split the reference evaluates on (GLUE dev; the test file for MR, MPQA, Subj, TREC).
    ``mlm_template``/``lm_template`` follow the reference (``docs/data.md``): ``{text}``, ``{text_pair}``, ``{mask}``.
    ``hub``: (path, config, train split, eval split, text field, pair field, label field, label map).
    """

    name: str
    folder: str
    labels: tuple[str, ...]
    label_names: tuple[str, ...]
    verbalizer: tuple[str, ...]
    mlm_template: str
    lm_template: str
    metric: str
    columns: tuple
    files: dict = field(default_factory=lambda: {"train": "train.tsv", "eval": "dev.tsv"})
    n_fields: int | None = None
    hub: tuple | None = None
    shipped: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.columns[1] is not None

    def layout(self) -> str:
        """Human-readable description of the expected local files, used in error messages."""
        if self.n_fields:
            cols = (
                f"no header row, {self.n_fields} tab-separated fields; text in field {self.columns[0]}, "
                f"label in field {self.columns[2]}"
            )
        else:
            names = [c for c in self.columns if c is not None]
            cols = "a header row with columns " + ", ".join(repr(c) for c in names)
        return f"{'/'.join(self.files.values())} in {self.folder}/: {cols}; labels {list(self.labels)}"


_SENT = "{text} . It was {mask} ."
_PAIR = "{text} ? {mask} , {text_pair}"
_LM_SENT = "{text} It was"
_LM_PAIR = "{text} {text_pair} They are"
_GLUE = "nyu-mll/glue"

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "sst2",
            "sst-2",
            ("0", "1"),
            ("negative", "positive"),
            ("terrible", "great"),
            _SENT,
            _LM_SENT,
            "accuracy",
            ("sentence", None, "label"),
            hub=(_GLUE, "sst2", "train", "validation", "sentence", None, "label", None),
        ),
        TaskSpec(
            "cola",
            "cola",
            ("0", "1"),
            ("unacceptable", "acceptable"),
            ("unacceptable", "acceptable"),
            _SENT,
            _LM_SENT,
            "mcc",
            (3, None, 1),
            n_fields=4,
            hub=(_GLUE, "cola", "train", "validation", "sentence", None, "label", None),
        ),
        TaskSpec(
            "mrpc",
            "mrpc",
            ("0", "1"),
            ("not_equivalent", "equivalent"),
            ("No", "Yes"),
            _PAIR,
            _LM_PAIR,
            "acc_and_f1",
            ("#1 String", "#2 String", "Quality"),
            hub=(_GLUE, "mrpc", "train", "validation", "sentence1", "sentence2", "label", None),
        ),
        TaskSpec(
            "rte",
            "rte",
            ("entailment", "not_entailment"),
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            _PAIR,
            _LM_PAIR,
            "accuracy",
            ("sentence1", "sentence2", "label"),
            hub=(_GLUE, "rte", "train", "validation", "sentence1", "sentence2", "label", None),
        ),
        TaskSpec(
            "qnli",
            "qnli",
            ("entailment", "not_entailment"),
            ("entailment", "not_entailment"),
            ("Yes", "No"),
            _PAIR,
            _LM_PAIR,
            "accuracy",
            ("question", "sentence", "label"),
            hub=(_GLUE, "qnli", "train", "validation", "question", "sentence", "label", None),
        ),
        TaskSpec(
            "boolq",
            "boolq",
            ("False", "True"),
            ("false", "true"),
            ("No", "Yes"),
            _PAIR,
            _LM_PAIR,
            "accuracy",
            ("question", "passage", "label"),
            shipped=False,
            hub=("google/boolq", None, "train", "validation", "question", "passage", "answer", None),
        ),
        TaskSpec(
            "mr",
            "mr",
            ("0", "1"),
            ("negative", "positive"),
            ("terrible", "great"),
            _SENT,
            _LM_SENT,
            "accuracy",
            ("sentence", None, "label"),
            files={"train": "train.tsv", "eval": "test.tsv"},
            hub=("cornell-movie-review-data/rotten_tomatoes", None, "train", "test", "text", None, "label", None),
        ),
        TaskSpec(
            "mpqa",
            "mpqa",
            ("0", "1"),
            ("negative", "positive"),
            ("terrible", "great"),
            _SENT,
            _LM_SENT,
            "accuracy",
            ("sentence", None, "label"),
            files={"train": "train.tsv", "eval": "test.tsv"},
            shipped=False,
            hub=("jxm/mpqa", None, "train", "test", "sentence", None, "label", None),
        ),
        TaskSpec(
            "subj",
            "subj",
            ("0", "1"),
            ("subjective", "objective"),
            ("subjective", "objective"),
            _SENT,
            _LM_SENT,
            "accuracy",
            ("sentence", None, "label"),
            files={"train": "train.tsv", "eval": "test.tsv"},
            shipped=False,
            hub=("SetFit/subj", None, "train", "test", "text", None, "label", {"0": "1", "1": "0"}),
        ),
        TaskSpec(
            "trec",
            "trec",
            ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"),
            ("description", "entity", "abbreviation", "human", "location", "number"),
            ("Description", "Entity", "Expression", "Human", "Location", "Number"),
            "{mask} : {text}",
            "{text} The answer is a",
            "accuracy",
            ("question", None, "label"),
            files={"train": "train.tsv", "eval": "test.tsv"},
            shipped=False,
            hub=("CogComp/trec", None, "train", "test", "text", None, "coarse_label", "names"),
        ),
    ]
}
ALIASES = {"sst-2": "sst2", "sst": "sst2"}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name`` (case-insensitive); unknown names list the valid ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[key]


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data folder: the argument, else ``$FEDLIB_DATA``, else the project's ``data/``."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("FEDLIB_DATA"):
        return Path(os.environ["FEDLIB_DATA"])
    return Path(__file__).resolve().parent.parent / "data"


def read_tsv(spec: TaskSpec, path: Path) -> tuple[list[str], list[str] | None, list[int]]:
    """Parse one TSV file of ``spec``'s layout into (texts, text_pairs or None, label indices)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TaskDataError(f"{path}:{line}: bytes are not valid UTF-8 ({err.reason}); expected UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or (spec.n_fields is None and len(lines) == 1):
        raise TaskDataError(f"{path}: the file has no data rows; expected {spec.layout()}")
    if spec.n_fields is None:
        header = lines[0].rstrip("\r").split("\t")
        missing = [c for c in spec.columns if c is not None and c not in header]
        if missing:
            raise TaskDataError(f"{path}:1: missing column(s) {missing} in header {header}; expected {spec.layout()}")
        idx = [header.index(c) if c is not None else None for c in spec.columns]
        n_fields, start = len(header), 1
    else:
        idx, n_fields, start = list(spec.columns), spec.n_fields, 0
    label_of = {lab.lower(): i for i, lab in enumerate(spec.labels)}
    texts, pairs, labels = [], [] if spec.is_pair else None, []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != n_fields:
            raise TaskDataError(
                f"{path}:{lineno}: {len(fields)} tab-separated fields, expected {n_fields} ({spec.layout()})"
            )
        raw_label = fields[idx[2]].strip()
        if raw_label.lower() not in label_of:
            raise TaskDataError(f"{path}:{lineno}: label {raw_label!r} is not one of {list(spec.labels)}")
        texts.append(fields[idx[0]])
        if pairs is not None:
            pairs.append(fields[idx[1]])
        labels.append(label_of[raw_label.lower()])
    return texts, pairs, labels


def _from_hub(spec: TaskSpec, split: str):
    import datasets

    path, config, train_split, eval_split, text_f, pair_f, label_f, label_map = spec.hub
    ds = datasets.load_dataset(path, config, split=train_split if split == "train" else eval_split)
    missing = [f for f in (text_f, pair_f, label_f) if f is not None and f not in ds.column_names]
    if missing:
        raise TaskDataError(f"hub dataset {path} has columns {ds.column_names}, missing {missing} for task {spec.name}")
    if label_map == "names":
        names = ds.features[label_f].names
        raw = [names[v] for v in ds[label_f]]
    else:
        raw = [str(int(v)) if isinstance(v, (bool, np.bool_)) else str(v) for v in ds[label_f]]
        if spec.name == "boolq":
            raw = [spec.labels[int(v)] for v in raw]
        if isinstance(label_map, dict):
            raw = [label_map.get(v, v) for v in raw]
        else:
            raw = [spec.labels[int(v)] if v.isdigit() and int(v) < spec.num_labels else v for v in raw]
    label_of = {lab: i for i, lab in enumerate(spec.labels)}
    bad = sorted({r for r in raw if r not in label_of})
    if bad:
        raise TaskDataError(f"hub dataset {path}: labels {bad[:5]} are not among {list(spec.labels)}")
    return ds[text_f], (ds[pair_f] if pair_f else None), [label_of[r] for r in raw]


def load_task(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    allow_hub: bool | None = None,
):
    """Load ``split`` (``"train"`` or ``"eval"``) of task ``name`` as a ``datasets.Dataset``.

    Columns: ``text`` (str), ``text_pair`` (str, pair tasks only), ``label`` (``ClassLabel``).
    ``limit`` keeps the first ``limit`` rows. ``allow_hub`` (default: not offline) lets a task whose
    files are absent load from the Hugging Face hub.
    """
    import datasets

    spec = get_task(name)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    folder = data_root(data_dir) / spec.folder
    path = folder / spec.files[split]
    if path.is_file():
        texts, pairs, labels = read_tsv(spec, path)
    else:
        allow_hub = (not offline()) if allow_hub is None else allow_hub
        if not allow_hub or spec.hub is None:
            raise TaskDataError(
                f"task {spec.name!r}: no local file {path} (searched {folder} for {spec.files[split]}) and the hub is "
                f"{'disabled (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)' if offline() else 'not allowed'}. "
                f"Put the data there as {spec.layout()}, point FEDLIB_DATA or data_dir at a folder holding it, "
                f"or run online to load {spec.hub[0] if spec.hub else 'it'} from the hub."
            )
        try:
            texts, pairs, labels = _from_hub(spec, split)
        except TaskDataError:
            raise
        except Exception as err:  # network, auth or schema problems from the hub
            raise TaskDataError(
                f"task {spec.name!r}: no local file {path}, and loading {spec.hub[0]} from the hub "
                f"failed ({type(err).__name__}: {err}). Expected local layout: {spec.layout()}"
            ) from err
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
        pairs = pairs[:limit] if pairs is not None else None
    columns = {"text": list(texts)}
    feats = {"text": datasets.Value("string")}
    if pairs is not None:
        columns["text_pair"] = list(pairs)
        feats["text_pair"] = datasets.Value("string")
    columns["label"] = list(labels)
    feats["label"] = datasets.ClassLabel(names=list(spec.label_names))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(feats))


def compute_metric(task: str | TaskSpec, preds, labels) -> dict[str, float]:
    """The task's metric (``"metric"``: the headline number) plus its parts.

    accuracy; Matthews correlation for CoLA (``mcc``); (accuracy + F1)/2 for MRPC (``acc_and_f1``),
    with F1 of the positive class (label 1), as GLUE defines them. Computed with scikit-learn.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef  # ~1.5 s: only where metrics are computed

    spec = task if isinstance(task, TaskSpec) else get_task(task)
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.size == 0:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} must be non-empty and of one shape")
    out = {"accuracy": float(accuracy_score(labels, preds))}
    if spec.metric == "mcc":
        out["mcc"] = float(matthews_corrcoef(labels, preds))
    elif spec.metric == "acc_and_f1":
        out["f1"] = float(f1_score(labels, preds, pos_label=1, zero_division=0.0))
        out["acc_and_f1"] = (out["accuracy"] + out["f1"]) / 2
    out["metric"] = out[spec.metric]
    return out
