"""PromptClassifier: inputs of every shape, zero-shot without labels, calibration, soft prompts, errors."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from promptcls import PromptClassifier, Template

WORDS = {"neg": ["bad", "terrible"], "pos": ["good", "great"]}
TEXTS = ["the food was good", "the service was poor", "i love this place"]


def make(model_tok, **kw):
    model, tokenizer = model_tok
    return PromptClassifier(model, kw.pop("template", "{text} It was [MASK]."), kw.pop("verbalizer", WORDS), tokenizer=tokenizer, **kw)


def test_zero_shot_needs_no_labels(bert):
    clf = make(bert).fit()
    assert list(clf.classes_) == ["neg", "pos"]
    proba = clf.predict_proba(TEXTS)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert list(clf.predict(TEXTS)) == list(clf.classes_[proba.argmax(1)])


def test_every_input_shape_gives_the_same_scores(bert):
    clf = make(bert).fit()
    want = clf.decision_function(TEXTS)
    df = pd.DataFrame({"text": TEXTS, "other": [1, 2, 3]})
    for X in (tuple(TEXTS), pd.Series(TEXTS), df, datasets.Dataset.from_pandas(df), [{"text": t} for t in TEXTS]):
        np.testing.assert_allclose(clf.decision_function(X), want, atol=1e-6)
    renamed = df.rename(columns={"text": "review"})
    np.testing.assert_allclose(make(bert, columns={"text": "review"}).fit().decision_function(renamed), want, atol=1e-6)
    assert clf.decision_function([]).shape == (0, 2)


def test_pairs_from_tuples_dicts_and_frames(bert):
    clf = make(bert, template="{premise} ? [MASK] , {hypothesis}", verbalizer={"no": "no", "yes": "yes"}).fit()
    pairs = [("the food was good", "it was bad"), ("i love it", "it was great")]
    want = clf.decision_function(pairs)
    df = pd.DataFrame(pairs, columns=["premise", "hypothesis"])
    np.testing.assert_allclose(clf.decision_function(df), want, atol=1e-6)


def test_input_errors_name_the_column(bert):
    clf = make(bert).fit()
    with pytest.raises(ValueError, match=r"column 'text' for template field 'text' is missing; the data has columns \['review'\]"):
        clf.predict(pd.DataFrame({"review": TEXTS}))
    with pytest.raises(ValueError, match="row 1: field 'text' .* is missing"):
        clf.predict(pd.DataFrame({"text": ["ok", None]}))
    with pytest.raises(ValueError, match="columns maps fields"):
        make(bert, columns={"body": "x"}).fit().predict(TEXTS)
    pair = make(bert, template="{a} ? [MASK] , {b}").fit()
    with pytest.raises(ValueError, match="row 0 is a single string but the template has fields"):
        pair.predict(["just one text"])


def test_label_errors(bert):
    with pytest.raises(ValueError, match="label 'neutral' in y is not a verbalizer class"):
        make(bert).fit(TEXTS, ["neg", "neutral", "pos"])
    with pytest.raises(ValueError, match="train_mode='head' trains on labelled data"):
        make(bert, train_mode="head").fit()
    with pytest.raises(ValueError, match="train_mode='everything': 'everything' is not a part"):
        make(bert, train_mode="everything").fit()


def test_loaded_model_needs_tokenizer(bert):
    model, _ = bert
    with pytest.raises(ValueError, match="needs its tokenizer"):
        PromptClassifier(model, "{text} [MASK]", WORDS).fit()


def test_unfitted(bert):
    with pytest.raises(NotFittedError):
        make(bert).predict(TEXTS)


def test_contextual_calibration(bert):
    plain = make(bert).fit()
    calibrated = make(bert, calibration=True).fit()
    content_free = plain.predict_proba(["N/A", ""]).mean(0)
    want = np.log(plain.predict_proba(TEXTS)) - np.log(content_free)
    np.testing.assert_allclose(calibrated.decision_function(TEXTS), want, atol=1e-5)
    custom = make(bert, calibration=["N/A"]).fit()
    want = np.log(plain.predict_proba(TEXTS)) - np.log(plain.predict_proba(["N/A"])[0])
    np.testing.assert_allclose(custom.decision_function(TEXTS), want, atol=1e-5)


@pytest.mark.parametrize("encoder", ["none", "lstm", "mlp"])
def test_soft_prompt_from_words_starts_as_those_words(roberta, encoder):
    hard = make(roberta, template="{text} It was [MASK].").fit()
    soft = make(roberta, template=Template("{text} It [SOFT:was] [MASK].", prompt_encoder=encoder)).fit()
    assert soft.model_.soft_prompt.n_tokens == 1
    np.testing.assert_allclose(soft.decision_function(TEXTS), hard.decision_function(TEXTS), atol=1e-5)


def test_random_soft_tokens_are_seeded(bert):
    a = make(bert, template="[SOFT*3] {text} [MASK].", random_state=1).fit().decision_function(TEXTS)
    b = make(bert, template="[SOFT*3] {text} [MASK].", random_state=1).fit().decision_function(TEXTS)
    c = make(bert, template="[SOFT*3] {text} [MASK].", random_state=2).fit().decision_function(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
def test_a_p_tuning_encoder_is_seeded_by_random_state(bert, encoder):
    import torch

    def trained():
        torch.manual_seed(len(torch.randn(7)))  # whatever the caller's generator holds
        state = torch.random.get_rng_state()
        clf = make(bert, template=Template("[SOFT*2] {text} [MASK].", prompt_encoder=encoder), train_mode="prompt",
                   epochs=1, random_state=3, progress=False).fit(TEXTS, ["pos", "neg", "pos"])
        assert torch.equal(torch.random.get_rng_state(), state)  # and left as it was
        return clf.decision_function(TEXTS)

    np.testing.assert_array_equal(trained(), trained())


def test_aggregation_changes_scores_as_named(bert):
    from promptcls import Verbalizer

    mean = make(bert).fit().decision_function(TEXTS)
    best = make(bert, verbalizer=Verbalizer(WORDS, aggregation="max")).fit().decision_function(TEXTS)
    assert (best >= mean - 1e-6).all() and not np.allclose(best, mean)
