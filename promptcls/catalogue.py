"""The task catalogue: published templates and label words, one JSON file per task.

``templates/<task>.json`` and ``verbalizers/<task>.json`` (in the repository; installed as the
``promptcls.templates`` and ``promptcls.verbalizers`` package data) hold the variants published
for a task, each citing its source. Adding a task adds two files, not code.

A template variant may declare its own ``fields`` (a subset of the task's, for data that lacks
a field) and ``input_edits``: the text edits its source applies to a field before the template
(LM-BFF's ``*sent-_0*`` drops a sentence's last character, its final punctuation mark). Edits are
opt-in: :func:`input_edits` names them and :func:`apply_input_edits` applies them to the data.

    >>> from promptcls.catalogue import load_template, load_verbalizer
    >>> load_template("sst2")
    Template('{text} It was [MASK].')
    >>> load_verbalizer("sst2").words[1]
    ('great',)
    >>> apply_input_edits([{"premise": "A man sleeps.", "hypothesis": "He rests."}], input_edits("snli"))
    [{'premise': 'A man sleeps', 'hypothesis': 'he rests.'}]
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from .template import Template

if TYPE_CHECKING:
    from .verbalizer import Verbalizer

__all__ = ["EDITS", "apply_input_edits", "input_edits", "list_tasks", "load_template", "load_verbalizer", "task_entry"]

# the published input edits a variant may name (LM-BFF's template language: src/dataset.py)
EDITS: dict[str, Callable[[str], str]] = {
    "drop_last_character": lambda text: text[:-1],  # LM-BFF *sent-_i*: the sentence's final punctuation mark
    "lowercase_first_character": lambda text: text[:1].lower() + text[1:],  # LM-BFF *sentl_i* / *+sentl_i*
}

_KINDS = ("templates", "verbalizers")


@cache
def _files(kind: str) -> dict[str, str]:
    """{task: JSON text} for one kind of catalogue file."""
    folder = resources.files(f"promptcls.{kind}")
    return {
        entry.name[: -len(".json")]: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def list_tasks() -> list[str]:
    """Names of the tasks that have both a template and a verbalizer file."""
    return sorted(set(_files("templates")) & set(_files("verbalizers")))


def _unknown_task(task: str) -> ValueError:
    tasks = list_tasks()
    close = difflib.get_close_matches(task, tasks, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown task {task!r}{hint}; the catalogue has: {', '.join(tasks)}")


def task_entry(task: str) -> dict[str, Any]:
    """Both files of ``task`` as parsed JSON: ``{"templates": {...}, "verbalizers": {...}}``."""
    key = task.lower().replace("-", "").replace("_", "")
    if key not in list_tasks():
        raise _unknown_task(task)
    return {kind: json.loads(_files(kind)[key]) for kind in _KINDS}


def _variant(entry: dict[str, Any], group: str, variant: str | None, task: str, family: str | None = None) -> dict[str, Any]:
    variants = entry[group]
    if family not in (None, "masked", "causal"):
        raise ValueError(f"family={family!r} is not one of 'masked', 'causal'")
    default = entry.get("default_causal", entry["default"]) if family == "causal" else entry["default"]
    name = default if variant is None else str(variant)
    if name not in variants:
        raise ValueError(f"task {task!r} has no {group[:-1]} {name!r}; its variants are: {', '.join(variants)}")
    return variants[name]


def load_template(task: str, variant: str | None = None, family: str | None = None) -> Template:
    """The catalogue template for ``task`` (its default, or the named variant).

    ``family="causal"``: the default for causal LMs (``default_causal``: the answer slot at the end).
    """
    entry = task_entry(task)["templates"]
    data = _variant(entry, "templates", variant, task, family)
    return Template(data["template"], prompt_encoder=data.get("prompt_encoder", "none"))


def load_verbalizer(task: str, variant: str | None = None, family: str | None = None) -> Verbalizer:
    """The catalogue label words for ``task`` (its default, or the named variant; ``family="causal"``: the
    causal-LM default)."""
    from .verbalizer import Verbalizer  # imports torch: only when label words are needed

    entry = task_entry(task)["verbalizers"]
    data = _variant(entry, "verbalizers", variant, task, family)
    return Verbalizer.from_dict({"classes": data["classes"], "aggregation": data.get("aggregation", "mean")})


def input_edits(task: str, variant: str | None = None) -> dict[str, tuple[str, ...]]:
    """The text edits the source of a template variant applies, as ``{field: (edit, ...)}`` (often empty).

    Example:
        >>> input_edits("snli")
        {'premise': ('drop_last_character',), 'hypothesis': ('lowercase_first_character',)}
    """
    entry = task_entry(task)["templates"]
    data = _variant(entry, "templates", variant, task)
    return {field: tuple(edits) for field, edits in data.get("input_edits", {}).items()}


def apply_input_edits(
    X: Any, edits: Mapping[str, Sequence[str]], columns: Mapping[str, str] | None = None
) -> Any:
    """``X`` (a DataFrame, or a list of dicts) with each field's edits applied to its text; ``X`` is not changed.

    ``columns`` maps template fields to column names, as ``PromptClassifier(columns=...)`` does.
    """
    columns = dict(columns or {})
    plan = {columns.get(field, field): [_edit(name) for name in names] for field, names in edits.items() if names}
    if not plan:
        return X

    def edit(text: Any, functions: list[Callable[[str], str]]) -> Any:
        if isinstance(text, str):
            for function in functions:
                text = function(text)
        return text

    if hasattr(X, "columns") and hasattr(X, "copy"):  # a pandas DataFrame
        out = X.copy()
        for column, functions in plan.items():
            if column in out.columns:
                out[column] = [edit(v, functions) for v in out[column].tolist()]
        return out
    if isinstance(X, Sequence) and not isinstance(X, str) and all(isinstance(row, Mapping) for row in X):
        return [{k: edit(v, plan[k]) if k in plan else v for k, v in row.items()} for row in X]
    raise TypeError(f"input edits apply to a DataFrame or a list of dicts (fields by name), got {type(X).__name__}")


def _edit(name: str) -> Callable[[str], str]:
    if name not in EDITS:
        raise ValueError(f"unknown input edit {name!r}; the edits are: {', '.join(EDITS)}")
    return EDITS[name]
