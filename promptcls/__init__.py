"""promptcls: prompt-based (PET-style) text classification with masked language models.

    >>> from promptcls import PromptClassifier
    >>> clf = PromptClassifier("roberta-base", "{text} It was [MASK].",
    ...                        {"negative": ["terrible"], "positive": ["great"]}).fit()  # doctest: +SKIP
    >>> clf.predict(["A wonderful film."])  # doctest: +SKIP
"""

from __future__ import annotations

from .catalogue import list_tasks, load_template, load_verbalizer
from .encoding import PromptEncoding
from .estimator import PromptClassifier, TrainMode
from .modeling import PromptModel
from .multilabel import MultiLabelPromptClassifier, multilabel_report
from .pet import PETClassifier
from .prompts import SoftPrompt
from .search import search_label_words
from .template import PromptEncoderType, Template, TemplateError
from .verbalizer import Aggregation, Verbalizer

__version__ = "0.1.0"

__all__ = [
    "Aggregation",
    "MultiLabelPromptClassifier",
    "PETClassifier",
    "PromptClassifier",
    "PromptEncoderType",
    "PromptEncoding",
    "PromptModel",
    "SoftPrompt",
    "Template",
    "TemplateError",
    "TrainMode",
    "Verbalizer",
    "__version__",
    "list_tasks",
    "load_template",
    "load_verbalizer",
    "multilabel_report",
    "search_label_words",
]
