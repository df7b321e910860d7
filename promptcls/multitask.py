"""Many tasks on one frozen model: the rows of several classifiers scored together, in input order.

    tasks = TaskSet.from_pretrained({"sentiment": "saves/sst2", "topic": "saves/agnews"}, model="roberta-base")
    tasks.predict(["A wonderful film.", "Stocks fell."], tasks=["sentiment", "topic"])

Classifiers loaded onto one base model (``TaskSet.from_pretrained``, or ``PromptClassifier.from_pretrained(dir,
model=lm)`` for each) share its weights: they are in memory once. A batch may mix rows of any tasks:

- Tasks that leave the model's shared tensors as they are (zero-shot, hard or soft prompts, a trained MLM
  head) *join*: their rows run in ONE forward, each row with its own task's template, soft prompt, head
  and label words (:func:`promptcls.families.joint_class_scores`). ``groups_`` shows which tasks join.
- Tasks that change the encoder (full fine-tuning, unmerged LoRA or IA3, key/value prefixes) cannot share
  its forward: each scores its own rows in its own batches.

Either way every row gets its own classifier's scores (to float precision: padding to a longer batch
changes the order of a few float sums), calibrated as that classifier is, and results come back in the
order of the input.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .encoding import length_batches
from .inputs import to_rows

__all__ = ["TaskSet", "load_tasks"]


def load_tasks(saved: Mapping[str, str], zero_shot: Mapping[str, str] | None = None, model: Any = None,
               tokenizer: Any = None, **settings: Any) -> dict[str, Any]:
    """Classifiers by task name: saves (``{name: directory}``) and catalogue zero-shot tasks (``{name: task}``,
    on ``model``). Saves of one base model share one loaded copy of it."""
    from .catalogue import load_template, load_verbalizer
    from .estimator import PromptClassifier
    from .families import detect_family
    from .loading import load_model
    from .saving import read_config

    loaded: dict[Any, tuple[Any, Any]] = {}

    def shared(base: Any) -> tuple[Any, Any]:
        """(model, tokenizer): a name or path loaded once for every task on it; a loaded model as given. Either is
        put on the tasks' device once (a loaded model as a copy), or each classifier would copy it there alone."""
        key = base if isinstance(base, str) else id(base)
        if key not in loaded:
            lm, tok = load_model(base, tokenizer) if isinstance(base, str) else (base, tokenizer)
            loaded[key] = (_on_device(lm, settings.get("device", "auto"), copy_first=not isinstance(base, str)), tok)
        return loaded[key]

    out: dict[str, Any] = {}
    for name, directory in saved.items():
        lm, tok = shared(model or read_config(directory)["base_model"].get("name_or_path"))
        out[name] = PromptClassifier.from_pretrained(directory, model=lm, tokenizer=tok, **{"progress": False, **settings})
    if zero_shot and model is None:
        raise ValueError(f"zero-shot tasks {sorted(zero_shot)} need a model")
    for name, task in (zero_shot or {}).items():
        if name in out:
            raise ValueError(f"task name {name!r} is given twice (a save and a zero-shot task): give each a name")
        lm, tok = shared(model)
        family = "causal" if detect_family(lm) == "causal" else None
        out[name] = PromptClassifier(lm, load_template(task, family=family), load_verbalizer(task, family=family),
                                     tokenizer=tok, **{"progress": False, **settings}).fit()
    return out


def _on_device(lm: Any, device: Any, copy_first: bool) -> Any:
    """``lm`` on ``device`` (a copy of it where ``copy_first``): where it already is, itself."""
    from .estimator import is_on, resolve_device

    target = resolve_device(device)
    if not isinstance(lm, torch.nn.Module) or is_on(lm, target):
        return lm
    return (copy.deepcopy(lm) if copy_first else lm).to(target)


def _joins(clf: Any) -> bool:
    """Can this classifier's rows join a forward with other tasks? (a fitted PromptClassifier, parallel decoding)"""
    return (hasattr(clf, "_finish") and hasattr(clf, "model_") and getattr(clf, "decoding", "parallel") == "parallel"
            and getattr(clf, "demonstration_pool_", None) is None and getattr(clf, "truncation", "head") != "chunks"
            and clf.model_.joint_key() is not None)


def _own_scores(clf: Any, rows: list[dict[str, str]]) -> np.ndarray:
    """A classifier's decision function on rows already keyed by its template's fields."""
    if hasattr(clf, "_finish"):
        return clf._finish(clf._scores(rows))
    return clf.decision_function(rows)  # e.g. a PETClassifier: its rows by field name


def _subset(X: Any, index: list[int]) -> Any:
    """The rows ``index`` of X, in X's own kind (DataFrame, dataset, columns dict or list)."""
    if hasattr(X, "iloc"):
        return X.iloc[index]
    if hasattr(X, "select") and hasattr(X, "column_names"):
        return X.select(index)
    if isinstance(X, Mapping):
        return {k: [v[i] for i in index] for k, v in X.items()}
    return [X[i] for i in index]


