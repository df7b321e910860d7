"""promptcls: prompt-based (PET-style) text classification with masked language models.

    >>> from promptcls import PromptClassifier
    >>> clf = PromptClassifier("roberta-base", "{text} It was [MASK].",
    ...                        {"negative": ["terrible"], "positive": ["great"]}).fit()  # doctest: +SKIP
    >>> clf.predict(["A wonderful film."])  # doctest: +SKIP

Names are imported on first use (PEP 562), so ``import promptcls`` and ``promptcls --version``
do not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Aggregation": "verbalizer",
    "MultiLabelPromptClassifier": "multilabel",
    "PETClassifier": "pet",
    "PromptClassifier": "estimator",
    "PromptEncoderType": "template",
    "PromptEncoding": "encoding",
    "PromptModel": "modeling",
    "PromptRegressor": "regression",
    "SoftPrompt": "prompts",
    "TaskSet": "multitask",
    "Template": "template",
    "TemplateError": "template",
    "TrainMode": "estimator",
    "Verbalizer": "verbalizer",
    "apply_input_edits": "catalogue",
    "expand_label_words": "knowledge",
    "input_edits": "catalogue",
    "list_tasks": "catalogue",
    "load_template": "catalogue",
    "load_verbalizer": "catalogue",
    "multilabel_report": "multilabel",
    "search_label_words": "search",
}

__all__ = [
    "Aggregation",
    "MultiLabelPromptClassifier",
    "PETClassifier",
    "PromptClassifier",
    "PromptEncoderType",
    "PromptEncoding",
    "PromptModel",
    "PromptRegressor",
    "SoftPrompt",
    "TaskSet",
    "Template",
    "TemplateError",
    "TrainMode",
    "Verbalizer",
    "__version__",
    "apply_input_edits",
    "expand_label_words",
    "input_edits",
    "list_tasks",
    "load_template",
    "load_verbalizer",
    "multilabel_report",
    "search_label_words",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'promptcls' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; never run
    from .catalogue import apply_input_edits, input_edits, list_tasks, load_template, load_verbalizer
    from .encoding import PromptEncoding
    from .estimator import PromptClassifier, TrainMode
    from .modeling import PromptModel
    from .multilabel import MultiLabelPromptClassifier, multilabel_report
    from .multitask import TaskSet
    from .pet import PETClassifier
    from .prompts import SoftPrompt
    from .regression import PromptRegressor
    from .search import search_label_words
    from .template import PromptEncoderType, Template, TemplateError
    from .verbalizer import Aggregation, Verbalizer
