"""Loaders for the few-shot benchmark data in ``/work/shared/data`` (see its README.md).

``load_task(task, seed, k=16, data_dir=None) -> (train, dev, test)`` returns three pandas
DataFrames whose columns are the catalogue template fields of the task (``text``;
``premise`` / ``hypothesis``; ``question`` / ``sentence``; ``sentence1`` / ``sentence2``;
``passage`` / ``question``) plus ``label``, holding the label values the catalogue verbalizer
uses (ints for SST-2, strings for RTE, JSON booleans for BoolQ, ...). Every label is checked
against ``verbalizers/<task>.json``.

Tasks (benchmark name -> catalogue task, source folder):

=============  =========  ==========================================================
sst2           sst2       ``lm-bff/SST-2``  (tsv with header ``sentence\\tlabel``)
sst5, mr, cr,  same       ``lm-bff/{sst-5,mr,cr,trec}`` (headerless csv ``label,sentence``)
trec
rte            rte        ``lm-bff/RTE``  (tsv ``index\\tsentence1\\tsentence2\\tlabel``)
qnli           qnli       ``lm-bff/QNLI`` (tsv ``index\\tquestion\\tsentence\\tlabel``)
mrpc           mrpc       ``lm-bff/MRPC`` (tsv, UTF-8 BOM header, ``Quality`` ... ``#2 String``)
mnli           mnli       ``lm-bff/MNLI`` (GLUE tsv; ``sentence1``, ``sentence2``, ``gold_label``)
agnews         agnews     ``agnews/``  (tsv with header; 64 train / 64 dev per seed, 7600 test)
yelp           yelp       ``yelp-2/``  (tsv with header; texts hold literal ``\\n``)
boolq, cb,     boolq, cb, ``fewglue/{BoolQ,CB,RTE}`` (jsonl: ``train``, ``dev32``, ``val``)
rte-fewglue    rte
=============  =========  ==========================================================

What each split is:

* K = 16 (the default): the published split for ``seed`` (``16-<seed>/train`` and ``dev``:
  16 examples per class each). FewGLUE has a single fixed split (``train`` 32 and ``dev32`` 32
  examples in all, not per class); for it the seed changes only the training randomness.
* Other K (4, 8, 32 ...): K examples per class for train and K per class for dev, sampled with
  ``numpy.random.default_rng(seed)`` from a larger pool: ``lm-bff-pool/<task>/{train,dev}``
  (sst-5, mr, cr, trec, QNLI, MNLI, MRPC), the full GLUE SST-2 train set for sst2, the full
  SuperGLUE train sets for rte / cb / rte-fewglue. Where there is no pool (agnews, yelp, boolq),
  both are drawn without overlap from the seed's own 16-shot train + dev. A class with too few
  examples raises a ``ValueError``.
* Test: ``lm-bff/<TASK>/test.*`` (the GLUE dev set for GLUE tasks), ``agnews/test.tsv`` and
  FewGLUE ``val`` (the SuperGLUE dev set). Two tasks have no test set in the data folder and
  use a stated substitute: MNLI uses ``lm-bff-pool/MNLI/dev.json`` (1000 held-out examples of
  the MNLI train set, not the GLUE dev set); Yelp-2 uses the train + dev examples of the
  *other four* seeds (256, balanced), never the seed's own. Test examples identical to a
  train / dev example are dropped. Test sets larger than ``max_test`` (default 2000) are
  subsampled with a fixed seed (``TEST_SAMPLE_SEED`` = 0, the same for every run seed) and keep
  their file order.

Text clean-up, the only edits made: Yelp-2's literal ``\\n`` become real newlines, and AG
News's backslashes (its line-break marker) become spaces. Files are never modified.

The data folder: ``data_dir`` argument, else the ``PROMPTCLS_DATA`` environment variable, else
``../shared/data`` relative to the repository root. A missing folder or file raises
``FileNotFoundError`` naming the path and what was expected there.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["TASKS", "Task", "SEEDS", "load_task", "data_root", "task_fields", "task_labels"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SEEDS = (13, 21, 42, 87, 100)
TEST_SAMPLE_SEED = 0
MAX_TEST = 2000


# ---------------------------------------------------------------------------- catalogue


def _catalogue_file(kind: str, task: str) -> dict:
    return json.loads((REPO_ROOT / kind / f"{task}.json").read_text(encoding="utf-8"))


def task_fields(catalogue_task: str) -> list[str]:
    """The template fields of a catalogue task (``templates/<task>.json`` "fields")."""
    return list(_catalogue_file("templates", catalogue_task)["fields"])


def task_labels(catalogue_task: str) -> list:
    """The labels of a catalogue task as its verbalizer has them (``verbalizers/<task>.json`` "labels")."""
    return list(_catalogue_file("verbalizers", catalogue_task)["labels"])


# ---------------------------------------------------------------------------- file readers
# Each reader returns a DataFrame with the task's field columns and ``label`` (raw values).


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: expected {what}. Point --data-dir (or PROMPTCLS_DATA) at the benchmark "
            "data folder described in /work/shared/data/README.md"
        )
    return path


def _read_tsv(path: Path) -> pd.DataFrame:
    """A tab-separated file with a header; quotes are text (GLUE files hold unbalanced quotes)."""
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", dtype=str, keep_default_na=False)


def _read_jsonl(path: Path) -> pd.DataFrame:
    with path.open(encoding="utf-8") as f:
        return pd.DataFrame([json.loads(line) for line in f if line.strip()])


def _read_pool_json(path: Path) -> pd.DataFrame:
    """LM-BFF pool json ``{"0": {"text_a", "text_b", "label"}, ...}``."""
    records = json.loads(path.read_text(encoding="utf-8"))
    return pd.DataFrame([records[key] for key in sorted(records, key=int)])


def _columns(frame: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """Keep and rename ``mapping`` = {source column: output column}."""
    missing = [c for c in mapping if c not in frame.columns]
    if missing:
        raise ValueError(f"expected columns {missing} not found; the file has {list(frame.columns)}")
    return frame[list(mapping)].rename(columns=mapping).reset_index(drop=True)


def tsv_reader(mapping: dict[str, str]) -> Callable[[Path], pd.DataFrame]:
    """Reader for a tsv with a header (the UTF-8 BOM of MRPC is stripped)."""
    return lambda path: _columns(_read_tsv(path), mapping)


def headerless_csv(path: Path) -> pd.DataFrame:
    """LM-BFF's sst-5 / mr / cr / trec files: csv ``label,sentence`` without a header."""
    frame = pd.read_csv(path, header=None, names=["label", "text"], dtype=str, keep_default_na=False)
    return frame[["text", "label"]]


