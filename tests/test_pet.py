"""The PET pipeline end to end on a tiny model: patterns, ensemble, soft labels, distillation, iPET."""

from __future__ import annotations

import numpy as np
import pytest
from test_training import WORDS, X, Y

from promptcls import PromptClassifier
from promptcls.pet import PETClassifier

UNLABELED = ["the staff are nice", "i hate this film", "the food was nice and cheap", "awful service",
             "fun place", "the price was not cheap"] + X  # the labelled texts are also in the unlabeled pool
PATTERNS = [("{text} It was [MASK].", WORDS), ("{text} [SOFT:all in all] [MASK].", {"neg": ["poor"], "pos": ["nice"]})]
PARAMS = {"train_mode": "head", "epochs": 80, "train_batch_size": 4, "learning_rate": 1e-2, "progress": False}


@pytest.fixture(scope="module")
def pet(_trainable_bert):
    model, tokenizer = _trainable_bert
    return PETClassifier(model, PATTERNS, tokenizer=tokenizer, classifier_params=PARAMS).fit(X, Y, unlabeled=UNLABELED)


def test_ensemble_soft_labels_are_the_weighted_mean_of_pattern_scores(pet, _trainable_bert):
    model, tokenizer = _trainable_bert
    zero_shot = [
        np.mean(PromptClassifier(model, t, v, tokenizer=tokenizer).fit().predict(X) == np.array(Y)) for t, v in PATTERNS
    ]
    np.testing.assert_allclose(pet.weights_, np.array(zero_shot) + 1e-6)
    scores = sum(w * m.decision_function(UNLABELED) for w, m in zip(pet.weights_, pet.pattern_models_)) / pet.weights_.sum()
    z = scores / 2.0
    expected = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(pet.soft_labels_, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_final_model_is_distilled_and_classifies(pet):
    assert all((m.predict(X) == np.array(Y)).all() for m in pet.pattern_models_)
    assert list(pet.predict(X)) == Y
    assert pet.final_.train_mode == "head" and len(pet.final_.history_) == PARAMS["epochs"]
    proba = pet.predict_proba(UNLABELED)
    agree = (proba.argmax(1) == pet.soft_labels_.argmax(1)).mean()
    assert agree == 1.0  # the student follows the ensemble on the texts it was distilled on


def test_ipet_grows_the_training_set(_trainable_bert, monkeypatch):
    model, tokenizer = _trainable_bert
    sizes = []
    original = PromptClassifier.fit

    def recording(self, X=None, y=None, **kw):
        if y is not None:
            sizes.append(len(y))
        return original(self, X, y, **kw)

    monkeypatch.setattr(PromptClassifier, "fit", recording)
    PETClassifier(model, PATTERNS, tokenizer=tokenizer, classifier_params=PARAMS, generations=1, scale=0.5,
                  ensemble="mean").fit(X, Y, unlabeled=UNLABELED)
    # generation 0: the labelled set; generation 1: plus round(8 * 0.5) = 4 pseudo-labelled texts (2 per class,
    # the labelled set's proportions), per pattern; then the final model on the soft labels (no y)
    assert sizes == [8, 8, 12, 12]


def test_pet_errors(_trainable_bert):
    model, tokenizer = _trainable_bert
    with pytest.raises(ValueError, match="pattern 1 has classes"):
        PETClassifier(model, [PATTERNS[0], ("{text} [MASK]", {"a": "good", "b": "bad"})], tokenizer=tokenizer).fit(
            X, Y, unlabeled=UNLABELED)
    with pytest.raises(ValueError, match="unlabeled"):
        PETClassifier(model, PATTERNS, tokenizer=tokenizer).fit(X, Y)
