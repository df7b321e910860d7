"""Label-word search recovers words planted in a model."""

from __future__ import annotations

import pytest
from test_training import X, Y

from promptcls import PromptClassifier
from promptcls.search import search_label_words, whole_word_candidates


def test_whole_word_candidates_per_tokenizer_family(tokenizers):
    for name in ("wordpiece", "bpe", "unigram"):
        tok = tokenizers[name]
        ids, words = whole_word_candidates(tok)
        assert "great" in words and "the" in words, name
        assert all(w.isalpha() and len(w) >= 2 for w in words)
        assert not any(t.startswith("##") for t in tok.convert_ids_to_tokens(ids))  # no sub-word pieces
        assert "terrible" not in words  # two tokens in every tokenizer here
        assert all(tok.convert_ids_to_tokens(i) not in tok.all_special_tokens for i in ids)


def test_search_recovers_planted_words(trainable_bert):
    model, tokenizer = trainable_bert
    template = "{text} It was [MASK]."
    planted = {"neg": ["awful"], "pos": ["fun"]}
    # plant: prompt-based fine-tuning that makes the mask predict "fun" for positive and "awful" for negative
    clf = PromptClassifier(model, template, planted, tokenizer=tokenizer, train_mode="full", epochs=60,
                           train_batch_size=4, learning_rate=1e-2, progress=False).fit(X, Y)
    found = search_label_words((clf.model_.mlm, tokenizer), template, X, Y, k=2)
    assert found.classes == ("neg", "pos")
    assert found.words["neg"][0] == "awful" and found.words["pos"][0] == "fun"
    assert len(found.words["neg"]) == 2 and not set(found.words["neg"]) & set(found.words["pos"])
    # and the searched verbalizer classifies the training set
    searched = PromptClassifier(clf.model_.mlm, template, found, tokenizer=tokenizer).fit()
    assert list(searched.predict(X)) == Y


def test_search_errors(trainable_bert):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        search_label_words(trainable_bert, "{text} [MASK]", X, Y, k=0)
    with pytest.raises(ValueError, match="at least two classes"):
        search_label_words(trainable_bert, "{text} [MASK]", X, ["pos"] * len(X))
