"""Long texts: ``truncation="head"`` keeps the start, ``"tail"`` the end, ``"chunks"`` scores windows and averages
them; the template and its answer slot are never cut. Tiny masked and causal LMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_parts import causal_lms, lm  # noqa: F401 - fixtures

from promptcls import PromptClassifier
from promptcls.chunking import chunk_rows

WORDS = {"neg": ["bad"], "pos": ["good"]}
LONG = ("the food was great and the staff were nice but the service was poor and the price was not cheap at all "
        "it was terrible , really awful and boring in the end")
SHORT = "nice staff"


def clf_for(model, tokenizer, template, truncation, max_length=16):
    return PromptClassifier(model, template, WORDS, tokenizer=tokenizer, max_length=max_length, truncation=truncation,
                            progress=False).fit()


def test_tail_keeps_the_end_of_a_long_text_and_head_its_start(lm):
    name, model, tokenizer, template = lm
    head = clf_for(model, tokenizer, template, "head")
    tail = clf_for(model, tokenizer, template, "tail")
    kept_head = head.model_.encoding.truncate([{"text": LONG}])[0]["text"]
    kept_tail = tail.model_.encoding.truncate([{"text": LONG}])[0]["text"]
    assert LONG.startswith(kept_head) and LONG.endswith(kept_tail) and kept_head != kept_tail
    assert 0 < len(kept_tail) < len(LONG)
    full = clf_for(model, tokenizer, template, "head", max_length=None)
    # the tail-cut row scores as the cut text does when nothing needs cutting
    np.testing.assert_allclose(tail.decision_function([LONG]), full.decision_function([kept_tail]), atol=1e-5)
    np.testing.assert_allclose(head.decision_function([LONG]), full.decision_function([kept_head]), atol=1e-5)
    np.testing.assert_allclose(tail.decision_function([SHORT]), head.decision_function([SHORT]), atol=1e-6)
    enc = tail.model_.encode([{"text": LONG}])[0]
    assert len(enc.input_ids) <= 16


def test_chunks_average_the_windows_that_cover_the_whole_text(lm):
    name, model, tokenizer, template = lm
    chunks = clf_for(model, tokenizer, template, "chunks")
    windows, owner = chunk_rows(chunks.model_.encoding, [{"text": SHORT}, {"text": LONG}])
    assert owner[0] == 0 and windows[0] == {"text": SHORT} and set(owner[1:]) == {1} and len(owner) > 3
    words = [w for w in LONG.split()]
    covered = " ".join(w["text"] for w in windows[1:])
    assert all(w in covered for w in words) and windows[1]["text"].startswith("the food")
    assert LONG.endswith(windows[-1]["text"])
    full = clf_for(model, tokenizer, template, "head", max_length=None)
    scored = chunks.model_.encoding.truncate(windows[1:])  # a window re-tokenized in context may lose a token
    assert all(len(a["text"]) >= len(b["text"]) - 12 for a, b in zip(scored, windows[1:]))
    lp = torch.tensor(full.decision_function(scored)).log_softmax(-1)
    expected = lp.mean(0)
    got = chunks.decision_function([SHORT, LONG])
    np.testing.assert_allclose(got[1], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(got[0], full.decision_function([SHORT])[0], atol=1e-5)
    assert chunks.predict_proba([LONG]).shape == (1, 2)


def test_truncation_is_checked(bert):
    model, tokenizer = bert
    with pytest.raises(ValueError, match="truncation='middle' is not one of 'head', 'tail', 'chunks'"):
        clf_for(model, tokenizer, "{text} It was [MASK].", "middle")
