"""The PET pipeline (Schick and Schütze 2021): several patterns -> ensemble -> soft labels -> distillation.

1. One ``PromptClassifier`` per pattern-verbalizer pair, trained on the labelled examples.
2. Their class scores on the unlabeled texts are averaged, plainly (``"mean"``) or weighted by
   each pattern's accuracy on the labelled set before training (``"weighted"``, PET's ``wmean``).
3. Soft labels: ``softmax(ensemble scores / temperature)``.
4. A final classifier is trained on the unlabeled texts and their soft labels with the
   distillation loss (``T^2 * KL``). PET distils into a plain sequence classifier; here the final
   model is a ``PromptClassifier`` (by default with the first pattern), so its saves, CLI and
   scoring are the same as every other model's.

iPET (``generations > 0``): before the final step, each generation retrains every pattern on the
labelled examples plus unlabeled texts labelled by the ensemble of the *other* patterns of the
previous generation: the most confident ones, ``scale**g`` times the labelled set in number, in
the class proportions of the labelled set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .estimator import PromptClassifier, TextInputMixin
from .inputs import to_rows
from .template import Template
from .verbalizer import Verbalizer

__all__ = ["PETClassifier"]


class PETClassifier(TextInputMixin, ClassifierMixin, BaseEstimator):
    """PET / iPET: an ensemble of prompt classifiers distilled into one.

    Example:
        >>> pet = PETClassifier("roberta-base", patterns=[
        ...     ("{text} It was [MASK].", {"neg": ["terrible"], "pos": ["great"]}),
        ...     ("Just [MASK]! {text}", {"neg": ["bad"], "pos": ["good"]}),
        ... ], classifier_params={"train_mode": "full", "epochs": 3})      # doctest: +SKIP
        >>> pet.fit(train_texts, train_labels, unlabeled=texts).predict(test_texts)  # doctest: +SKIP

    Parameters
    ----------
    model, tokenizer : as for ``PromptClassifier``.
    patterns : list of (template, verbalizer)
        The pattern-verbalizer pairs; every verbalizer must have the same classes.
    ensemble : {"weighted", "mean"}
        How pattern scores are combined.
    temperature : float
        Of the soft labels and of the distillation loss (PET: 2).
    generations : int
        iPET generations before the final distillation (0: plain PET).
    scale : float
        iPET's growth factor of the pseudo-labelled set per generation (PET: 5).
    classifier_params : dict
        Settings of each pattern's ``PromptClassifier`` (``train_mode``, ``epochs``, ...).
    final_pattern : int
        Which pattern the final classifier uses.
    final_params : dict
        Settings of the final classifier (default: ``classifier_params``).
    """

    def __init__(
        self,
        model: Any = None,
        patterns: Sequence[tuple[Any, Any]] = (),
        *,
        tokenizer: Any = None,
        ensemble: str = "weighted",
        temperature: float = 2.0,
        generations: int = 0,
        scale: float = 5.0,
        classifier_params: Mapping[str, Any] | None = None,
        final_pattern: int = 0,
        final_params: Mapping[str, Any] | None = None,
        columns: Mapping[str, str] | None = None,
        random_state: int = 0,
    ) -> None:
        self.model = model
        self.patterns = patterns
        self.tokenizer = tokenizer
        self.ensemble = ensemble
        self.temperature = temperature
        self.generations = generations
        self.scale = scale
        self.classifier_params = classifier_params
        self.final_pattern = final_pattern
        self.final_params = final_params
        self.columns = columns
        self.random_state = random_state

    def _validate(self) -> list[tuple[Template, Verbalizer]]:
        if not self.patterns:
            raise ValueError("patterns is required: a list of (template, verbalizer) pairs")
        pairs = [(Template.coerce(t), Verbalizer.coerce(v)) for t, v in self.patterns]
        classes = pairs[0][1].classes
        for i, (_, v) in enumerate(pairs):
            if set(v.classes) != set(classes):
                raise ValueError(f"pattern {i} has classes {list(v.classes)}, pattern 0 has {list(classes)}: they must match")
        if self.ensemble not in ("weighted", "mean"):
            raise ValueError(f"ensemble={self.ensemble!r} is not one of 'weighted', 'mean'")
        if not 0 <= self.final_pattern < len(pairs):
            raise ValueError(f"final_pattern={self.final_pattern} is not a pattern index (0..{len(pairs) - 1})")
        if not isinstance(self.generations, int) or self.generations < 0:
            raise ValueError(f"generations must be a non-negative integer, got {self.generations!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        return pairs

    def _classifier(self, i: int, params: Mapping[str, Any] | None = None) -> PromptClassifier:
        template, verbalizer = self.patterns_[i]
        settings = {"random_state": self.random_state, **(params if params is not None else self.classifier_params or {})}
        settings.setdefault("train_mode", "full")
        # rows reach the pattern models already mapped to template fields: no column mapping there
        return PromptClassifier(self.model, template, verbalizer, tokenizer=self.tokenizer, **settings)

    def _ensemble_scores(self, models: Sequence[PromptClassifier], weights: np.ndarray, X: Any) -> np.ndarray:
        """(n, C) weighted mean of the patterns' class scores, columns in ``classes_`` order."""
        total = 0.0
        for model, w in zip(models, weights):
            order = [list(model.classes_).index(c) for c in self.classes_]
            total = total + w * model.decision_function(X)[:, order]
        return total / weights.sum()

    def fit(self, X: Any, y: Any, unlabeled: Any = None) -> PETClassifier:
        """Train the patterns on ``(X, y)``, label ``unlabeled`` with their ensemble, distil the final model."""
        pairs = self._validate()
        if unlabeled is None:
            raise ValueError("PET distils on unlabeled texts: fit(X, y, unlabeled=texts)")
        if X is None or y is None:
            raise ValueError("PET trains its patterns on labelled data: fit(X, y, unlabeled=texts)")
        fields = pairs[0][0].fields
        unlabeled_rows = to_rows(unlabeled, fields, self.columns)
        labelled_rows = to_rows(X, fields, self.columns)
        y = list(y)
        if not unlabeled_rows:
            raise ValueError("unlabeled is empty: PET distils its final model on unlabeled texts; pass some")
        if not labelled_rows:
            raise ValueError("X is empty: PET trains its patterns on labelled examples; pass some")
        if len(y) != len(labelled_rows):
            raise ValueError(f"X has {len(labelled_rows)} rows but y has {len(y)} labels")
        self.patterns_ = pairs
        self.classes_ = np.asarray(list(pairs[0][1].classes), dtype=object)

        if self.ensemble == "weighted":  # PET's wmean: accuracy on the labelled set before training
            weights = np.array([
                float(np.mean(self._classifier(i, {"train_mode": "none"}).fit().predict(labelled_rows) == np.asarray(y, dtype=object)))
                for i in range(len(pairs))
            ]) + 1e-6
        else:
            weights = np.ones(len(pairs))
        self.weights_ = weights

        models = [self._classifier(i).fit(labelled_rows, y) for i in range(len(pairs))]
        rng = np.random.default_rng(self.random_state)
        for generation in range(1, self.generations + 1):
            models = [
                self._classifier(i).fit(*self._ipet_data(i, generation, models, weights, labelled_rows, y, unlabeled_rows, rng))
                for i in range(len(pairs))
            ]
        self.pattern_models_ = models
        scores = self._ensemble_scores(models, weights, unlabeled_rows)
        soft = _softmax(scores / self.temperature)
        self.soft_labels_ = soft
        final = self._classifier(self.final_pattern, self.final_params)
        final_classes = list(final._validate()[1].classes)
        order = [list(self.classes_).index(c) for c in final_classes]
        self.final_ = final.fit(unlabeled_rows, soft_labels=soft[:, order], temperature=self.temperature)
        return self

    def _ipet_data(self, i, generation, models, weights, rows, y, unlabeled_rows, rng):
        """Labelled rows plus unlabeled rows labelled by the other patterns' ensemble (most confident first)."""
        others = [k for k in range(len(models)) if k != i] or [i]
        scores = self._ensemble_scores([models[k] for k in others], weights[others], unlabeled_rows)
        proba = _softmax(scores)
        predicted = proba.argmax(1)
        n_new = min(len(unlabeled_rows), int(round(len(rows) * self.scale**generation)))
        labels, counts = np.unique(np.asarray([list(self.classes_).index(v) for v in y]), return_counts=True)
        extra_rows, extra_y = [], []
        for c, share in zip(labels, counts / counts.sum()):
            candidates = np.flatnonzero(predicted == c)
            candidates = candidates[np.argsort(-proba[candidates, c], kind="stable")]
            take = candidates[: int(round(n_new * share))]
            extra_rows += [unlabeled_rows[j] for j in take]
            extra_y += [self.classes_[c]] * len(take)
        return rows + extra_rows, y + extra_y

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "final_")
        order = [list(self.final_.classes_).index(c) for c in self.classes_]
        rows = to_rows(X, self.patterns_[self.final_pattern][0].fields, self.columns)
        return self.final_.decision_function(rows)[:, order]

    def predict_proba(self, X: Any) -> np.ndarray:
        return _softmax(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
