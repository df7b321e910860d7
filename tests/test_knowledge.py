"""A knowledgeable verbalizer (KPT) on tiny models: label words expanded from the model's embeddings, frequency
refinement and contextualized calibration on a support set, against plain ``model(...).logits``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_parts import X, causal_lms  # noqa: F401 - fixtures

from promptcls import PromptClassifier, Verbalizer, expand_label_words
from promptcls.verbalizer import word_token_ids

SUPPORT = X + ["the staff was nice", "a boring film", "great food and fun"]
WORDS = {"neg": ["bad", "awful", "poor"], "pos": ["good", "nice", "great", "fun"]}  # one token each here


def _slot_probs(clf, tokenizer, texts):
    """(n, V) probabilities at the slot from plain forwards of the filled prompts, one at a time."""
    lm = clf.model_.lm
    out = []
    for text in texts:
        if clf.model_.family == "masked":
            ids = tokenizer(f"{text} It was {tokenizer.mask_token}.", return_tensors="pt")
            where = int((ids["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
        else:
            ids = tokenizer(f"{text} It was", return_tensors="pt")
            where = ids["input_ids"].shape[1] - 1
        with torch.no_grad():
            out.append(lm(**ids).logits[0, where].float().softmax(-1))
    return torch.stack(out).double()


@pytest.fixture(params=["bert", "gpt2"])
def model(request, bert, causal_lms):
    if request.param == "bert":
        return (*bert, "{text} It was [MASK].")
    return (*causal_lms["gpt2"], "{text} It was [MASK]")


def _ids(tokenizer, words):
    ids = [word_token_ids(tokenizer, w) for c in words.values() for w in c]
    assert all(len(i) == 1 for i in ids), ids  # the references below read one token per word
    return [i[0] for i in ids]


def test_contextualized_calibration_divides_each_word_by_its_mean_probability_on_the_support_set(model):
    lm, tokenizer, template = model
    clf = PromptClassifier(lm, template, WORDS, tokenizer=tokenizer, word_calibration=True, progress=False).fit(SUPPORT)
    ids = _ids(tokenizer, WORDS)
    prior = _slot_probs(clf, tokenizer, SUPPORT)[:, ids].mean(0)  # (W,)
    assert list(clf.word_priors_) == [w for c in WORDS.values() for w in c]
    np.testing.assert_allclose(list(clf.word_priors_.values()), prior.log().numpy(), atol=1e-5)
    probs = _slot_probs(clf, tokenizer, X)[:, ids]
    calibrated = (probs / prior).log()  # (n, W): log p(w|x) - log prior(w)
    expected = np.stack([calibrated[:, :3].mean(1).numpy(), calibrated[:, 3:].mean(1).numpy()], 1)
    np.testing.assert_allclose(clf.decision_function(X), expected, atol=1e-4, rtol=0)
    plain = PromptClassifier(lm, template, WORDS, tokenizer=tokenizer, progress=False).fit()
    assert not np.allclose(plain.decision_function(X), clf.decision_function(X), atol=1e-3)


def test_frequency_refinement_drops_words_rare_at_the_slot_and_averages_the_rest(model, tmp_path):
    lm, tokenizer, template = model
    ids = _ids(tokenizer, WORDS)
    plain = PromptClassifier(lm, template, WORDS, tokenizer=tokenizer, progress=False).fit()
    vocab_prior = _slot_probs(plain, tokenizer, SUPPORT).mean(0)
    rank = torch.argsort(torch.argsort(vocab_prior))  # 0: the rarest token at the slot
    share = (int(rank[ids].min()) + 1.5) / len(vocab_prior)  # just enough to drop the rarest label word
    clf = PromptClassifier(lm, template, WORDS, tokenizer=tokenizer, word_refinement=share, progress=False).fit(SUPPORT)
    dropped = set(torch.argsort(vocab_prior)[: int(share * len(vocab_prior))].tolist())
    names = [w for c in WORDS.values() for w in c]
    kept = {c: [w for w in ws if ids[names.index(w)] not in dropped] for c, ws in WORDS.items()}
    assert clf.label_words_kept_ == kept
    assert 0 < sum(map(len, kept.values())) < len(names)  # the test means something: some go, some stay
    logp = _slot_probs(clf, tokenizer, X).log()
    expected = np.stack([logp[:, [ids[names.index(w)] for w in kept[c]]].mean(1).numpy() for c in WORDS], 1)
    np.testing.assert_allclose(clf.decision_function(X), expected, atol=1e-4, rtol=0)
    # saved and loaded: the kept words and priors come back, scores exactly
    clf.save_pretrained(tmp_path / "kpt")
    loaded = PromptClassifier.from_pretrained(tmp_path / "kpt", model=lm, tokenizer=tokenizer)
    assert loaded.label_words_kept_ == kept and loaded.word_priors_ == clf.word_priors_
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    with pytest.raises(ValueError, match="cannot change"):
        PromptClassifier.from_pretrained(tmp_path / "kpt", model=lm, tokenizer=tokenizer, word_refinement=0.01)


def test_refinement_that_empties_a_class_says_which_and_unlabeled_texts_are_a_support_set(bert):
    lm, tokenizer = bert
    with pytest.raises(ValueError, match="drops every label word of class '(neg|pos)'.*lower word_refinement"):
        PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_refinement=0.999,
                         progress=False).fit(SUPPORT)
    with pytest.raises(ValueError, match=r"call fit\(X\) \(labels are not needed\) or fit\(unlabeled=texts\)"):
        PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_calibration=True).fit()
    a = PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_calibration=True,
                         progress=False).fit(unlabeled=SUPPORT)
    b = PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_calibration=True,
                         progress=False).fit(SUPPORT)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    with pytest.raises(ValueError, match="aggregation='mean_logit' averages raw logits"):
        PromptClassifier(lm, "{text} It was [MASK].", Verbalizer({"neg": ["bad"], "pos": ["good"]}, aggregation="mean_logit"),
                         tokenizer=tokenizer, word_calibration=True).fit(SUPPORT)
    with pytest.raises(ValueError, match="scores with learned vectors instead"):
        PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_calibration=True,
                         train_mode="verbalizer", max_steps=1).fit(X, ["pos"] * len(X))
    with pytest.raises(ValueError, match=r"word_refinement must be"):
        PromptClassifier(lm, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, word_refinement=1.5).fit(SUPPORT)


def test_expansion_takes_the_nearest_whole_words_of_each_class(bert):
    lm, tokenizer = bert
    lm = copy.deepcopy(lm)
    emb = lm.get_input_embeddings().weight
    good, bad = word_token_ids(tokenizer, "good")[0], word_token_ids(tokenizer, "bad")[0]
    nice, awful = word_token_ids(tokenizer, "nice")[0], word_token_ids(tokenizer, "awful")[0]
    with torch.no_grad():  # "nice" sits next to "good", "awful" next to "bad"
        emb[nice] = emb[good] * 2.0 + 1e-3
        emb[awful] = emb[bad] * 3.0 + 1e-3
    words = expand_label_words(lm, {"neg": ["bad"], "pos": ["good"]}, tokenizer, per_class=5)
    assert list(words) == ["neg", "pos"]
    assert words["neg"][:2] == ["bad", "awful"] and words["pos"][:2] == ["good", "nice"]
    assert all(len(ws) == 5 for ws in words.values())
    everything = [w for ws in words.values() for w in ws]
    assert len({w.lower() for w in everything}) == len(everything)  # no word in two classes, no case variants
    for w in everything:
        assert len(word_token_ids(tokenizer, w)) == 1 and w.isalpha()
    # the expanded verbalizer is a verbalizer: it scores
    clf = PromptClassifier(lm, "{text} It was [MASK].", words, tokenizer=tokenizer, word_calibration=True,
                           word_refinement=0.3, progress=False).fit(SUPPORT)
    assert clf.predict(X).shape == (len(X),)
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        expand_label_words(lm, {"neg": ["bad"], "pos": ["good"]}, tokenizer, per_class=0)