def jsonl_reader(mapping: dict[str, str]) -> Callable[[Path], pd.DataFrame]:
    return lambda path: _columns(_read_jsonl(path), mapping)


def pool_json_reader(first: str, second: str) -> Callable[[Path], pd.DataFrame]:
    return lambda path: _columns(_read_pool_json(path), {"text_a": first, "text_b": second, "label": "label"})


# ---------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """Where a benchmark task's files are and how to read them."""

    name: str
    catalogue: str  # catalogue task: templates/<catalogue>.json, verbalizers/<catalogue>.json
    folder: str  # relative to the data root: the folder holding 16-<seed>/ (or FewGLUE's files)
    reader: Callable[[Path], pd.DataFrame]  # reads the split files
    ext: str = "tsv"
    dev_name: str = "dev"
    test: str | None = "test"  # file stem in ``folder``; None: a substitute (see ``_test_frame``)
    pool: str | None = None  # pool folder with train.* and dev.* (same format as pool_reader reads)
    pool_reader: Callable[[Path], pd.DataFrame] | None = None
    pool_ext: str = "tsv"
    pool_files: tuple[str, ...] = ("train", "dev")
    fixed_split: bool = False  # FewGLUE: one split, no seeds
    clean: Callable[[str], str] | None = None
    metric: str = "accuracy"

    @property
    def fields(self) -> list[str]:
        return task_fields(self.catalogue)

    @property
    def labels(self) -> list:
        return task_labels(self.catalogue)


_sentence_tsv = tsv_reader({"sentence": "text", "label": "label"})
_rte_tsv = tsv_reader({"sentence1": "premise", "sentence2": "hypothesis", "label": "label"})
_mnli_tsv = tsv_reader({"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"})
_qnli_tsv = tsv_reader({"question": "question", "sentence": "sentence", "label": "label"})
_mrpc_tsv = tsv_reader({"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"})
_pair_jsonl = jsonl_reader({"premise": "premise", "hypothesis": "hypothesis", "label": "label"})
_boolq_jsonl = jsonl_reader({"passage": "passage", "question": "question", "label": "label"})


def _agnews_reader(path: Path) -> pd.DataFrame:
    """AG News: train/dev have a ``text`` column, the test file a ``sentence`` column."""
    frame = _read_tsv(path)
    return _columns(frame, {"text" if "text" in frame.columns else "sentence": "text", "label": "label"})


def _lmbff_single(name: str, folder: str, pool: str | None) -> Task:
    return Task(name, name, f"lm-bff/{folder}", headerless_csv, ext="csv", pool=pool, pool_reader=_sentence_tsv)


