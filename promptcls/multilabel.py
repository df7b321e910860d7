"""Multi-label classification: one yes/no prompt per label, with thresholds and multi-label metrics.

Each (text, label) pair becomes one prompt, the label's description filling the template's
``{label}`` field::

    "{text} Is this about {label}? [MASK]."        verbalizer {"no": ["no"], "yes": ["yes"]}

P(label | text) is the probability of the positive class of that prompt; a label is predicted
when it reaches its threshold. Zero-shot and every training mode of ``PromptClassifier`` work,
since the pairs are an ordinary binary prompt task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score, hamming_loss
from sklearn.utils.validation import check_is_fitted

from .estimator import PromptClassifier, TextInputMixin
from .inputs import to_rows
from .template import Template

__all__ = ["MultiLabelPromptClassifier", "multilabel_report"]


class MultiLabelPromptClassifier(TextInputMixin, ClassifierMixin, BaseEstimator):
    """Multi-label prompt classifier: ``predict`` returns an (n, L) 0/1 indicator matrix.

    Example:
        >>> clf = MultiLabelPromptClassifier(
        ...     "roberta-base", "{text} Is this about {label}? [MASK].",
        ...     labels={"sport": "sports", "pol": "politics"}).fit()          # doctest: +SKIP
        >>> clf.predict(["The minister scored a goal."])                     # doctest: +SKIP

    Parameters
    ----------
    model, tokenizer : as for ``PromptClassifier``.
    template : str
        A prompt with a ``{label}`` field (name set by ``label_field``) and one ``[MASK]``.
    labels : list or dict
        The labels, or ``{label: description}`` when the words in the prompt should differ from the
        label names.
    verbalizer : dict
        The yes/no words; ``positive`` names the class that means "the label applies".
    threshold : float or sequence of float
        Per-label probability thresholds (one value for all labels, or one per label).
    classifier_params : dict
        Settings of the underlying binary ``PromptClassifier`` (``train_mode``, ``epochs``, ...).
    """

    def __init__(
        self,
        model: Any = None,
        template: str = "{text} Is this about {label}? [MASK].",
        labels: Sequence[Any] | Mapping[Any, str] | None = None,
        verbalizer: Any = None,
        *,
        tokenizer: Any = None,
        positive: Any = "yes",
        label_field: str = "label",
        threshold: float | Sequence[float] = 0.5,
        columns: Mapping[str, str] | None = None,
        classifier_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.template = template
        self.labels = labels
        self.verbalizer = verbalizer
        self.tokenizer = tokenizer
        self.positive = positive
        self.label_field = label_field
        self.threshold = threshold
        self.columns = columns
        self.classifier_params = classifier_params

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # ------------------------------------------------------------------ helpers
    def _descriptions(self) -> dict[Any, str]:
        if not self.labels:
            raise ValueError("labels is required: a list of labels or a dict {label: description}")
        if isinstance(self.labels, Mapping):
            return {k: str(v) for k, v in self.labels.items()}
        return {label: str(label) for label in self.labels}

    def _pairs(self, X: Any) -> list[dict[str, str]]:
        """Every row once per label, the label's description in ``label_field``."""
        fields = [f for f in self.template_.fields if f != self.label_field]
        rows = to_rows(X, fields, self.columns)
        descriptions = list(self._descriptions().values())
        return [{**row, self.label_field: d} for row in rows for d in descriptions]

    def _indicator(self, Y: Any) -> np.ndarray:
        """(n, L) 0/1 matrix from a numpy indicator matrix or from one list of labels per example."""
        labels = list(self.classes_)
        if isinstance(Y, np.ndarray) and Y.ndim == 2:
            if Y.shape[1] != len(labels) or not set(np.unique(Y)) <= {0, 1}:
                raise ValueError(f"an indicator matrix Y must be (n, {len(labels)}) of 0/1 in the order {labels}")
            return Y.astype(int)
        out = np.zeros((len(Y), len(labels)), dtype=int)
        index = {label: j for j, label in enumerate(labels)}
        for i, row in enumerate(Y):
            for label in row:
                if label not in index:
                    raise ValueError(f"row {i}: label {label!r} is not one of {labels}")
                out[i, index[label]] = 1
        return out

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: Any = None, Y: Any = None) -> MultiLabelPromptClassifier:
        """Zero-shot when ``classifier_params`` has no ``train_mode``; otherwise trains on (X, Y)."""
        template = Template.coerce(self.template)
        if self.label_field not in template.fields:
            raise ValueError(
                f"template {template.source!r} has no {{{self.label_field}}} field for the label description"
            )
        descriptions = self._descriptions()
        thresholds = _thresholds(self.threshold, list(descriptions))
        verbalizer = self.verbalizer or {"no": ["no"], "yes": ["yes"]}
        params = dict(self.classifier_params or {})
        self.template_ = template
        self.classes_ = np.asarray(list(descriptions), dtype=object)
        self.classifier_ = PromptClassifier(self.model, template, verbalizer, tokenizer=self.tokenizer, **params)
        if params.get("train_mode", "none") == "none":
            self.classifier_.fit()
        else:
            if X is None or Y is None:
                raise ValueError(f"train_mode={params['train_mode']!r} trains on labelled data: call fit(X, Y)")
            indicator = self._indicator(Y)
            pairs = self._pairs(X)
            if len(pairs) != indicator.size:
                raise ValueError(f"X has {len(pairs) // len(descriptions)} rows but Y has {len(indicator)}")
            negative = next(c for c in self.classifier_._validate()[1].classes if c != self.positive)
            answers = [self.positive if v else negative for v in indicator.ravel()]
            self.classifier_.fit(pairs, answers)
        classes = list(self.classifier_.classes_)
        if self.positive not in classes:
            raise ValueError(f"positive={self.positive!r} is not a class of the yes/no verbalizer {classes}")
        self.positive_index_ = classes.index(self.positive)
        self.thresholds_ = thresholds
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, L) probability that each label applies."""
        check_is_fitted(self, "classifier_")
        pairs = self._pairs(X)
        if not pairs:
            return np.zeros((0, len(self.classes_)))
        proba = self.classifier_.predict_proba(pairs)[:, self.positive_index_]
        return proba.reshape(-1, len(self.classes_))

    def predict(self, X: Any) -> np.ndarray:
        """(n, L) 0/1 indicator matrix, columns in the order of ``classes_``."""
        return (self.predict_proba(X) >= self.thresholds_).astype(int)

    def predict_labels(self, X: Any) -> list[list[Any]]:
        """The predicted labels of each example, as lists."""
        return [[c for c, on in zip(self.classes_, row) if on] for row in self.predict(X)]

    def score(self, X: Any, Y: Any, sample_weight: Any = None) -> float:
        """Micro-averaged F1 (the usual multi-label score)."""
        return multilabel_report(self._indicator(Y), self.predict(X))["micro_f1"]


def multilabel_report(Y_true: np.ndarray, Y_pred: np.ndarray) -> dict[str, float]:
    """Micro and macro F1, subset accuracy (exact match) and Hamming loss of 0/1 indicator matrices."""
    Y_true, Y_pred = np.asarray(Y_true, dtype=int), np.asarray(Y_pred, dtype=int)
    if Y_true.shape != Y_pred.shape:
        raise ValueError(f"Y_true {Y_true.shape} and Y_pred {Y_pred.shape} differ in shape")
    return {
        "micro_f1": float(f1_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y_true, Y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float(np.mean(np.all(Y_true == Y_pred, axis=1))),
        "hamming_loss": float(hamming_loss(Y_true, Y_pred)),
    }


def _thresholds(threshold: Any, labels: list[Any]) -> np.ndarray:
    """One threshold for every label, or one per label."""
    try:
        values = np.asarray(threshold, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number or one number per label, got {threshold!r}") from None
    if values.ndim > 1 or (values.ndim == 1 and len(values) != len(labels)):
        raise ValueError(
            f"threshold has {values.size} values but there are {len(labels)} labels {labels}: "
            "give one threshold for all labels or one per label"
        )
    if not np.isfinite(values).all():  # above 1 a label is never on, below 0 always
        raise ValueError(f"threshold must be finite numbers, got {threshold!r}")
    return np.broadcast_to(values, (len(labels),)).copy()
