"""Multi-label: one yes/no prompt per label, exact against the binary classifier, trainable, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from promptcls import PromptClassifier
from promptcls.multilabel import MultiLabelPromptClassifier, multilabel_report

TEXTS = ["the food was nice", "the service was poor", "the food and the service were fine", "i love this place",
         "the food was awful", "nice staff and service"]
LABELS = [["food"], ["service"], ["food", "service"], [], ["food"], ["service"]]
TEMPLATE = "{text} Is it about {label} ? [MASK] ."


def test_zero_shot_equals_binary_prompts(trainable_bert):
    model, tokenizer = trainable_bert
    clf = MultiLabelPromptClassifier(model, TEMPLATE, labels={"f": "food", "s": "service"}, tokenizer=tokenizer).fit()
    proba = clf.predict_proba(TEXTS)
    binary = PromptClassifier(model, TEMPLATE, {"no": ["no"], "yes": ["yes"]}, tokenizer=tokenizer).fit()
    pairs = [{"text": t, "label": d} for t in TEXTS for d in ("food", "service")]
    np.testing.assert_allclose(proba, binary.predict_proba(pairs)[:, 1].reshape(-1, 2), atol=1e-6)
    assert clf.predict(TEXTS).shape == (len(TEXTS), 2) and list(clf.classes_) == ["f", "s"]


def test_training_learns_a_toy_multilabel_task(trainable_bert):
    model, tokenizer = trainable_bert
    clf = MultiLabelPromptClassifier(
        model, TEMPLATE, labels=["food", "service"], tokenizer=tokenizer,
        classifier_params={"train_mode": "full", "epochs": 40, "train_batch_size": 4, "learning_rate": 1e-2,
                           "progress": False},
    ).fit(TEXTS, LABELS)
    assert clf.predict_labels(TEXTS) == LABELS
    report = multilabel_report(clf._indicator(LABELS), clf.predict(TEXTS))
    assert report == {"micro_f1": 1.0, "macro_f1": 1.0, "subset_accuracy": 1.0, "hamming_loss": 0.0}
    indicator = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(clf._indicator(indicator), indicator)


def test_thresholds_per_label(trainable_bert):
    model, tokenizer = trainable_bert
    clf = MultiLabelPromptClassifier(model, TEMPLATE, labels=["food", "service"], tokenizer=tokenizer,
                                     threshold=[0.0, 1.01]).fit()
    np.testing.assert_array_equal(clf.predict(TEXTS), np.tile([1, 0], (len(TEXTS), 1)))


def test_report_values():
    Y = np.array([[1, 0, 1], [0, 1, 0]])
    P = np.array([[1, 0, 0], [0, 1, 0]])
    r = multilabel_report(Y, P)
    assert r["subset_accuracy"] == 0.5 and r["hamming_loss"] == pytest.approx(1 / 6)
    assert r["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1)) and r["macro_f1"] == pytest.approx(2 / 3)


def test_errors(trainable_bert):
    model, tokenizer = trainable_bert
    with pytest.raises(ValueError, match="has no {label} field"):
        MultiLabelPromptClassifier(model, "{text} [MASK]", labels=["a", "b"], tokenizer=tokenizer).fit()
    with pytest.raises(ValueError, match="label 'drinks' is not one of"):
        MultiLabelPromptClassifier(model, TEMPLATE, labels=["food"], tokenizer=tokenizer,
                                   classifier_params={"train_mode": "head"}).fit(["x"], [["drinks"]])