_SUPERGLUE_POOL = {"pool_reader": _pair_jsonl, "pool_ext": "jsonl", "pool_files": ("train",)}
_FEWGLUE = {"ext": "jsonl", "dev_name": "dev32", "test": "val", "fixed_split": True}

TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "sst2", "lm-bff/SST-2", _sentence_tsv,
                 pool="glue/SST-2", pool_reader=_sentence_tsv, pool_files=("train",)),
    "sst5": _lmbff_single("sst5", "sst-5", "lm-bff-pool/sst-5"),
    "mr": _lmbff_single("mr", "mr", "lm-bff-pool/mr"),
    "cr": _lmbff_single("cr", "cr", "lm-bff-pool/cr"),
    "trec": _lmbff_single("trec", "trec", "lm-bff-pool/trec"),
    "rte": Task("rte", "rte", "lm-bff/RTE", _rte_tsv, pool="superglue/RTE", **_SUPERGLUE_POOL),
    "qnli": Task("qnli", "qnli", "lm-bff/QNLI", _qnli_tsv,
                 pool="lm-bff-pool/QNLI", pool_reader=pool_json_reader("question", "sentence"), pool_ext="json"),
    "mrpc": Task("mrpc", "mrpc", "lm-bff/MRPC", _mrpc_tsv, metric="f1",
                 pool="lm-bff-pool/MRPC", pool_reader=pool_json_reader("sentence1", "sentence2"), pool_ext="json"),
    "mnli": Task("mnli", "mnli", "lm-bff/MNLI", _mnli_tsv, dev_name="dev_matched", test=None,
                 pool="lm-bff-pool/MNLI", pool_reader=pool_json_reader("premise", "hypothesis"), pool_ext="json"),
    "agnews": Task("agnews", "agnews", "agnews", _agnews_reader, clean=lambda s: s.replace("\\", " ")),
    "yelp": Task("yelp", "yelp", "yelp-2", tsv_reader({"text": "text", "label": "label"}), test=None,
                 clean=lambda s: s.replace("\\n", "\n")),
    "boolq": Task("boolq", "boolq", "fewglue/BoolQ", _boolq_jsonl, **_FEWGLUE),
    "cb": Task("cb", "cb", "fewglue/CB", _pair_jsonl, pool="superglue/CB", **_FEWGLUE, **_SUPERGLUE_POOL),
    "rte-fewglue": Task("rte-fewglue", "rte", "fewglue/RTE", _pair_jsonl, pool="superglue/RTE",
                        **_FEWGLUE, **_SUPERGLUE_POOL),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown benchmark task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------------------- assembling splits


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$PROMPTCLS_DATA``, else ``../shared/data`` beside the repository; must exist."""
    root = Path(data_dir or os.environ.get("PROMPTCLS_DATA") or DEFAULT_DATA_DIR).expanduser()
    return _require(root, "the benchmark data folder (lm-bff/, lm-bff-pool/, agnews/, yelp-2/, fewglue/, ...)")


def _finish(frame: pd.DataFrame, task: Task, where: Path) -> pd.DataFrame:
    """Typed labels checked against the catalogue, cleaned text, columns in field order."""
    labels = task.labels
    by_text = {str(label).lower(): label for label in labels}
    raw = frame["label"].map(lambda v: str(v).strip().lower())
    unknown = sorted(set(raw) - set(by_text))
    if unknown:
        raise ValueError(f"{where}: labels {unknown} are not classes of verbalizers/{task.catalogue}.json {labels}")
    out = frame[task.fields].copy()
    if task.clean is not None:
        out = out.apply(lambda column: column.map(task.clean))
    out["label"] = [by_text[v] for v in raw]
    return out.reset_index(drop=True)


def _read(task: Task, path: Path, reader: Callable[[Path], pd.DataFrame] | None = None) -> pd.DataFrame:
    return _finish((reader or task.reader)(_require(path, f"a {task.name} data file")), task, path)


def _split_dir(task: Task, root: Path, seed: int) -> Path:
    if task.fixed_split:
        return _require(root / task.folder, f"the FewGLUE files train.jsonl, {task.dev_name}.jsonl and val.jsonl")
    return _require(root / task.folder / f"16-{seed}", f"the 16-shot split of {task.name} for seed {seed} "
                    f"(train.{task.ext} and {task.dev_name}.{task.ext}); seeds are {SEEDS}")


def _published_split(task: Task, root: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = _split_dir(task, root, seed)
    return _read(task, folder / f"train.{task.ext}"), _read(task, folder / f"{task.dev_name}.{task.ext}")


def _key(frame: pd.DataFrame, fields: list[str]) -> pd.Series:
    return frame[fields].astype(str).agg("\x1f".join, axis=1)


def _without(frame: pd.DataFrame, others: list[pd.DataFrame], fields: list[str]) -> pd.DataFrame:
    """``frame`` minus rows whose fields equal a row of ``others``."""
    seen = set().union(*(set(_key(o, fields)) for o in others)) if others else set()
    return frame[~_key(frame, fields).isin(seen)].reset_index(drop=True)


def per_class_sample(frame: pd.DataFrame, labels: list, k: int, rng: np.random.Generator, what: str) -> pd.DataFrame:
    """K rows of every label in ``labels``, drawn by ``rng``, in file order within a class."""
    parts = []
    for label in labels:
        group = frame[frame["label"] == label]
        if len(group) < k:
            raise ValueError(f"{what}: class {label!r} has {len(group)} examples, fewer than K={k}")
        parts.append(group.iloc[np.sort(rng.choice(len(group), size=k, replace=False))])
    return pd.concat(parts).reset_index(drop=True)


def _sampled_split(task: Task, root: Path, seed: int, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """K per class for train and for dev, from the task's pool (or the seed's 16-shot train + dev)."""
    rng = np.random.default_rng(seed)
    if task.pool is None:
        pool = pd.concat(_published_split(task, root, seed)).reset_index(drop=True)
        train = per_class_sample(pool, task.labels, k, rng, f"{task.name} seed {seed} 16-shot train+dev")
        rest = _without(pool, [train], task.fields)
        return train, per_class_sample(rest, task.labels, k, rng, f"{task.name} seed {seed} 16-shot train+dev minus train")
    folder = _require(root / task.pool, f"the {task.name} training pool ({', '.join(task.pool_files)})")
    frames = [_read(task, folder / f"{name}.{task.pool_ext}", task.pool_reader) for name in task.pool_files]
    train = per_class_sample(frames[0], task.labels, k, rng, f"{task.name} pool {folder / task.pool_files[0]}")
    dev_pool = frames[1] if len(frames) > 1 else _without(frames[0], [train], task.fields)
    return train, per_class_sample(dev_pool, task.labels, k, rng, f"{task.name} dev pool")


def _test_frame(task: Task, root: Path, seed: int) -> pd.DataFrame:
    if task.name == "mnli":  # no MNLI test here: the pool's held-out 10 %
        return _read(task, root / "lm-bff-pool/MNLI/dev.json", task.pool_reader)
    if task.name == "yelp":  # no Yelp-2 test here: the other seeds' splits
        others = [s for s in SEEDS if s != seed]
        return pd.concat([pd.concat(_published_split(task, root, s)) for s in others]).reset_index(drop=True)
    return _read(task, root / task.folder / f"{task.test}.{task.ext}")


def subsample(frame: pd.DataFrame, max_rows: int | None, seed: int = TEST_SAMPLE_SEED) -> pd.DataFrame:
    """At most ``max_rows`` rows drawn with a fixed seed, in file order."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)


