"""The sklearn contract: clone, params, Pipeline, cross-validation, grid search, data-free checks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks
from test_training import TEMPLATES, WORDS, X, Y

from promptcls import PromptClassifier

DATA_FREE_CHECKS = [
    "check_get_params_invariance",
    "check_set_params",
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_estimators_unfitted",
    "check_estimator_repr",
    "check_estimator_cloneable",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_data_free_estimator_checks(check, trainable_bert):
    model, tokenizer = trainable_bert
    clf = PromptClassifier(model, TEMPLATES["head"], WORDS, tokenizer=tokenizer)
    getattr(estimator_checks, check)("PromptClassifier", clf)


def test_clone_and_params(trainable_bert):
    model, tokenizer = trainable_bert
    clf = PromptClassifier(model, TEMPLATES["head"], WORDS, tokenizer=tokenizer, learning_rate=1e-2)
    twin = clone(clf)
    assert twin.get_params()["learning_rate"] == 1e-2 and twin.get_params()["template"] == TEMPLATES["head"]
    twin.set_params(template=TEMPLATES["prompt"], epochs=3)
    assert twin.template == TEMPLATES["prompt"] and twin.epochs == 3 and clf.epochs == 20


def fast(trainable_bert, **kw):
    model, tokenizer = trainable_bert
    kw = {"train_mode": "head", "epochs": 80, "train_batch_size": 4, "learning_rate": 1e-2, "progress": False, **kw}
    return PromptClassifier(model, TEMPLATES["head"], WORDS, tokenizer=tokenizer, **kw)


def test_pipeline(trainable_bert):
    pipe = make_pipeline(FunctionTransformer(lambda texts: [t.lower() for t in texts]), fast(trainable_bert))
    pipe.fit([t.upper() for t in X], Y)
    assert list(pipe.predict(X)) == Y


def test_cross_val_score(trainable_bert):
    scores = cross_val_score(fast(trainable_bert), np.array(X, dtype=object), np.array(Y), cv=StratifiedKFold(2))
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))


def test_grid_search_over_template_and_learning_rate(trainable_bert):
    grid = GridSearchCV(
        fast(trainable_bert, epochs=5),
        {"template": [TEMPLATES["head"], "{text} [MASK] ."], "learning_rate": [1e-2, 1e-5]},
        cv=StratifiedKFold(2),
    )
    grid.fit(X, Y)
    assert sorted((p["template"], p["learning_rate"]) for p in grid.cv_results_["params"]) == sorted(
        (t, lr) for t in (TEMPLATES["head"], "{text} [MASK] .") for lr in (1e-2, 1e-5)
    )
    assert grid.best_estimator_.template == grid.best_params_["template"]
    assert grid.best_estimator_.predict(X).shape == (len(X),)
