"""The task catalogue: published templates and label words, one JSON file per task.

``templates/<task>.json`` and ``verbalizers/<task>.json`` (in the repository; installed as the
``promptcls.templates`` and ``promptcls.verbalizers`` package data) hold the variants published
for a task, each citing its source. Adding a task adds two files, not code.

    >>> from promptcls.catalogue import load_template, load_verbalizer
    >>> load_template("sst2")
    Template('{text} It was [MASK].')
    >>> load_verbalizer("sst2").words[1]
    ('great',)
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from .template import Template
from .verbalizer import Verbalizer

__all__ = ["list_tasks", "load_template", "load_verbalizer", "task_entry"]

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


def _variant(entry: dict[str, Any], group: str, variant: str | None, task: str) -> dict[str, Any]:
    variants = entry[group]
    name = entry["default"] if variant is None else str(variant)
    if name not in variants:
        raise ValueError(f"task {task!r} has no {group[:-1]} {name!r}; its variants are: {', '.join(variants)}")
    return variants[name]


def load_template(task: str, variant: str | None = None) -> Template:
    """The catalogue template for ``task`` (its default, or the named variant)."""
    entry = task_entry(task)["templates"]
    data = _variant(entry, "templates", variant, task)
    return Template(data["template"], prompt_encoder=data.get("prompt_encoder", "none"))


def load_verbalizer(task: str, variant: str | None = None) -> Verbalizer:
    """The catalogue label words for ``task`` (its default, or the named variant)."""
    entry = task_entry(task)["verbalizers"]
    data = _variant(entry, "verbalizers", variant, task)
    return Verbalizer.from_dict({"classes": data["classes"], "aggregation": data.get("aggregation", "mean")})
