"""Class scores equal a plain ``model(**batch).logits`` computation, on six model families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptcls import PromptClassifier
from promptcls.verbalizer import word_token_ids

TEXTS = ["the food was good", "awful service , not cheap at all", "i love this film !"]
PAIRS = [("the movie was fun", "it was boring"), ("she liked the staff", "the staff are nice and fine")]
# single-token words and words of 2 and 3 tokens in every tokenizer family here
LABEL_WORDS = {"neg": ["terrible", "bad"], "pos": ["great", "fantastic", "good"]}


@torch.no_grad()
def word_log_prob(model, tokenizer, render, word: str) -> float:
    """log P(word) at an n-mask slot: sum of token log-probs from the full-vocabulary logits."""
    ids = word_token_ids(tokenizer, word)
    parts = render(tokenizer.mask_token * len(ids))
    batch = tokenizer(*parts, return_tensors="pt")
    logits = model(**batch).logits[0]  # (L, V)
    positions = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0]
    assert len(positions) == len(ids)
    log_probs = logits.log_softmax(-1)
    return float(sum(log_probs[p, t] for p, t in zip(positions, ids)))


def reference_scores(model, tokenizer, renders, label_words) -> np.ndarray:
    return np.array(
        [[np.mean([word_log_prob(model, tokenizer, r, w) for w in words]) for words in label_words.values()] for r in renders]
    )


def test_single_text_parity(family):
    name, model, tokenizer = family
    clf = PromptClassifier(model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer, batch_size=2).fit()
    got = clf.decision_function(TEXTS)
    renders = [lambda m, t=t: (f"{t} It was {m}.",) for t in TEXTS]
    want = reference_scores(model, tokenizer, renders, LABEL_WORDS)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert clf.model_.split_head, f"{name}: the head should run on mask rows only"


def test_pair_parity(family):
    name, model, tokenizer = family
    label_words = {"no": ["no", "terrible"], "yes": ["yes"], "maybe": ["maybe", "fantastic"]}
    clf = PromptClassifier(model, "{premise} ? [MASK] , {hypothesis}", label_words, tokenizer=tokenizer).fit()
    got = clf.decision_function(PAIRS)
    renders = [lambda m, a=a, b=b: (f"{a} ? {m} ,", b) for a, b in PAIRS]
    want = reference_scores(model, tokenizer, renders, label_words)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_pair_gets_segment_ids(bert):
    model, tokenizer = bert
    clf = PromptClassifier(model, "{premise} ? [MASK] , {hypothesis}", {"no": ["no"], "yes": ["yes"]}, tokenizer=tokenizer).fit()
    enc = clf.model_.encode([{"premise": "the film", "hypothesis": "it was fun"}])[0]
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    second = tokens.index("[SEP]") + 1
    assert tokens[second:] == ["it", "was", "fun", "[SEP]"]
    assert enc.token_type_ids == [0] * second + [1] * (len(tokens) - second)


@torch.no_grad()
def reference_iterative(model, tokenizer, text: str, word: str) -> float:
    """PET's max-first decoding, one example and one word at a time."""
    ids = word_token_ids(tokenizer, word)
    batch = tokenizer(f"{text} It was {tokenizer.mask_token * len(ids)}.", return_tensors="pt")
    input_ids = batch["input_ids"].clone()
    positions = (input_ids[0] == tokenizer.mask_token_id).nonzero()[:, 0].tolist()
    open_, total = set(range(len(ids))), 0.0
    while open_:
        lp = model(input_ids=input_ids, attention_mask=batch["attention_mask"], **(
            {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        )).logits[0].log_softmax(-1)
        j = max(open_, key=lambda k: lp[positions[k], ids[k]].item())
        total += lp[positions[j], ids[j]].item()
        input_ids[0, positions[j]] = ids[j]
        open_.remove(j)
    return total


@pytest.mark.parametrize("family_name", ["bert", "roberta"])
def test_iterative_decoding_parity(family_name, tokenizers, _models):
    from conftest import TOKENIZER_OF

    model, tokenizer = _models[family_name], tokenizers[TOKENIZER_OF[family_name]]
    clf = PromptClassifier(
        model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer, decoding="iterative", batch_size=2
    ).fit()
    got = clf.decision_function(TEXTS)
    want = np.array(
        [[np.mean([reference_iterative(model, tokenizer, t, w) for w in ws]) for ws in LABEL_WORDS.values()] for t in TEXTS]
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # and it is a different computation from parallel scoring for multi-token words
    parallel = PromptClassifier(model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer).fit()
    assert not np.allclose(parallel.decision_function(TEXTS), got)


def test_head_sees_only_mask_rows(bert):
    model, tokenizer = bert
    clf = PromptClassifier(model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer, batch_size=3).fit()
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        clf.decision_function(TEXTS)
    finally:
        handle.remove()
    vocab = model.get_output_embeddings().out_features
    # one forward per label-word length (1, 2 and 3 tokens): (B, n, V), never (B, L, V)
    assert sorted(shapes) == [(3, 1, vocab), (3, 2, vocab), (3, 3, vocab)]


def test_fallback_full_logits_gives_same_scores(roberta):
    model, tokenizer = roberta
    clf = PromptClassifier(model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer).fit()
    split = clf.decision_function(TEXTS)
    clf.model_.split_head = False
    np.testing.assert_allclose(clf.decision_function(TEXTS), split, atol=1e-5, rtol=0)


def test_unsplittable_model_falls_back(bert, caplog):
    """A model whose forward does more than head(base(...)) is detected by the probe."""
    model, tokenizer = bert

    class Shifted(type(model)):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + out.logits.mean(1, keepdim=True)  # mixes positions: not splittable
            return out

    odd = Shifted(model.config)
    odd.load_state_dict(model.state_dict())
    odd.eval()
    clf = PromptClassifier(odd, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer).fit()
    assert not clf.model_.split_head
    got = clf.decision_function(TEXTS[:1])
    renders = [lambda m: (f"{TEXTS[0]} It was {m}.",)]
    np.testing.assert_allclose(got, reference_scores(odd, tokenizer, renders, LABEL_WORDS), atol=1e-5, rtol=0)
