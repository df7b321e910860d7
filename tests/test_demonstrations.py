"""Demonstrations in context (LM-BFF; in-context learning with a causal LM) on tiny masked and causal LMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_parts import causal_lms  # noqa: F401 - fixtures

from promptcls import PromptClassifier
from promptcls.template import DEMOS_KEY

X = ["the food was great", "it was terrible , really awful and boring", "nice staff",
     "the service was poor and the price was not cheap at all", "fun film", "bad food"]
Y = ["pos", "neg", "pos", "neg", "pos", "neg"]
WORDS = {"neg": ["bad"], "pos": ["good"]}
QUERIES = ["a fun and nice film", "poor food", "the staff was great"]


def demo_clf(model, tokenizer, template="{text} It was [MASK]. [DEMOS]", **kw):
    kw = {"progress": False, "demonstrations": "random", **kw}
    return PromptClassifier(model, template, WORDS, tokenizer=tokenizer, **kw).fit(X, Y)


def test_demonstrations_render_where_the_template_says(bert):
    model, tokenizer = bert
    clf = demo_clf(model, tokenizer, "{text} [DEMOS] It was [MASK].")
    filled, owner = clf._demonstrated([{"text": q} for q in QUERIES])
    assert owner == [0, 1, 2]
    for row in filled:  # one example per class, each the template filled with its class's word
        assert row[DEMOS_KEY].count(" It was bad.") == 1 and row[DEMOS_KEY].count(" It was good.") == 1
        assert sum(f"{x} It was" in row[DEMOS_KEY] for x in X) == 2 and "  " not in row[DEMOS_KEY]
    enc = clf.model_.encode(filled[:1])[0]
    text = tokenizer.decode(enc.input_ids)
    assert text.index(QUERIES[0]) < text.index(filled[0][DEMOS_KEY].split(".")[0].lower()) < text.rindex("[MASK]")
    # the scores are those of the same prompt with the demonstrations written into it
    plain = PromptClassifier(model, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, progress=False).fit()
    np.testing.assert_allclose(clf.decision_function(QUERIES),
                               plain.decision_function([f"{r['text']} {r[DEMOS_KEY]}" for r in filled]), atol=1e-5)


def test_several_sets_average_their_log_probabilities(bert):
    model, tokenizer = bert
    clf = demo_clf(model, tokenizer, "{text} [DEMOS] It was [MASK].", demonstration_sets=3)
    filled, owner = clf._demonstrated([{"text": QUERIES[0]}], 3)
    assert owner == [0, 0, 0] and len({r[DEMOS_KEY] for r in filled}) > 1  # different draws
    plain = PromptClassifier(model, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, progress=False).fit()
    lp = torch.tensor(plain.decision_function([f"{r['text']} {r[DEMOS_KEY]}" for r in filled]))
    np.testing.assert_allclose(clf.decision_function(QUERIES[:1])[0], lp.log_softmax(-1).mean(0).numpy(), atol=1e-5)
    # the same row gets the same draws in any batch
    np.testing.assert_allclose(clf.decision_function(QUERIES)[0], clf.decision_function(QUERIES[:1])[0], atol=1e-6)


def test_an_example_is_never_its_own_demonstration(bert):
    model, tokenizer = bert
    clf = demo_clf(model, tokenizer, demonstration_sets=8)
    pool = clf.demonstration_pool_
    filled, owner = clf._demonstrated([{"text": x} for x in X], 8)
    for row, i in zip(filled, owner):
        assert pool.texts[i] not in row[DEMOS_KEY]  # its own rendering ("<text> It was <word>.") never appears


def test_the_query_and_its_mask_survive_a_short_max_length(bert):
    model, tokenizer = bert
    clf = demo_clf(model, tokenizer, max_length=14)
    filled, _ = clf._demonstrated([{"text": "nice staff"}])
    enc = clf.model_.encode(filled)[0]
    assert len(enc.input_ids) <= 14 and enc.input_ids[enc.mask_pos[0]] == tokenizer.mask_token_id
    kept = clf.model_.encoding.truncate(filled)[0]
    assert kept["text"] == "nice staff" and len(kept[DEMOS_KEY]) < len(filled[0][DEMOS_KEY])  # demos cut first


def test_similar_demonstrations_are_the_most_similar_of_each_class(bert):
    model, tokenizer = bert
    clf = demo_clf(model, tokenizer, demonstrations="similar")
    vectors = clf._sentence_embeddings(X + QUERIES[:1])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors[:-1] @ vectors[-1]
    filled, _ = clf._demonstrated([{"text": QUERIES[0]}])
    for label in ("pos", "neg"):
        members = [i for i, y in enumerate(Y) if y == label]
        top = sorted(members, key=lambda i: -sims[i])[: len(members) // 2]
        assert any(X[i] in filled[0][DEMOS_KEY] for i in top)


def test_in_context_learning_on_a_causal_lm_saves_and_loads(causal_lms, tmp_path):
    model, tokenizer = causal_lms["llama"]
    clf = demo_clf(model, tokenizer, "Review: {text} Sentiment: [MASK]", demonstration_sets=2)
    assert clf.template_.source.startswith("[DEMOS]\n")  # before the prompt: the slot ends it
    filled, _ = clf._demonstrated([{"text": QUERIES[0]}])
    assert filled[0][DEMOS_KEY].count("\n") == 1 and "Sentiment: bad" in filled[0][DEMOS_KEY]
    got = clf.decision_function(QUERIES)
    clf.save_pretrained(tmp_path / "icl")
    loaded = PromptClassifier.from_pretrained(tmp_path / "icl", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(QUERIES), got)
    with pytest.raises(ValueError, match="draws from labelled examples: call fit\\(X, y\\)"):
        PromptClassifier(model, "{text} [MASK]", WORDS, tokenizer=tokenizer, demonstrations="random").fit()
    with pytest.raises(ValueError, match="demonstrations='nearest' is not one of None, 'random', 'similar'"):
        PromptClassifier(model, "{text} [MASK]", WORDS, tokenizer=tokenizer, demonstrations="nearest").fit(X, Y)


def test_training_with_demonstrations(trainable_bert):
    model, tokenizer = trainable_bert
    clf = PromptClassifier(model, "{text} It was [MASK]. [DEMOS]", WORDS, tokenizer=tokenizer, train_mode="head",
                           demonstrations="random", max_steps=5, progress=False).fit(X, Y, eval_set=(X, Y))
    assert clf.history_ and clf.predict(QUERIES).shape == (3,)


def test_similar_demonstrations_on_a_causal_lm_without_a_pad_token(causal_lms):
    model, tokenizer = causal_lms["llama"]
    assert tokenizer.pad_token is None  # as many real causal tokenizers
    clf = demo_clf(model, tokenizer, "Review: {text} Sentiment: [MASK]", demonstrations="similar")
    texts = X + QUERIES
    vectors = clf._sentence_embeddings(texts)  # batched: rows of different lengths
    with torch.no_grad():
        for text, vector in zip(texts, vectors):  # each alone, no padding: the mean of its last hidden states
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            alone = model.base_model(input_ids=ids)[0].float().mean(1)[0].numpy()
            np.testing.assert_allclose(vector, alone, atol=1e-5)
    filled, _ = clf._demonstrated([{"text": QUERIES[0]}])
    assert "Sentiment: bad" in filled[0][DEMOS_KEY] and "Sentiment: good" in filled[0][DEMOS_KEY]
