"""The prototypical verbalizer (``train_mode="proto"``, ProtoVerb): class prototypes of the slot states, on tiny
masked and causal LMs, against plain ``model(...)`` hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_parts import WORDS, X, Y, causal_lms, fit, lm, zero_shot  # noqa: F401 - fixtures

from promptcls import PromptClassifier, TaskSet
from promptcls.parts import parse_train_mode
from promptcls.parts.prototypes import Prototypes


def _reference_states(clf, tokenizer, template, family):
    """The last hidden state at the slot, from a plain forward of each filled prompt, one at a time."""
    lm = clf.model_.lm
    states = []
    for text in X:
        if family == "masked":
            ids = tokenizer(template.replace("{text}", text).replace("[MASK]", tokenizer.mask_token), return_tensors="pt")
            where = int((ids["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
        else:
            ids = tokenizer(template.replace("{text}", text).replace(" [MASK]", ""), return_tensors="pt")
            where = ids["input_ids"].shape[1] - 1
        with torch.no_grad():
            out = lm(**ids, output_hidden_states=True)
        states.append(out.hidden_states[-1][0, where])
    return torch.stack(states)


def test_prototype_scores_are_cosines_of_the_projected_plain_states(lm):
    name, model, tokenizer, template = lm
    clf = fit(model, tokenizer, template, "proto", learning_rate=1e-2)
    family = clf.model_.family
    states = _reference_states(clf, tokenizer, template, family)
    p = clf.model_.prototypes
    v = torch.nn.functional.normalize(states.float() @ p.projection.weight.T, dim=-1)
    c = torch.nn.functional.normalize(p.prototypes, dim=-1)
    expected = (v @ c.T).detach().numpy()
    got = clf.decision_function(X)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    one = np.stack([clf.decision_function([x])[0] for x in X])
    np.testing.assert_allclose(got, one, atol=1e-5, rtol=0)  # padding changes nothing
    assert np.all(np.abs(got) <= 1 + 1e-6)


def test_the_loss_is_protoverbs_instance_prototype_plus_instance_instance_loss():
    torch.manual_seed(0)
    proto = Prototypes(hidden=6, classes=3, dim=4, seed=1)
    states = torch.randn(7, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 1, 2])
    proto.requires_grad_(False)
    v = torch.nn.functional.normalize(states @ proto.projection.weight.T, dim=-1)
    c = torch.nn.functional.normalize(proto.prototypes, dim=-1)
    # instance-prototype: -log softmax of the cosines at the own class, averaged
    to_protos = np.mean([-float(torch.log(torch.exp(v[i] @ c[y[i]]) / torch.exp(v[i] @ c.T).sum())) for i in range(7)])
    # instance-instance: every same-class pair (i, j), -log exp s_ij / sum_k exp s_ik, averaged over the pairs
    pairs = [(i, j) for i in range(7) for j in range(7) if y[i] == y[j]]
    between = np.mean([-float(torch.log(torch.exp(v[i] @ v[j]) / torch.exp(v[i] @ v.T).sum())) for i, j in pairs])
    assert float(proto.loss(states, y)) == pytest.approx(to_protos + between, abs=1e-5)
    # class weights weigh the instance-prototype term as the cross-entropy formula says
    w = torch.tensor([1.0, 2.0, 0.5])
    weighted = np.mean([float(w[y[i]]) * -float(torch.log(torch.exp(v[i] @ c[y[i]]) / torch.exp(v[i] @ c.T).sum()))
                        for i in range(7)])
    assert float(proto.loss(states, y, w)) == pytest.approx(weighted + between, abs=1e-5)


def test_training_moves_only_the_prototypes_and_the_save_holds_them(lm, tmp_path):
    from promptcls.training import trainable_parameters

    name, model, tokenizer, template = lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf = fit(model, tokenizer, template, "proto", learning_rate=1e-2, proto_dim=8)
    assert sorted(clf.trained_parameters_) == ["prototypes.projection.weight", "prototypes.prototypes"]
    model_side, prompt_side = trainable_parameters(clf.model_, clf.parts_)
    assert set(model_side) | set(prompt_side) == set(clf.trained_parameters_)
    for n, p in clf.model_.named_parameters():
        short = n.split(".", 1)[1]
        if not n.startswith("prototypes.") and short in before:
            assert torch.equal(p, before[short]), n
    fresh = Prototypes(clf.model_.hidden_size(), 2, 8, seed=clf.random_state_)
    assert not torch.equal(fresh.prototypes, clf.model_.prototypes.prototypes)  # training moved them
    clf.save_pretrained(tmp_path / "saved")
    stored = load_file(tmp_path / "saved" / "trained.safetensors")
    stored.pop("calibration", None)
    hidden = clf.model_.hidden_size()
    assert {k: tuple(v.shape) for k, v in stored.items()} == {
        "prototypes.projection.weight": (8, hidden), "prototypes.prototypes": (2, 8)}
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    assert loaded.proto_dim == 8
    with pytest.raises(ValueError, match="cannot change"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer, proto_dim=16)


def test_a_cached_encoder_and_a_running_one_train_the_same_prototypes(bert):
    """Prototypes trained alone read cached mask states: the same states, so the same loss, as the encoder's."""
    model, tokenizer = bert
    clf = fit(model, tokenizer, "{text} It was [MASK].", "proto")
    pm = clf.model_
    encoded = pm.encode([{"text": x} for x in X])
    from promptcls.training import _HeadCache

    cache = _HeadCache(pm, encoded, 4)
    idx = torch.arange(len(X))
    y = torch.tensor([0 if t == "neg" else 1 for t in Y])
    np.testing.assert_allclose(cache.slot_states(pm, idx).numpy(), pm.slot_states(encoded).detach().numpy(), atol=1e-5)
    assert float(pm.prototypes.loss(cache.slot_states(pm, idx), y)) == pytest.approx(
        float(pm.prototypes.loss(pm.slot_states(encoded), y)), abs=1e-5)


