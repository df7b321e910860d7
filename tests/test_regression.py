"""PromptRegressor (LM-BFF's regression between two label words) on tiny masked and causal LMs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from test_parts import X, causal_lms, lm  # noqa: F401 - fixtures

from promptcls import PromptClassifier, PromptRegressor

Y = [4.5, 1.5, 4.0, 1.0, 5.0, 2.0]


def test_predictions_are_the_high_words_share_mapped_onto_the_range(lm):
    name, model, tokenizer, template = lm
    reg = PromptRegressor(model, template, ("bad", "good"), tokenizer=tokenizer, value_range=(1, 5), progress=False).fit()
    clf = PromptClassifier(model, template, {"low": ["bad"], "high": ["good"]}, tokenizer=tokenizer, progress=False).fit()
    p = clf.predict_proba(X)[:, 1]
    got = reg.predict(X)
    np.testing.assert_allclose(got, 1 + 4 * p, atol=1e-6)
    assert got.dtype.kind == "f" and ((got >= 1) & (got <= 5)).all()


def test_training_targets_round_trip_the_range_and_the_save(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    kw = dict(tokenizer=tokenizer, value_range=(1.0, 5.0), train_mode="head", max_steps=40, learning_rate=1e-1,
              train_batch_size=6, progress=False)
    high = PromptRegressor(model, "{text} It was [MASK].", (["bad"], ["good", "nice"]), **kw).fit(X, [5.0] * 6)
    low = PromptRegressor(model, "{text} It was [MASK].", (["bad"], ["good", "nice"]), **kw).fit(X, [1.0] * 6)
    assert (high.predict(X) > 4.5).all() and (low.predict(X) < 1.5).all()  # the ends of the range are reached
    mixed = PromptRegressor(model, "{text} It was [MASK].", (["bad"], ["good", "nice"]), **kw).fit(X, Y)
    assert np.corrcoef(mixed.predict(X), Y)[0, 1] > 0.8  # it learns the ordering of the targets
    assert mixed.score(X, Y) == pytest.approx(1 - ((mixed.predict(X) - Y) ** 2).sum() / ((np.array(Y) - 3.0) ** 2).sum())
    mixed.save_pretrained(tmp_path / "reg")
    loaded = PromptRegressor.from_pretrained(tmp_path / "reg", model=model, tokenizer=tokenizer)
    assert tuple(loaded.value_range) == (1.0, 5.0)
    np.testing.assert_array_equal(loaded.predict(X), mixed.predict(X))
    with pytest.raises(ValueError, match="holds a PromptRegressor: load it with PromptRegressor.from_pretrained"):
        PromptClassifier.from_pretrained(tmp_path / "reg", model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="cannot change \\['value_range'\\]"):
        PromptRegressor.from_pretrained(tmp_path / "reg", model=model, tokenizer=tokenizer, value_range=(0, 1))


def test_the_causal_family_regresses_too(causal_lms, tmp_path):
    model, tokenizer = causal_lms["gpt2"]
    reg = PromptRegressor(model, "[SOFT*2] {text} It was [MASK]", ("bad", "good"), tokenizer=tokenizer,
                          value_range=(0, 1), train_mode="prompt", max_steps=3, progress=False)
    reg.fit(X, [1, 0, 1, 0, 1, 0])
    got = reg.predict(X)
    assert ((got >= 0) & (got <= 1)).all()
    reg.save_pretrained(tmp_path / "causal")
    np.testing.assert_array_equal(PromptRegressor.from_pretrained(tmp_path / "causal", model=model,
                                                                  tokenizer=tokenizer).predict(X), got)


def test_bad_targets_and_ranges_are_named(bert):
    model, tokenizer = bert
    reg = PromptRegressor(model, "{text} It was [MASK].", ("bad", "good"), tokenizer=tokenizer, value_range=(0, 5),
                          train_mode="head", max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"y\[2\] = 7.0 is outside value_range \(0, 5\)"):
        reg.fit(X, [1, 2, 7, 3, 4, 5])
    with pytest.raises(ValueError, match="y must be numbers"):
        reg.fit(X, ["a"] * 6)
    with pytest.raises(ValueError, match="value_range must be two finite numbers"):
        PromptRegressor(model, "{text} It was [MASK].", ("bad", "good"), tokenizer=tokenizer, value_range=(5, 0)).fit()
    with pytest.raises(ValueError, match="reads two label words, low and high; the verbalizer has 3 classes"):
        PromptRegressor(model, "{text} It was [MASK].", {"a": ["bad"], "b": ["good"], "c": ["nice"]},
                        tokenizer=tokenizer).fit()
    params = reg.get_params()
    assert params["value_range"] == (0, 5) and params["train_mode"] == "head"
    assert clone(reg).get_params()["value_range"] == (0, 5)
