"""The soft verbalizer (``train_mode="verbalizer"``, WARP): vectors in place of the label words' output rows, on
tiny masked and causal LMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_parts import X, Y, causal_lms, fit, lm, zero_shot  # noqa: F401 - fixtures

from promptcls import PromptClassifier, TaskSet
from promptcls.parts.soft_verbalizer import SoftVerbalizerPart

ONE_TOKEN = {"neg": ["bad"], "pos": ["good", "nice"]}


def test_a_soft_verbalizer_from_the_label_words_scores_like_the_manual_verbalizer(lm):
    name, model, tokenizer, template = lm
    manual = PromptClassifier(model, template, ONE_TOKEN, tokenizer=tokenizer, progress=False).fit()
    soft = PromptClassifier(model, template, ONE_TOKEN, tokenizer=tokenizer, progress=False).fit()
    SoftVerbalizerPart({}).attach(soft.model_)
    assert soft.model_.soft_verbalizer is not None
    np.testing.assert_allclose(soft.predict_proba(X), manual.predict_proba(X), atol=1e-5)
    # up to one constant per row (the vocabulary's normaliser), the class scores themselves
    gap = soft.decision_function(X) - manual.decision_function(X)
    np.testing.assert_allclose(gap, gap[:, :1].repeat(gap.shape[1], 1), atol=1e-4)


def test_training_a_soft_verbalizer_moves_only_its_vectors_and_the_save_holds_them(lm, tmp_path):
    name, model, tokenizer, template = lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf = fit(model, tokenizer, template, "verbalizer")
    assert clf.train_mode_ == "verbalizer" and sorted(clf.trained_parameters_) == [
        "soft_verbalizer.bias", "soft_verbalizer.vectors"]
    params = dict(clf.model_.named_parameters())
    for n, p in params.items():
        short = n.split(".", 1)[1]
        if not n.startswith("soft_verbalizer.") and short in before:
            assert torch.equal(p, before[short]), n  # the model (its output layer too) is as it was
    out = model.get_output_embeddings().weight
    clf.save_pretrained(tmp_path / "saved")
    stored = load_file(tmp_path / "saved" / "trained.safetensors")
    stored.pop("calibration", None)
    words = sum(len(w) for w in clf.verbalizer_.words.values())
    assert tuple(stored["soft_verbalizer.vectors"].shape) == (words, out.shape[1])
    assert tuple(stored["soft_verbalizer.bias"].shape) == (words,) and set(stored) == set(clf.trained_parameters_)
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    assert clf.trainable_parameters_["trainable"] == words * (out.shape[1] + 1)


def test_gradients_reach_only_the_vectors_and_they_train(bert):
    from promptcls.training import trainable_parameters

    model, tokenizer = bert
    clf = fit(model, tokenizer, "{text} It was [MASK].", "verbalizer")
    model_side, prompt_side = trainable_parameters(clf.model_, clf.parts_)
    assert set(model_side) | set(prompt_side) == {"soft_verbalizer.vectors", "soft_verbalizer.bias"}
    pm = clf.model_
    for p in pm.parameters():
        p.requires_grad_(True)
        p.grad = None
    loss = torch.nn.functional.cross_entropy(pm.relative_class_scores(pm.encode([{"text": x} for x in X])),
                                             torch.tensor([1, 0] * 3))
    loss.backward()
    for p in pm.parameters():
        p.requires_grad_(False)
    grads = {n for n, p in pm.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert {"soft_verbalizer.vectors", "soft_verbalizer.bias"} <= grads
    trained = fit(model, tokenizer, "{text} It was [MASK].", "verbalizer", max_steps=20, learning_rate=5e-2)
    assert (trained.predict(X) == np.array(Y)).mean() >= (zero_shot(model, tokenizer, "{text} It was [MASK].")
                                                          .predict(X) == np.array(Y)).mean()


def test_soft_verbalizer_tasks_join_a_mixed_batch(bert, tmp_path):
    model, tokenizer = bert
    soft = fit(model, tokenizer, "{text} It was [MASK].", "verbalizer", learning_rate=5e-2)
    head = fit(model, tokenizer, "{text} All in all [MASK].", "head")
    for name, clf in (("soft", soft), ("head", head)):
        clf.save_pretrained(tmp_path / name)
    tasks = TaskSet.from_pretrained({"soft": tmp_path / "soft", "head": tmp_path / "head"}, model=model,
                                    tokenizer=tokenizer)
    assert tasks.groups_ == [["soft", "head"]]
    which = ["soft", "head", "head", "soft", "soft", "head"]
    got = tasks.decision_function(X, which)
    for x, t, g in zip(X, which, got):
        np.testing.assert_allclose(g, {"soft": soft, "head": head}[t].decision_function([x])[0], atol=1e-5)


def test_soft_verbalizer_refuses_what_it_cannot_do(causal_lms):
    model, tokenizer = causal_lms["gpt2"]
    with pytest.raises(ValueError, match="score_suffix=True scores the text after it too"):
        fit(model, tokenizer, "{text} It was [MASK] !", "verbalizer", score_suffix=True)