class TaskSet:
    """Fitted classifiers by task name, scored together: ``predict(X, tasks=...)`` with one task per row.

    Parameters
    ----------
    classifiers : dict
        Task name -> fitted classifier (``PromptClassifier``; other classifiers score their own rows).
    batch_size : int, optional
        Rows per joint forward (default: the largest of the classifiers' ``batch_size``).
    """

    def __init__(self, classifiers: Mapping[str, Any], batch_size: int | None = None) -> None:
        if not classifiers:
            raise ValueError("a TaskSet needs at least one classifier: {task name: fitted classifier}")
        for name, clf in classifiers.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"task names must be non-empty strings, got {name!r}")
            if not hasattr(clf, "classes_"):
                raise ValueError(f"task {name!r}: the classifier is not fitted; call fit() first (or load a save)")
        self.classifiers = dict(classifiers)
        self.batch_size = batch_size or max(getattr(c, "batch_size", 32) for c in self.classifiers.values())
        groups: dict[Any, list[str]] = {}
        for name, clf in self.classifiers.items():
            key = (clf.model_.joint_key(), clf.model_.device) if _joins(clf) else ("alone", name)
            groups.setdefault(key, []).append(name)
        self.groups_ = list(groups.values())  # the tasks whose rows share one forward

    @classmethod
    def from_pretrained(cls, saved: Mapping[str, str], model: Any = None, tokenizer: Any = None, *,
                        zero_shot: Mapping[str, str] | None = None, batch_size: int | None = None,
                        **overrides: Any) -> TaskSet:
        """Saves (``{task: directory}``) and catalogue zero-shot tasks (``zero_shot={task: catalogue name}``) on one
        loaded copy of each base model (``model``: a loaded model, a name or a path; default: each save's own)."""
        return cls(load_tasks(saved, zero_shot, model=model, tokenizer=tokenizer, **overrides), batch_size=batch_size)

    @property
    def tasks(self) -> list[str]:
        return list(self.classifiers)

    def classes(self, task: str) -> np.ndarray:
        return self._classifier(task).classes_

    def _classifier(self, task: Any) -> Any:
        try:
            return self.classifiers[task]
        except (KeyError, TypeError):
            raise ValueError(f"unknown task {task!r}; tasks are {sorted(self.classifiers)}") from None

    # ------------------------------------------------------------------ scoring
    def _task_list(self, X: Any, tasks: Any) -> list[str]:
        from .estimator import n_rows

        n = n_rows(X)
        if isinstance(tasks, str):
            self._classifier(tasks)
            return [tasks] * n
        tasks = list(tasks)
        if len(tasks) != n:
            raise ValueError(f"X has {n} rows but tasks has {len(tasks)}: give one task per row, or one task name")
        for t in dict.fromkeys(tasks):
            self._classifier(t)
        return tasks

    def score_rows(self, rows: Mapping[str, Sequence[dict[str, str]]]) -> dict[str, np.ndarray]:
        """``{task: rows as {field: text}}`` -> ``{task: (n_t, C_t) decision function}``: joined tasks in one
        forward per batch, the others on their own."""
        out: dict[str, np.ndarray] = {}
        for group in self.groups_:
            present = [t for t in group if rows.get(t)]
            if len(present) == 1 or (present and not _joins(self.classifiers[present[0]])):
                for t in present:
                    out[t] = _own_scores(self.classifiers[t], list(rows[t]))
            elif present:
                out.update(self._joint(present, rows))
        for t, r in rows.items():
            if not r:
                out[t] = np.zeros((0, len(self._classifier(t).classes_)), dtype=np.float32)
        return out

    def _joint(self, names: list[str], rows: Mapping[str, Sequence[dict[str, str]]]) -> dict[str, np.ndarray]:
        from .families import joint_class_scores

        models = {t: self.classifiers[t].model_ for t in names}
        encoded = {t: models[t].encode(list(rows[t])) for t in names}
        items = [(t, i) for t in names for i in range(len(encoded[t]))]
        lengths = [len(encoded[t][i].input_ids) for t, i in items]
        scores = {t: torch.empty(len(encoded[t]), len(self.classifiers[t].classes_)) for t in names}
        for model in models.values():
            model.eval()
        with torch.inference_mode():
            for batch in length_batches(lengths, self.batch_size, models[names[0]].device,
                                        models[names[0]].packs):
                by_task: dict[str, list[int]] = {}
                for k in batch:
                    t, i = items[k]
                    by_task.setdefault(t, []).append(i)
                chunks = [(models[t], [encoded[t][i] for i in index]) for t, index in by_task.items()]
                for (t, index), s in zip(by_task.items(), joint_class_scores(chunks)):
                    scores[t][index] = s.float().cpu()
        return {t: self.classifiers[t]._finish(scores[t]) for t in names}

    def decision_function(self, X: Any, tasks: str | Sequence[str]) -> list[np.ndarray]:
        """Per row, its task's class scores (each task has its own classes), in input order."""
        task_of = self._task_list(X, tasks)
        index: dict[str, list[int]] = {}
        for i, t in enumerate(task_of):
            index.setdefault(t, []).append(i)
        rows = {}
        for t, idx in index.items():
            clf = self.classifiers[t]
            rows[t] = to_rows(_subset(X, idx) if len(idx) < len(task_of) else X, clf.template_.fields,
                              getattr(clf, "columns", None))
        scores = self.score_rows(rows)
        out: list[np.ndarray] = [None] * len(task_of)  # type: ignore[list-item]
        for t, idx in index.items():
            for k, i in enumerate(idx):
                out[i] = scores[t][k]
        return out

    def predict_proba(self, X: Any, tasks: str | Sequence[str]) -> list[np.ndarray]:
        """Per row, its task's class probabilities, in the order of ``classes(task)``."""
        return [torch.from_numpy(np.asarray(s)).softmax(-1).numpy() for s in self.decision_function(X, tasks)]

    def predict(self, X: Any, tasks: str | Sequence[str]) -> np.ndarray:
        """Per row, its task's predicted label (an object array: tasks have different classes)."""
        task_of = self._task_list(X, tasks)
        scores = self.decision_function(X, task_of)
        out = np.empty(len(scores), dtype=object)
        out[:] = [self.classifiers[t].classes_[int(np.argmax(s))] for t, s in zip(task_of, scores)]
        return out
