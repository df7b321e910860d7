"""Encoding: slots located by the tokenizer, truncation of text fields only, dynamic padding."""

from __future__ import annotations

import numpy as np
import pytest
from test_parity import LABEL_WORDS, reference_scores

from promptcls import PromptClassifier
from promptcls.encoding import collate

WORDS = "the food was good but the service was poor and the price was not cheap".split()


def long_text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


@pytest.mark.parametrize("family_name", ["bert", "roberta", "albert"])
def test_long_texts_keep_template_and_mask(family_name, tokenizers, _models):
    from conftest import TOKENIZER_OF

    model, tokenizer = _models[family_name], tokenizers[TOKENIZER_OF[family_name]]
    max_length = 24
    texts = [long_text(10 * max_length), long_text(10 * max_length, 3), "the food was good"]
    clf = PromptClassifier(model, "{text} It was [MASK].", LABEL_WORDS, tokenizer=tokenizer, max_length=max_length).fit()

    encoded = clf.model_.encode([{"text": t} for t in texts])
    n = clf.model_.label_words.max_tokens  # the slot is as wide as the longest label word
    tail = tokenizer(" It was " + tokenizer.mask_token * n + ".", add_special_tokens=False)["input_ids"]
    for e in encoded:
        assert len(e.input_ids) <= max_length
        assert [e.input_ids[p] for p in e.mask_pos] == [tokenizer.mask_token_id] * n
        assert e.input_ids[-len(tail) - 1 : -1] == tail  # " It was [MASK]...[MASK]." before the closing token
    assert len(encoded[0].input_ids) >= max_length - 1  # not shortened more than needed

    shortened = clf.model_.encoding.truncate([{"text": t} for t in texts])
    for before, after in zip(texts, shortened):
        assert before.startswith(after["text"])
    assert shortened[2]["text"] == texts[2]
    assert len(shortened[0]["text"]) < len(texts[0]) / 5

    got = clf.decision_function(texts)
    np.testing.assert_allclose(got, clf.decision_function([r["text"] for r in shortened]), atol=1e-6, rtol=0)
    renders = [lambda m, t=r["text"]: (f"{t} It was {m}.",) for r in shortened]
    np.testing.assert_allclose(got, reference_scores(model, tokenizer, renders, LABEL_WORDS), atol=1e-5, rtol=0)


def test_pair_truncates_longest_field_first(bert):
    model, tokenizer = bert
    clf = PromptClassifier(
        model, "{premise} ? [MASK] , {hypothesis}", {"no": ["no"], "yes": ["yes"]}, tokenizer=tokenizer, max_length=20
    ).fit()
    row = {"premise": long_text(200), "hypothesis": "it was fun"}
    (short,) = clf.model_.encoding.truncate([row])
    assert short["hypothesis"] == "it was fun"
    assert row["premise"].startswith(short["premise"])
    (enc,) = clf.model_.encode([row])
    assert len(enc.input_ids) == 20
    assert tokenizer.convert_ids_to_tokens(enc.input_ids[-5:]) == ["[SEP]", "it", "was", "fun", "[SEP]"]


def test_template_longer_than_max_length_is_an_error(bert):
    model, tokenizer = bert
    # refused at fit, not at the first predict
    clf = PromptClassifier(model, "{text} It was [SOFT*20] [MASK].", {"a": "good", "b": "bad"}, tokenizer=tokenizer, max_length=12)
    with pytest.raises(ValueError, match=r"20 soft tokens, more than max_length=12"):
        clf.fit()
    clf = PromptClassifier(model, "{text} It was really very quite good [SOFT*4] [MASK].", {"a": "good", "b": "bad"},
                           tokenizer=tokenizer, max_length=12)
    with pytest.raises(ValueError, match=r"needs 14 tokens with empty text fields .* more than max_length=12"):
        clf.fit()


def test_text_with_a_mask_token_is_an_error(bert):
    model, tokenizer = bert
    clf = PromptClassifier(model, "{text} It was [MASK].", {"a": "good", "b": "bad"}, tokenizer=tokenizer).fit()
    with pytest.raises(ValueError, match=r"row 1: field 'text' contains the mask token '\[MASK\]'"):
        clf.predict(["fine", "it was [MASK] ."])


def test_collate_pads_dynamically(bert):
    model, tokenizer = bert
    clf = PromptClassifier(model, "{text} It was [MASK].", {"a": "good", "b": "bad"}, tokenizer=tokenizer).fit()
    encoded = clf.model_.encode([{"text": "the food"}, {"text": "the food was good and the price was cheap"}])
    batch = collate(encoded, tokenizer.pad_token_id)
    longest = max(len(e.input_ids) for e in encoded)
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"].sum(1).tolist() == [len(e.input_ids) for e in encoded]
    assert (batch["input_ids"][0, len(encoded[0].input_ids) :] == tokenizer.pad_token_id).all()


def test_with_masks_equals_direct_encoding(roberta):
    model, tokenizer = roberta
    clf = PromptClassifier(model, "[SOFT] {text} [SOFT*2] It was [MASK].", LABEL_WORDS, tokenizer=tokenizer).fit()
    (wide,) = clf.model_.encode([{"text": "the food was good"}])
    narrow = wide.with_masks(1)
    direct = tokenizer(f"{tokenizer.mask_token} the food was good {tokenizer.mask_token * 2} It was {tokenizer.mask_token}.")
    assert narrow.input_ids == direct["input_ids"]
    masks = [i for i, t in enumerate(direct["input_ids"]) if t == tokenizer.mask_token_id]
    assert narrow.soft_pos == masks[:3] and narrow.mask_pos == masks[3:]


def _split_cost(groups, lengths, overhead):
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]


def test_length_groups_is_the_cheapest_split():
    from promptcls.encoding import length_groups

    rng = np.random.default_rng(0)
    for _ in range(40):
        lengths = rng.integers(3, 60, size=int(rng.integers(1, 8))).tolist()
        overhead = float(rng.choice([0, 5, 30, 200]))
        groups = length_groups(lengths, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each prompt once
        best = min(_split_cost(p, lengths, overhead) for p in _partitions(list(range(len(lengths)))))
        assert _split_cost(groups, lengths, overhead) == best, (lengths, overhead, groups)
    assert length_groups([9, 40, 10, 41], 1e9) == [[0, 1, 2, 3]]  # a pass costs more than any padding
    assert length_groups([9, 40, 10, 41], 5) == [[0, 2], [1, 3]]
    assert length_groups([7, 3, 7, 3], 0) == [[1, 3], [0, 2]]  # shortest first
    assert length_groups([], 10) == []


def test_scoring_in_micro_batches_gives_the_same_scores(bert, monkeypatch):
    model, tokenizer = bert
    texts = ["fun", "the food was nice and the staff were kind, and the room was clean and warm", "ok",
             "i hate this place", "awful awful awful awful awful awful awful awful awful awful awful awful", "good"]
    passes = []
    hook = model.base_model.register_forward_pre_hook(lambda m, args, kwargs: passes.append(1), with_kwargs=True)
    try:
        scores = {}
        for overhead in (1e12, 0):
            monkeypatch.setattr("promptcls.encoding.CPU_PASS_OVERHEAD", overhead)
            clf = PromptClassifier(model, "{text} It was [MASK].", {"neg": ["bad", "terrible"], "pos": ["good"]},
                                   tokenizer=tokenizer, progress=False).fit()
            passes.clear()
            scores[overhead] = (clf.decision_function(texts), len(passes))
    finally:
        hook.remove()
    (whole, whole_passes), (split, split_passes) = scores[1e12], scores[0]
    assert split_passes > whole_passes
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
