"""Regression by prompting (LM-BFF, Gao et al. 2021, for STS-B): a score in ``[a, b]`` between two label words.

The template's answer slot chooses between a *low* and a *high* word (``"terrible"`` / ``"great"``, or LM-BFF's
``"No"`` / ``"Yes"`` for sentence similarity). With ``p`` the probability of the high word against the low one,
the prediction is ``a + (b - a) * p``. Training targets ``y`` in ``[a, b]`` become the two-word distribution
``[1 - t, t]`` with ``t = (y - a) / (b - a)``, and the loss is the cross-entropy against it (LM-BFF's KL
divergence, up to a constant): every part of :mod:`promptcls.parts` trains as it does for classification, and
the masked and causal families both work.

    reg = PromptRegressor("roberta-base", "{sentence1} [MASK] , {sentence2}", ("No", "Yes"), value_range=(0, 5),
                          train_mode="head+prompt").fit(pairs, scores)
    reg.predict(pairs)       # floats in [0, 5]
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .estimator import PromptClassifier, materialize
from .verbalizer import Verbalizer

__all__ = ["PromptRegressor"]


class PromptRegressor(RegressorMixin, PromptClassifier):
    """A prompt-based regressor: the same parameters as :class:`PromptClassifier`, plus ``value_range``.

    ``verbalizer`` is a pair ``(low words, high words)`` (each a word or a list of words), or a two-class
    verbalizer whose first class is the low end. ``value_range=(a, b)``: the scores the low and the high word
    stand for. ``predict`` gives floats in ``[a, b]``; ``score`` is R² (sklearn's regressor contract).
    """

    def __init__(self, *args: Any, value_range: tuple[float, float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.value_range = value_range

    # ------------------------------------------------------------------ validation
    def _range(self) -> tuple[float, float]:
        r = self.value_range
        ok = (isinstance(r, (tuple, list)) and len(r) == 2
              and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in r)
              and r[0] < r[1])
        if not ok:
            raise ValueError(f"value_range must be two finite numbers (low, high) with low < high, got {r!r}")
        return float(r[0]), float(r[1])

    def _validate(self):
        self._range()
        words = self.verbalizer
        if isinstance(words, (tuple, list)) and len(words) == 2 and not isinstance(words, Verbalizer):
            low, high = ([w] if isinstance(w, str) else list(w) for w in words)
            self.verbalizer = {"low": low, "high": high}
            try:
                return super()._validate()
            finally:
                self.verbalizer = words  # get_params stays what the user gave
        template, verbalizer = super()._validate()
        if len(verbalizer.classes) != 2:
            raise ValueError(f"a PromptRegressor reads two label words, low and high; the verbalizer has "
                             f"{len(verbalizer.classes)} classes {list(verbalizer.classes)}: give (low, high)")
        return template, verbalizer

    # ------------------------------------------------------------------ fit / predict
    def fit(self, X: Any = None, y: Any = None, *, eval_set: Any = None, unlabeled: Any = None, **kwargs: Any):
        """Train on targets ``y`` in ``value_range`` (zero-shot with ``train_mode="none"``: no y)."""
        if kwargs:
            raise TypeError(f"PromptRegressor.fit got unexpected arguments {sorted(kwargs)}")
        a, b = self._range()
        if y is None:
            return super().fit(X, eval_set=None, unlabeled=unlabeled)
        try:
            targets = np.asarray(materialize(y, "y"), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("y must be numbers (regression targets)") from None
        if targets.ndim != 1:
            raise ValueError(f"y must be one number per row, got shape {targets.shape}")
        bad = np.flatnonzero(~np.isfinite(targets) | (targets < a) | (targets > b))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"y[{i}] = {float(targets[i])!r} is outside value_range {self.value_range!r}: widen value_range "
                             "or clip the targets")
        if eval_set is not None:
            raise ValueError("eval_set picks the epoch of best dev accuracy, which regression has not; leave it None")
        t = (targets - a) / (b - a)
        return super().fit(X, None, unlabeled=unlabeled, soft_labels=np.stack([1 - t, t], 1))

    def predict(self, X: Any) -> np.ndarray:
        """Floats in ``value_range``: ``a + (b - a) * P(high word | slot)`` against the low word."""
        check_is_fitted(self, "model_")
        a, b = self._range()
        return a + (b - a) * self.predict_proba(X)[:, 1]


# sklearn reads an estimator's parameters from its __init__ signature: PromptClassifier's, plus value_range
_parent = inspect.signature(PromptClassifier.__init__)
PromptRegressor.__init__.__signature__ = _parent.replace(parameters=[
    *_parent.parameters.values(),
    inspect.Parameter("value_range", inspect.Parameter.KEYWORD_ONLY, default=(0.0, 1.0)),
])
