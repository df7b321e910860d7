"""Packing prompts of mixed lengths end to end: the plan, the index maps, and scores equal to the padded batch."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from test_parity import LABEL_WORDS, reference_scores

from promptcls import PromptClassifier, TaskSet
from promptcls.encoding import micro_batches
from promptcls.packing import Packing, pack_width, packed_tokens, plan

# one long prompt and several short ones: padded to the longest, most of the batch is padding
TEXTS = ["good", "the staff are nice and fine , the food was good and the film was fun , i love this film and "
         "the service was fine", "awful", "i love this film !", "bad", "it was boring", "fun", "not cheap at all"]
# what the probe finds on the tiny models: relative-position attention (DeBERTa-v2) and ModernBERT's own
# masks take no block-diagonal mask, so they run padded (still exact)
PACKS = {"bert": True, "roberta": True, "albert": True, "distilbert": True, "electra": True,
         "deberta-v2": False, "modernbert": False}


def test_plan_places_every_prompt_once_within_the_width():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        width = pack_width(lengths)
        rows = plan(lengths, width)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= width for row in rows)
        assert width >= max(lengths)


def test_packed_tokens_only_where_packing_saves():
    assert packed_tokens([5]) is None  # one prompt: nothing to pack
    assert packed_tokens([40, 40, 39, 40]) is None  # nearly full padded rows: run as they are
    # 60 + 4 * 5 = 80 tokens: one row of 80 (all of them, under the 128 a row may take), against 5 * 60 padded
    assert packed_tokens([60, 5, 5, 5, 5]) == 80
    assert packed_tokens([60, 5, 5, 5, 5], min_saving=0.7) == 80 and packed_tokens([60, 5, 5, 5, 5], min_saving=0.75) is None
    assert packed_tokens([60] + [30] * 8) == 3 * 128  # rows of 128: 60 + 2 * 30, 4 * 30, 2 * 30 (against 9 * 60)


def test_packing_moves_every_token_and_back():
    lengths = [7, 2, 5, 1, 3]
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    packing = Packing.of(mask, min_saving=0.0)
    assert packing is not None
    values = torch.arange(5 * 7 * 3, dtype=torch.float).view(5, 7, 3) + 1  # (B, L, H), no zero
    packed = packing.pack(values)  # (N, W, H)
    assert packed.shape[1] == pack_width(lengths) == 18  # all 18 tokens fit one row: min(128, 18)
    assert int((packed != 0).any(-1).sum()) == sum(lengths)  # every real token once, padding zero
    back = packing.unpack(packed)
    real = mask.bool()
    torch.testing.assert_close(back[real], values[real], rtol=0, atol=0)
    # each token keeps its position within its prompt; tokens of different prompts never see each other
    for i, n in enumerate(lengths):
        spots = packing.back[i, :n]
        assert packing.positions.view(-1)[spots].tolist() == list(range(n))
    allowed = packing.attention(torch.float32)[:, 0] == 0  # (N, W, W)
    row = packing.segment[0]
    for q in range(len(row)):
        for k in range(len(row)):
            if row[q] >= 0 and row[k] >= 0:
                assert bool(allowed[0, q, k]) == bool(row[q] == row[k])


def test_left_padded_or_full_batches_are_not_packed():
    left = torch.tensor([[0, 0, 1], [1, 1, 1]])
    assert Packing.of(left, min_saving=0.0) is None
    assert Packing.of(torch.ones(4, 9, dtype=torch.long)) is None


@pytest.mark.parametrize("soft", [False, True])
def test_packed_scores_equal_padded_scores_and_plain_logits(family, soft, monkeypatch):
    name, model, tokenizer = family
    template = "[SOFT*2] {text} It was [MASK]." if soft else "{text} It was [MASK]."
    clf = PromptClassifier(model, template, LABEL_WORDS, tokenizer=tokenizer, batch_size=8).fit()
    assert clf.model_.packs is PACKS[name]
    runs = []
    original = Packing.run
    monkeypatch.setattr(Packing, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    packed = clf.decision_function(TEXTS)
    assert bool(runs) is PACKS[name]  # the batch did run packed where the model packs
    clf.model_.packs = False
    padded = clf.decision_function(TEXTS)
    np.testing.assert_allclose(packed, padded, atol=1e-5, rtol=0)
    if not soft:
        renders = [lambda m, t=t: (f"{t} It was {m}.",) for t in TEXTS]
        np.testing.assert_allclose(packed, reference_scores(model, tokenizer, renders, LABEL_WORDS), atol=1e-5, rtol=0)


def test_packed_sentence_pairs_keep_their_segment_ids(bert):
    model, tokenizer = bert
    pairs = [("good", "bad"), ("the staff are nice and fine , the food was good and the film was fun", "i love this film"),
             ("fun", "awful"), ("it was boring", "not cheap")]
    clf = PromptClassifier(model, "{premise} ? [MASK] , {hypothesis}", {"no": ["no"], "yes": ["yes", "fantastic"]},
                           tokenizer=tokenizer).fit()
    packed = clf.decision_function(pairs)
    clf.model_.packs = False
    np.testing.assert_allclose(packed, clf.decision_function(pairs), atol=1e-5, rtol=0)


def test_mixed_task_batches_pack_across_tasks(bert):
    model, tokenizer = bert
    a = PromptClassifier(model, "[SOFT*2] {text} It was [MASK].", {"n": ["bad"], "p": ["good"]}, tokenizer=tokenizer).fit()
    b = PromptClassifier(model, "{text} All in all [MASK].", {"x": ["terrible"], "y": ["great", "fantastic"]},
                         tokenizer=tokenizer).fit()
    tasks = TaskSet({"a": a, "b": b})
    which = ["a", "b"] * (len(TEXTS) // 2)
    joint = tasks.decision_function(TEXTS, which)
    for model_ in (a.model_, b.model_):
        model_.packs = False
    for text, task, scores in zip(TEXTS, which, joint):
        np.testing.assert_allclose(scores, tasks.classifiers[task].decision_function([text])[0], atol=1e-5, rtol=0)


def test_training_gradients_are_those_of_the_padded_batch(trainable_bert, monkeypatch):
    model, tokenizer = trainable_bert
    clf = PromptClassifier(copy.deepcopy(model), "{text} It was [MASK].", {"n": ["bad"], "p": ["good"]},
                           tokenizer=tokenizer).fit()
    runs = []
    original = Packing.run
    monkeypatch.setattr(Packing, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    prompt_model = clf.model_
    prompt_model.train()
    encoded = prompt_model.encode([{"text": t} for t in TEXTS])
    labels = torch.tensor([0, 1] * (len(TEXTS) // 2))
    grads = []
    for packs in (True, False):
        prompt_model.packs = packs
        prompt_model.zero_grad()
        torch.manual_seed(0)
        loss = torch.nn.functional.cross_entropy(prompt_model.class_scores(encoded), labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in prompt_model.named_parameters() if p.grad is not None})
    assert len(runs) == 1  # the packed pass, then the padded one
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


def test_one_packed_pass_replaces_micro_batches_where_it_is_cheaper():
    lengths = [60, 5, 5, 5, 5, 6, 7, 5]
    assert len(micro_batches(lengths, "cpu")) > 1  # padded: the long prompt runs apart
    assert micro_batches(lengths, "cpu", packs=True) == [list(range(len(lengths)))]
    even = [30, 31, 30, 29]
    assert micro_batches(even, "cpu", packs=True) == micro_batches(even, "cpu")
