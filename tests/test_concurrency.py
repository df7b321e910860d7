"""Scoring from many threads: one classifier, and several classifiers sharing one loaded model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from test_training import TEMPLATES, WORDS, X, Y, make

from promptcls import PromptClassifier

TEXTS = X + ["the food was good", "it was really boring", "nice staff", "the price was not cheap"] * 3


def _hammer(jobs, n_calls=160, threads=8):
    """Run ``n_calls`` scoring calls round-robin over ``jobs`` on ``threads`` threads; results in call order."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(jobs[i % len(jobs)][0], jobs[i % len(jobs)][1]) for i in range(n_calls)]
        return [f.result() for f in futures]


def test_eight_threads_score_one_classifier_as_one_thread_does(trainable_bert):
    # head mode with single-token words: scoring and the label-vocabulary path both run through views
    clf = make(trainable_bert, "head+prompt", epochs=2).fit(X, Y)
    subsets = [TEXTS[i:] + TEXTS[:i] for i in range(0, len(TEXTS), 3)]  # different batches, different lengths
    expected = [clf.decision_function(s) for s in subsets]
    results = _hammer([(clf.decision_function, s) for s in subsets])
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, expected[i % len(subsets)], atol=1e-6, rtol=0)


def test_classifiers_sharing_one_model_score_from_threads(trainable_bert):
    model, tokenizer = trainable_bert
    multi = {"neg": ["bad", "terrible"], "pos": ["good", "fantastic"]}  # multi-token words: wider answer slots
    shared = [
        PromptClassifier(model, TEMPLATES["head"], WORDS, tokenizer=tokenizer, progress=False).fit(),
        PromptClassifier(model, "{text} [SOFT:it was] [MASK] !", multi, tokenizer=tokenizer, progress=False).fit(),
        PromptClassifier(model, "[MASK] : {text}", multi, tokenizer=tokenizer, decoding="iterative",
                         calibration=True, progress=False).fit(),
    ]
    # the three share the caller's weights (no copy), each with its own view of the modules
    weight = model.get_input_embeddings().weight
    assert all(c.model_.mlm.get_input_embeddings().weight is weight for c in shared)
    expected = [c.decision_function(TEXTS) for c in shared]
    assert not np.allclose(expected[0], expected[1])
    results = _hammer([(c.decision_function, TEXTS) for c in shared])
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, expected[i % len(shared)], atol=1e-6, rtol=0)
    # and the caller's model still runs as a plain model
    assert type(model).forward is model.forward.__func__