def load_task(
    task: str,
    seed: int,
    k: int = 16,
    data_dir: str | os.PathLike | None = None,
    max_test: int | None = MAX_TEST,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, dev, test) DataFrames: the task's template fields and ``label`` (catalogue label values).

    K = 16 gives the published split of ``seed``; other K are sampled per class from a pool
    (module docstring). The test set drops examples equal to a train / dev example and is
    subsampled to ``max_test`` rows with a fixed seed (``None``: keep all).
    """
    spec = get_task(task)
    if k < 1:
        raise ValueError(f"k must be a positive number of examples per class, got {k}")
    root = data_root(data_dir)
    train, dev = _published_split(spec, root, seed) if k == 16 else _sampled_split(spec, root, seed, k)
    test = _without(_test_frame(spec, root, seed), [train, dev], spec.fields)
    return train, dev, subsample(test, max_test)


def describe_split(task: str, k: int) -> str:
    """One line on where a task's train / dev / test come from at this K (for results files)."""
    spec = get_task(task)
    if k == 16:
        source = "FewGLUE's fixed train / dev32 split" if spec.fixed_split else f"{spec.folder}/16-<seed> train / {spec.dev_name}"
    elif spec.pool is None:
        pool = "FewGLUE's train + dev32" if spec.fixed_split else "the seed's 16-shot train + dev"
        source = f"K={k} per class sampled (seeded) from {pool}"
    else:
        source = f"K={k} per class sampled (seeded) from {spec.pool}"
    test = {
        "mnli": "lm-bff-pool/MNLI/dev.json (held-out MNLI train examples; no test set in the data)",
        "yelp": "the other four seeds' yelp-2 train + dev (no test set in the data)",
    }.get(spec.name, f"{spec.folder}/{spec.test}")
    return f"{task}: train/dev {source}; test {test}"
