"""promptcls: prompt-based (PET-style) text classification with masked language models.

    >>> from promptcls import PromptClassifier
    >>> clf = PromptClassifier("roberta-base", "{text} It was [MASK].",
    ...                        {"negative": ["terrible"], "positive": ["great"]}).fit()  # doctest: +SKIP
    >>> clf.predict(["A wonderful film."])  # doctest: +SKIP
"""

from __future__ import annotations

from .encoding import PromptEncoding
from .estimator import PromptClassifier, TrainMode
from .modeling import PromptModel
from .prompts import SoftPrompt
from .template import PromptEncoderType, Template, TemplateError
from .verbalizer import Aggregation, Verbalizer

__version__ = "0.1.0"

__all__ = [
    "Aggregation",
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
]