def test_a_frozen_causal_lm_caches_its_slot_states_for_prototypes(causal_lms):
    from promptcls.training import _StateCache

    model, tokenizer = causal_lms["llama"]
    clf = fit(model, tokenizer, "{text} It was [MASK]", "proto")
    pm = clf.model_
    encoded = pm.encode([{"text": x} for x in X])
    cache = _StateCache(pm, encoded, 4)
    with torch.no_grad():
        np.testing.assert_allclose(cache.slot_states(pm, torch.arange(len(X))).numpy(),
                                   pm.slot_states(encoded).numpy(), atol=1e-5)
    # with a soft prompt the LM's states move as it trains: no cache, and the prompt trains too
    both = fit(model, tokenizer, "[SOFT*2] {text} It was [MASK]", "prompt+proto", learning_rate=1e-2,
               prompt_learning_rate=1e-2)
    assert sorted(both.trained_parameters_) == ["prototypes.projection.weight", "prototypes.prototypes",
                                                "soft_prompt.embedding"]


def test_the_ensemble_averages_z_scored_prototype_and_label_word_scores(bert):
    model, tokenizer = bert
    words = {"neg": ["bad"], "pos": ["good"], "mid": ["nice"]}
    y = ["pos", "neg", "mid", "neg", "pos", "mid"]
    manual = PromptClassifier(model, "{text} It was [MASK].", words, tokenizer=tokenizer, progress=False).fit()
    clf = PromptClassifier(model, "{text} It was [MASK].", words, tokenizer=tokenizer, train_mode="proto",
                           proto_ensemble=True, max_steps=2, progress=False).fit(X, y)
    z = lambda s: (s - s.mean(1, keepdims=True)) / s.std(1, ddof=1, keepdims=True)  # noqa: E731
    rows = clf.model_.encode([{"text": x} for x in X])
    with torch.no_grad():
        cos = clf.model_.prototypes.similarities(clf.model_.slot_states(rows)).numpy()
    expected = (z(cos) + z(manual.decision_function(X))) / 2
    np.testing.assert_allclose(clf.decision_function(X), expected, atol=1e-5, rtol=0)


def test_protoverb_errors_name_the_fix(bert, causal_lms):
    model, tokenizer = bert
    with pytest.raises(ValueError, match="proto_ensemble=True .* 2 classes .* leave proto_ensemble=False"):
        fit(model, tokenizer, "{text} It was [MASK].", "proto", proto_ensemble=True)
    with pytest.raises(ValueError, match="'head' would not train"):
        parse_train_mode("head+proto")
    with pytest.raises(ValueError, match="two learned verbalizers"):
        parse_train_mode("proto+verbalizer")
    clf = PromptClassifier(model, "{text} It was [MASK].", WORDS, tokenizer=tokenizer, train_mode="proto",
                           max_steps=1, progress=False)
    with pytest.raises(ValueError, match="does not take soft_labels"):
        clf.fit(X, Y, soft_labels=np.full((len(X), 2), 0.5))
    gpt2, gtok = causal_lms["gpt2"]
    with pytest.raises(ValueError, match="score_suffix=True"):
        fit(gpt2, gtok, "{text} It was [MASK] indeed.", "proto", score_suffix=True)
    with pytest.raises(TypeError, match="proto_ensemble must be True or False"):
        fit(model, tokenizer, "{text} It was [MASK].", "proto", proto_ensemble="yes")


def test_a_prototype_task_joins_the_shared_encoder_pass(bert, tmp_path):
    model, tokenizer = bert
    proto = fit(model, tokenizer, "{text} It was [MASK].", "proto")
    proto.save_pretrained(tmp_path / "proto")
    tasks = TaskSet({"proto": PromptClassifier.from_pretrained(tmp_path / "proto", model=model, tokenizer=tokenizer),
                     "plain": zero_shot(model, tokenizer, "{text} All in all [MASK].")})
    assert len(tasks.groups_) == 1  # one forward for both
    mixed = ["proto", "plain", "proto", "plain", "proto", "plain"]
    got = tasks.decision_function(X, mixed)
    for i, (task, x) in enumerate(zip(mixed, X)):
        np.testing.assert_allclose(got[i], tasks.classifiers[task].decision_function([x])[0], atol=1e-5, rtol=0)
