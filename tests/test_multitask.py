"""Many tasks on one base model (promptcls.multitask): mixed-task batches give each classifier's own scores,
in input order; tasks that leave the encoder as it is share one forward; the base weights are held once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from test_causal import make_causal, make_tokenizer

import promptcls.multitask as multitask
from promptcls import PromptClassifier, TaskSet

X = ["the food was great", "it was terrible , really awful and boring", "nice staff",
     "the service was poor and the price was not cheap at all", "fun film", "bad food"]
Y = ["pos", "neg", "pos", "neg", "pos", "neg"]
WORDS = {"neg": ["bad", "terrible"], "pos": ["good", "fantastic"]}  # single- and multi-token words
TOPICS = {"food": ["food"], "staff": ["staff", "service"], "film": ["film"]}


def fit(model, tokenizer, template, words=WORDS, mode="none", **kw):
    kw = {"max_steps": 2, "train_batch_size": 3, "progress": False, "learning_rate": 1e-2,
          "prompt_learning_rate": 1e-2, **kw}
    clf = PromptClassifier(model, template, words, tokenizer=tokenizer, train_mode=mode, **kw)
    if mode == "none":
        return clf.fit()
    return clf.fit(X, Y if words is WORDS else ["food", "staff", "staff", "staff", "film", "food"])


def masked_tasks(model, tokenizer):
    """Saveable tasks of every kind on one masked LM: the first five leave the encoder as it is."""
    return {
        "zero": fit(model, tokenizer, "{text} It was [MASK]."),
        "topic": fit(model, tokenizer, "[MASK] : {text}", TOPICS, calibration=True),
        "soft": fit(model, tokenizer, "[SOFT*2] {text} It was [MASK].", mode="prompt"),
        "head": fit(model, tokenizer, "{text} All in all [MASK].", mode="head"),
        "head_soft": fit(model, tokenizer, "{text} [SOFT] [MASK].", mode="head+prompt"),
        "lora": fit(model, tokenizer, "{text} It was [MASK].", mode="lora"),
        "prefix": fit(model, tokenizer, "{text} It was [MASK].", mode="prefix"),
        "full": fit(model, tokenizer, "{text} It was [MASK].", mode="full"),
    }


def reloaded(originals: dict, tmp_path, model, tokenizer) -> TaskSet:
    """The classifiers saved and loaded back onto one copy of ``model`` (trained ones own a copy until then)."""
    for name, clf in originals.items():
        clf.save_pretrained(tmp_path / name)
    return TaskSet.from_pretrained({n: tmp_path / n for n in originals}, model=model, tokenizer=tokenizer)


def mixed(n_tasks: list[str], k: int = 18) -> tuple[list[str], list[str]]:
    """k rows cycling over the texts, their tasks cycling over ``n_tasks`` at another period."""
    texts = [X[i % len(X)] for i in range(k)]
    return texts, [n_tasks[(3 * i + i // 4) % len(n_tasks)] for i in range(k)]


def assert_own_scores(tasks: TaskSet, originals: dict, texts, task_of):
    got = tasks.decision_function(texts, task_of)
    for i, (text, t) in enumerate(zip(texts, task_of)):
        np.testing.assert_allclose(got[i], originals[t].decision_function([text])[0], atol=1e-5, rtol=1e-5,
                                   err_msg=f"row {i} ({t})")
    labels = tasks.predict(texts, task_of)
    assert [originals[t].predict([x])[0] for x, t in zip(texts, task_of)] == list(labels)


def test_mixed_masked_tasks_score_as_each_classifier_does_in_input_order(bert, tmp_path):
    model, tokenizer = bert
    originals = masked_tasks(model, tokenizer)
    tasks = reloaded(originals, tmp_path, model, tokenizer)
    joined = ["zero", "topic", "soft", "head", "head_soft"]
    assert sorted(tasks.groups_, key=len)[-1] == joined  # the encoder-changing tasks stand alone
    assert sorted(len(g) for g in tasks.groups_) == [1, 1, 1, 5]
    texts, task_of = mixed(list(originals))
    assert_own_scores(tasks, originals, texts, task_of)


def test_tasks_that_leave_the_encoder_run_in_one_encoder_forward(bert, monkeypatch, tmp_path):
    model, tokenizer = bert
    originals = {k: v for k, v in masked_tasks(model, tokenizer).items() if k in ("zero", "topic", "soft", "head")}
    tasks = reloaded(originals, tmp_path, model, tokenizer)
    texts, task_of = mixed(list(originals), 8)
    monkeypatch.setattr(multitask, "length_batches", lambda lengths, size, device, packs=False: [list(range(len(lengths)))])
    calls = []
    bases = {id(m._forward_hooks): m for m in (clf.model_.mlm.base_model for clf in originals.values())}  # views share
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in bases.values()]
    try:
        got = tasks.decision_function(texts, task_of)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 1  # one encoder forward for rows of four tasks
    for i, (text, t) in enumerate(zip(texts, task_of)):
        np.testing.assert_allclose(got[i], originals[t].decision_function([text])[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def causal_pair():
    plain, bos = make_tokenizer(bos=False), make_tokenizer(bos=True)
    return {"gpt2": (make_causal("gpt2", plain), plain), "llama": (make_causal("llama", bos), bos)}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_mixed_causal_tasks_score_as_each_classifier_does(causal_pair, name, monkeypatch, tmp_path):
    model, tokenizer = causal_pair[name]
    originals = {
        "zero": fit(model, tokenizer, "{text} It was [MASK]"),
        "one_token": fit(model, tokenizer, "Review: {text} Topic: [MASK]", TOPICS),
        "suffix": fit(model, tokenizer, "{text} It was [MASK] !", score_suffix=True),
        "soft": fit(model, tokenizer, "[SOFT*2] {text} It was [MASK]", mode="prompt"),
        "prefix": fit(model, tokenizer, "{text} It was [MASK]", mode="prefix"),
    }
    assert sorted(len(g) for g in TaskSet(originals).groups_) == [1, 1, 3]  # trained ones own a copy
    tasks = reloaded(originals, tmp_path, model, tokenizer)
    assert sorted(len(g) for g in tasks.groups_) == [1, 4]
    texts, task_of = mixed(list(originals))
    assert_own_scores(tasks, originals, texts, task_of)
    calls = []
    monkeypatch.setattr(multitask, "length_batches", lambda lengths, size, device, packs=False: [list(range(len(lengths)))])
    lms = {id(m._forward_hooks): m for m in (tasks.classifiers[t].model_.lm for t in ("zero", "soft"))}
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in lms.values()]
    try:
        joined = [t for t in task_of if t != "prefix"]
        got = tasks.decision_function([x for x, t in zip(texts, task_of) if t != "prefix"], joined)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 1  # one forward of the LM for rows of four tasks
    np.testing.assert_allclose(got[0], originals[joined[0]].decision_function([texts[0]])[0], atol=1e-5)


def test_tasks_on_one_base_model_hold_its_weights_once(bert, tmp_path):
    model, tokenizer = bert
    tasks = reloaded(masked_tasks(model, tokenizer), tmp_path, model, tokenizer)
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for clf in tasks.classifiers.values() for p in clf.model_.parameters()}
    base = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())
    saved = sum(t.numel() * t.element_size() for name in tasks.tasks
                for n, t in load_file(tmp_path / name / "trained.safetensors").items() if n != "calibration")
    assert sum(storages.values()) == base + saved  # the base weights once, plus each task's own saved tensors


def test_rows_as_frames_with_columns_and_bad_tasks(bert):
    model, tokenizer = bert
    a = fit(model, tokenizer, "{text} It was [MASK].", columns={"text": "review"})
    b = fit(model, tokenizer, "{premise} ? [MASK] , {hypothesis}", {"no": ["bad"], "yes": ["good"]})
    tasks = TaskSet({"sentiment": a, "pairs": b})
    frame = pd.DataFrame({"review": X[:4], "premise": X[1:5], "hypothesis": X[2:6]})
    got = tasks.predict_proba(frame, ["pairs", "sentiment", "sentiment", "pairs"])
    np.testing.assert_allclose(got[0], b.predict_proba(frame.iloc[[0]])[0], atol=1e-5)
    np.testing.assert_allclose(got[2], a.predict_proba(frame.iloc[[2]])[0], atol=1e-5)
    assert np.allclose(tasks.predict_proba(frame, "sentiment"), a.predict_proba(frame), atol=1e-5)
    with pytest.raises(ValueError, match="unknown task 'topic'; tasks are \\['pairs', 'sentiment'\\]"):
        tasks.predict(frame, ["sentiment", "topic", "pairs", "pairs"])
    with pytest.raises(ValueError, match="X has 4 rows but tasks has 2"):
        tasks.predict(frame, ["sentiment", "pairs"])
    with pytest.raises(ValueError, match="at least one classifier"):
        TaskSet({})
    assert tasks.decision_function([], []) == []
    assert tasks.classes("pairs").tolist() == ["no", "yes"]


def test_tasks_sharing_the_output_layer_run_it_once_for_all_their_rows(bert, monkeypatch, tmp_path):
    """Heads trained per task still share the vocabulary matrix (tied to the input embeddings): each joint forward
    multiplies every task's rows by it in one product, and each task keeps its own scores."""
    import torch

    from promptcls.families import masked

    model, tokenizer = bert
    fit(model, tokenizer, "{text} All in all [MASK].", mode="head").save_pretrained(tmp_path / "head")
    fit(model, tokenizer, "[SOFT*2] {text} It was [MASK].", mode="prompt").save_pretrained(tmp_path / "soft")
    tasks = {"zero": fit(model, tokenizer, "{text} It was [MASK]."),  # all three on the one base model
             "head": PromptClassifier.from_pretrained(tmp_path / "head", model=model, tokenizer=tokenizer),
             "soft": PromptClassifier.from_pretrained(tmp_path / "soft", model=model, tokenizer=tokenizer)}
    layers = [c.model_.output_layer() for c in tasks.values()]
    assert all(layer is not None for layer in layers)
    assert len({layer.weight.data_ptr() for layer in layers}) == 1  # one matrix, three heads
    assert layers[1].bias.data_ptr() != layers[0].bias.data_ptr()  # the trained head has its own bias
    linear, joint_scores = torch.nn.functional.linear, masked.joint_class_scores
    products, calls = [], []

    def counting(x, weight, bias=None):
        if weight.shape[0] == len(tokenizer):
            products.append(x.shape[0])
        return linear(x, weight, bias)

    def joint_counted(chunks):
        calls.append(len(chunks))
        return joint_scores(chunks)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    monkeypatch.setattr(masked, "joint_class_scores", joint_counted)
    which = ["zero", "head", "soft", "head", "zero", "soft"]
    got = TaskSet(tasks).decision_function(X, which)
    monkeypatch.undo()
    assert calls and any(n > 1 for n in calls)
    assert len(products) == len(calls)  # one vocabulary product per joint forward, whatever the tasks in it
    for i, (task, x) in enumerate(zip(which, X)):
        np.testing.assert_allclose(got[i], tasks[task].decision_function([x])[0], atol=1e-5, rtol=0)
