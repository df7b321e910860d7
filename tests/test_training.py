"""Few-shot training: exactly the intended parameters move, the toy task is learnt, runs repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptcls import PromptClassifier

WORDS = {"neg": ["bad", "terrible"], "pos": ["good", "great"]}
X = ["the food was nice", "i love this place", "the staff are nice", "fun film",
     "the service was poor", "i hate this place", "the food was awful", "boring film"]
Y = ["pos"] * 4 + ["neg"] * 4
TEMPLATES = {
    "head": "{text} It was [MASK].",
    "prompt": "{text} [SOFT*4] [MASK].",
    "head+prompt": "[SOFT*2] {text} [MASK].",
    "full": "{text} It [SOFT:was] [MASK].",
}


def make(model_tok, mode, **kw):
    model, tokenizer = model_tok
    kw = {"epochs": 80, "train_batch_size": 4, "learning_rate": 1e-2, "prompt_learning_rate": 1e-1, "progress": False,
          "train_mode": mode, **kw}
    return PromptClassifier(model, TEMPLATES[mode], WORDS, tokenizer=tokenizer, **kw)


def parameters(clf):
    return {n: p.detach().clone() for n, p in clf.model_.named_parameters()}


HEAD = {
    "mlm.cls.predictions.bias",
    "mlm.cls.predictions.transform.dense.weight",
    "mlm.cls.predictions.transform.dense.bias",
    "mlm.cls.predictions.transform.LayerNorm.weight",
    "mlm.cls.predictions.transform.LayerNorm.bias",
}


@pytest.mark.parametrize("mode", ["head", "prompt", "head+prompt", "full"])
def test_one_step_changes_exactly_the_intended_parameters(trainable_bert, mode):
    before = parameters(make(trainable_bert, mode, train_mode="none").fit())
    clf = make(trainable_bert, mode, max_steps=1, weight_decay=0.0).fit(X, Y)
    after = parameters(clf)
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    soft = {n for n in before if n.startswith("soft_prompt.")}
    expected = {
        "head": HEAD,
        "prompt": soft,
        "head+prompt": HEAD | soft,
        "full": set(before),
    }[mode]
    if mode == "full":  # unused rows of the pooler-free model do not get gradients: all tensors that took part moved
        expected = {n for n in before if not n.startswith("mlm.bert.pooler")}
    assert changed == expected
    assert set(clf.trained_parameters_) >= changed
    # the caller's model is never trained in place
    model, _ = trainable_bert
    reference = dict(model.named_parameters())
    assert all(torch.equal(reference[n[len("mlm."):]], before[n]) for n in before if n.startswith("mlm."))


def test_head_mode_runs_the_encoder_once_per_example(trainable_bert, monkeypatch):
    model, _ = trainable_bert
    rows = []
    base_cls = type(model.base_model)
    original = base_cls.forward

    def counting(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        rows.append((ids if ids is not None else embeds).shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(base_cls, "forward", counting)
    make(trainable_bert, "head", train_mode="none").fit()
    probe = sum(rows)  # the set-up probe of the head split
    counts = {}
    for epochs in (1, 10):
        rows.clear()
        make(trainable_bert, "head", epochs=epochs).fit(X, Y)
        counts[epochs] = sum(rows) - probe
    # "terrible" has two tokens: one encoder pass per example and label-word length, for any number of epochs
    assert counts == {1: 2 * len(X), 10: 2 * len(X)}
    rows.clear()
    make(trainable_bert, "prompt", epochs=2).fit(X, Y)
    assert sum(rows) - probe == 2 * 2 * len(X)  # modes that change the encoder's input run it every step


@pytest.mark.parametrize("mode", ["head", "prompt", "head+prompt", "full"])
def test_each_mode_learns_a_separable_toy_task(trainable_bert, mode):
    zero_shot = make(trainable_bert, mode, train_mode="none").fit()
    assert (zero_shot.predict(X) == np.array(Y)).mean() < 1.0
    clf = make(trainable_bert, mode).fit(X, Y)
    assert (clf.predict(X) == np.array(Y)).mean() == 1.0
    losses = [h["loss"] for h in clf.history_]
    assert losses[-1] < losses[0] / 2


def test_same_seed_same_predictions(trainable_bert):
    a = make(trainable_bert, "head+prompt", epochs=5).fit(X, Y).decision_function(X)
    b = make(trainable_bert, "head+prompt", epochs=5).fit(X, Y).decision_function(X)
    c = make(trainable_bert, "head+prompt", epochs=5, random_state=3).fit(X, Y).decision_function(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_eval_set_keeps_best_epoch_and_callbacks_see_every_epoch(trainable_bert):
    seen = []
    clf = make(trainable_bert, "head", epochs=6, callbacks=[lambda c, log: seen.append(log["epoch"])])
    clf.fit(X, Y, eval_set=(X, Y))
    assert seen == [1, 2, 3, 4, 5, 6]
    best = max(h["eval_accuracy"] for h in clf.history_)
    assert (clf.predict(X) == np.array(Y)).mean() == best


DEV_X = X[::2] + ["the room was nice", "awful service", "i love the staff", "a boring place", "fun food", "poor film"]
DEV_Y = Y[::2] + ["pos", "neg", "pos", "neg", "pos", "neg"]


@pytest.mark.parametrize("decoding", ["parallel", "iterative"])
def test_head_mode_eval_set_scores_like_predict(trainable_bert, decoding):
    # dev accuracy in head mode comes from cached mask rows (parallel decoding) or from predict
    # (iterative): either way each epoch's figure is what predict gives at the end of that epoch
    predicted = []
    clf = make(trainable_bert, "head", epochs=8, decoding=decoding, callbacks=[
        lambda c, log: predicted.append(float(np.mean(c.predict(DEV_X) == np.array(DEV_Y))))])
    clf.fit(X, Y, eval_set=(DEV_X, DEV_Y))
    assert [h["eval_accuracy"] for h in clf.history_] == predicted
    assert len(set(predicted)) > 1  # the dev accuracy moved, so the comparison means something


def test_head_mode_caches_the_eval_set_too(trainable_bert, monkeypatch):
    model, _ = trainable_bert
    rows = []
    base_cls = type(model.base_model)
    original = base_cls.forward

    def counting(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows.append(ids.shape[0])
        return original(self, *args, **kwargs)

    make(trainable_bert, "head", train_mode="none").fit()
    monkeypatch.setattr(base_cls, "forward", counting)
    make(trainable_bert, "head", train_mode="none").fit()
    probe = sum(rows)
    for epochs in (1, 6):
        rows.clear()
        make(trainable_bert, "head", epochs=epochs).fit(X, Y, eval_set=(DEV_X, DEV_Y))
        # "terrible" has two tokens: train and dev set each go through the encoder once per label-word length
        assert sum(rows) - probe == 2 * len(X) + 2 * len(DEV_X)
    with pytest.raises(ValueError, match="eval_set has 10 rows but 2 labels"):
        make(trainable_bert, "head", epochs=1).fit(X, Y, eval_set=(DEV_X, DEV_Y[:2]))


def test_labels_of_any_type(trainable_bert):
    model, tokenizer = trainable_bert
    clf = PromptClassifier(model, TEMPLATES["head"], {0: WORDS["neg"], 1: WORDS["pos"]}, tokenizer=tokenizer,
                           train_mode="head", epochs=80, train_batch_size=4, learning_rate=1e-2, progress=False)
    clf.fit(X, [int(y == "pos") for y in Y])
    assert clf.predict(X).tolist() == [1] * 4 + [0] * 4


def test_auxiliary_mlm_loss(trainable_bert):
    plain = make(trainable_bert, "full", epochs=2).fit(X, Y).decision_function(X)
    aux = make(trainable_bert, "full", epochs=2, mlm_loss_weight=0.5).fit(X, Y, unlabeled=X[:3] + ["the price was cheap"])
    assert not np.allclose(aux.decision_function(X), plain)
    with pytest.raises(ValueError, match="no unlabeled texts"):
        make(trainable_bert, "full", mlm_loss_weight=0.5).fit(X, Y)


def test_prompt_mode_needs_soft_tokens(trainable_bert):
    model, tokenizer = trainable_bert
    with pytest.raises(ValueError, match="train_mode='prompt' trains soft prompt tokens, but template"):
        PromptClassifier(model, "{text} [MASK].", WORDS, tokenizer=tokenizer, train_mode="prompt").fit(X, Y)


SINGLE = {"neg": ["bad", "awful"], "pos": ["good", "great"]}


@pytest.mark.parametrize("aggregation", ["mean", "max", "logsumexp"])
def test_label_vocabulary_scores_differ_from_exact_by_a_constant(family, aggregation):
    from promptcls import Verbalizer

    name, model, tokenizer = family
    clf = PromptClassifier(model, "{text} It was [MASK].", Verbalizer(SINGLE, aggregation), tokenizer=tokenizer).fit()
    pm = clf.model_
    assert pm.label_vocab_only, name
    encoded = pm.encode([{"text": t} for t in X])
    with torch.no_grad():
        exact = pm.class_scores(encoded)
        relative = pm.relative_class_scores(encoded)
    shift = exact - relative  # log Z per example, the same for every class
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-4, rtol=0)


def test_label_vocabulary_training_equals_full_vocabulary_training(trainable_bert, monkeypatch):
    def fit(restricted: bool):
        if not restricted:
            monkeypatch.setattr("promptcls.modeling.PromptModel._probe_label_vocab", lambda self: False)
        model, tokenizer = trainable_bert
        clf = PromptClassifier(model, "[SOFT*2] {text} It was [MASK].", SINGLE, tokenizer=tokenizer,
                               train_mode="head+prompt", epochs=3, train_batch_size=4, progress=False).fit(X, Y)
        assert clf.model_.label_vocab_only == restricted
        return {n: p.detach().clone() for n, p in clf.model_.named_parameters()}

    fast, slow = fit(True), fit(False)
    bias = "mlm.cls.predictions.bias"
    label_ids = [trainable_bert[1].convert_tokens_to_ids(w) for ws in SINGLE.values() for w in ws]
    others = torch.ones(len(fast[bias]), dtype=torch.bool)
    others[label_ids] = False
    for name in fast:
        if name != bias:
            torch.testing.assert_close(fast[name], slow[name], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast[bias][label_ids], slow[bias][label_ids], atol=2e-5, rtol=1e-4)
    # the loss does not depend on other words' biases: their gradient is exactly zero here, while the
    # full-vocabulary path gives them rounding noise that Adam's normalisation turns into small updates (how
    # small depends on the thread count's summation order, so the reference's drift is not asserted)
    initial = dict(trainable_bert[0].named_parameters())["cls.predictions.bias"]
    assert torch.equal(fast[bias][others], initial[others])


def _stop_epoch(accuracies, patience):
    """Where the patience rule stops a run whose dev accuracies are ``accuracies``."""
    best, best_epoch = -1.0, 0
    for epoch, accuracy in enumerate(accuracies, 1):
        if accuracy > best:
            best, best_epoch = accuracy, epoch
        if epoch - best_epoch >= patience:
            return epoch
    return len(accuracies)


@pytest.mark.parametrize("mode", ["head", "prompt"])
def test_early_stopping_cuts_the_same_run_short(trainable_bert, mode):
    # same seed and data: the run with patience is the prefix of the full run up to where the rule says stop
    full = make(trainable_bert, mode, epochs=12).fit(X, Y, eval_set=(DEV_X, DEV_Y))
    accuracies = [h["eval_accuracy"] for h in full.history_]
    stop = _stop_epoch(accuracies, 2)
    assert stop < 12  # the rule fires on this run, so the test means something
    early = make(trainable_bert, mode, epochs=12, early_stopping_patience=2).fit(X, Y, eval_set=(DEV_X, DEV_Y))
    assert early.history_ == full.history_[:stop]
    # the kept epoch is the best one seen before stopping
    assert np.mean(early.predict(DEV_X) == np.array(DEV_Y)) == max(accuracies[:stop])


def test_early_stopping_needs_a_dev_set_and_a_positive_patience(trainable_bert):
    with pytest.raises(ValueError, match=r"early_stopping_patience=3 watches the dev accuracy: pass fit\(X, y, eval_set="):
        make(trainable_bert, "head", early_stopping_patience=3).fit(X, Y)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="early_stopping_patience must be a positive integer or None"):
            make(trainable_bert, "head", early_stopping_patience=bad).fit(X, Y, eval_set=(DEV_X, DEV_Y))


def test_optimizer_is_fused_and_falls_back_where_the_kernel_is_missing(monkeypatch):
    from promptcls import training

    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(3))
    optimizer = training._optimizer({"w": weight, "b": bias}, {}, {"w": 1e-3, "b": 1e-3}, 0.01)
    assert optimizer.defaults["fused"] is True
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # no decay on biases and norms

    plain = torch.optim.AdamW

    def no_fused_kernel(groups, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return plain(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    optimizer = training._optimizer({"w": weight, "b": bias}, {}, {"w": 1e-3, "b": 1e-3}, 0.01)
    assert not optimizer.defaults["fused"]
    weight.grad, bias.grad = torch.ones_like(weight), torch.ones_like(bias)
    optimizer.step()
    assert (weight < 1).all()


def test_head_learning_rate_moves_the_head_at_its_own_rate(trainable_bert):
    before = parameters(make(trainable_bert, "full", train_mode="none").fit())
    clf = make(trainable_bert, "full", max_steps=1, weight_decay=0.0, learning_rate=1e-8, head_learning_rate=1e-2,
               prompt_learning_rate=1e-8, warmup_ratio=0.0).fit(X, Y)
    after = parameters(clf)
    step = {n: float((after[n] - before[n]).abs().max()) for n in before}
    # AdamW's first step moves every parameter that has a gradient by about its group's rate
    assert all(5e-3 < step[n] <= 1.01e-2 for n in HEAD)
    moved = [n for n in before if n not in HEAD and step[n] > 0]
    # the rest at 1e-8, up to float32 rounding of the weights (1.5e-8 for weights near 0.2)
    assert moved and max(step[n] for n in moved) < 1e-7, max((step[n], n) for n in moved)


def test_head_learning_rate_needs_a_mode_that_trains_the_head(trainable_bert):
    with pytest.raises(ValueError, match="head_learning_rate is set but train_mode='prompt' does not train the MLM head"):
        make(trainable_bert, "prompt", head_learning_rate=1e-2).fit(X, Y)
    with pytest.raises(ValueError, match=r"head_learning_rate must be a positive finite number or None, got -0.1"):
        make(trainable_bert, "full", head_learning_rate=-0.1).fit(X, Y)


VARIED_X = ["fun film", "i love this place so much, the staff and the food and the room are all so nice", "nice",
            "the service was poor and the food was awful and cold, and i will never come back here", "boring",
            "the food was nice", "i hate this place", "awful"]
VARIED_Y = ["pos", "pos", "pos", "neg", "neg", "pos", "neg", "neg"]


@pytest.mark.parametrize("mode", ["prompt", "full"])
def test_micro_batches_train_as_the_whole_padded_batch(trainable_bert, monkeypatch, mode):
    # no dropout in this model: splitting a batch by length must give the same losses and updates
    model, _ = trainable_bert
    # against the whole batch padded, as it runs where a model does not pack (packing: tests/test_packing.py)
    monkeypatch.setattr("promptcls.families.masked.PromptModel._probe_packing", lambda self: (False, 0))
    passes = []

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        passes.append((kwargs["inputs_embeds"] if ids is None else ids).shape[:2])

    hook = model.base_model.register_forward_pre_hook(count, with_kwargs=True)  # fit trains a copy: hooks go along
    runs = {}
    try:
        for overhead in (1e12, 0):
            monkeypatch.setattr("promptcls.encoding.CPU_PASS_OVERHEAD", overhead)
            extra = {"unlabeled": VARIED_X[::-1]} if mode == "full" else {}  # PET's auxiliary loss joins the sum
            clf = make(trainable_bert, mode, epochs=3, train_batch_size=8)
            clf.fit(VARIED_X, VARIED_Y, **extra)
            passes.clear()
            clf.fit(VARIED_X, VARIED_Y, **extra)
            runs[overhead] = (parameters(clf), [h["loss"] for h in clf.history_], list(passes))
    finally:
        hook.remove()
    (whole, whole_loss, whole_passes), (split, split_loss, split_passes) = runs[1e12], runs[0]
    assert len(split_passes) > len(whole_passes)  # the split run did run smaller passes
    assert max(s[1] for s in split_passes) == max(s[1] for s in whole_passes)
    assert sum(s[0] * s[1] for s in split_passes) < sum(s[0] * s[1] for s in whole_passes)  # fewer padded tokens
    np.testing.assert_allclose(split_loss, whole_loss, rtol=1e-5)
    for name in whole:
        if name.endswith("attention.self.key.bias"):
            # softmax ignores a shift shared by all keys: this gradient is zero up to rounding, which Adam's
            # normalisation turns into updates of either sign
            continue
        # atol: Adam divides by the gradient's own size, so a near-zero entry's rounding moves it by up to
        # a fraction of the learning rate (1e-2 here)
        torch.testing.assert_close(split[name], whole[name], atol=1e-4, rtol=1e-4, msg=name)
    start = parameters(make(trainable_bert, mode, train_mode="none").fit())
    assert any(not torch.equal(whole[n], p) for n, p in start.items())


def test_head_cache_rows_are_each_prompts_own(trainable_bert, monkeypatch):
    # the cache runs prompts sorted and micro-batched by length; each row must still be its prompt's
    from promptcls import training

    monkeypatch.setattr("promptcls.encoding.CPU_PASS_OVERHEAD", 0)
    clf = make(trainable_bert, "head", train_mode="none").fit()
    model = clf.model_
    encoded = model.encode([{"text": t} for t in VARIED_X])
    cache = training._HeadCache(model, encoded, batch_size=3)
    with torch.no_grad():
        for i, e in enumerate(encoded):
            for n, batch in model.group_batches([e]).items():
                torch.testing.assert_close(cache.rows[n][i], model.mask_hidden(batch)[0], atol=1e-5, rtol=1e-4)


def test_class_weights_change_the_loss_as_the_formula_says(trainable_bert):
    """Step 1's logged loss is mean_i w[y_i] * CE_i over the whole batch, scores from the untrained head."""
    X_imb, y_imb = X[:5], Y[:5]  # 4 pos, 1 neg
    scores = make(trainable_bert, "head", train_mode="none").fit().decision_function(X_imb)
    ce = -torch.tensor(scores).log_softmax(-1)[torch.arange(5), torch.tensor([1 if v == "pos" else 0 for v in y_imb])]
    classes = ["neg", "pos"]
    for weight, w in ((None, {"neg": 1.0, "pos": 1.0}), ("balanced", {"neg": 5 / 2, "pos": 5 / 8}),
                      ({"neg": 3.0}, {"neg": 3.0, "pos": 1.0})):
        clf = make(trainable_bert, "head", max_steps=1, train_batch_size=5, class_weight=weight).fit(X_imb, y_imb)
        assert list(clf.classes_) == classes
        expected = float(np.mean([w[v] * float(c) for v, c in zip(y_imb, ce)]))
        assert clf.history_[0]["loss"] == pytest.approx(expected, rel=1e-5), weight
    with pytest.raises(ValueError, match="class_weight names class 'maybe', which the verbalizer does not have"):
        make(trainable_bert, "head", max_steps=1, class_weight={"maybe": 2.0}).fit(X_imb, y_imb)
    with pytest.raises(ValueError, match="class_weight must be 'balanced', a dict"):
        make(trainable_bert, "head", class_weight="even").fit(X_imb, y_imb)
    with pytest.raises(ValueError, match=r"class_weight\['neg'\] must be a finite number >= 0"):
        make(trainable_bert, "head", class_weight={"neg": -1}).fit(X_imb, y_imb)


def test_balanced_sampling_draws_each_class_equally(trainable_bert, monkeypatch):
    from promptcls import training

    drawn = []
    real = training.torch.multinomial

    def spy(weights, n, **kw):
        out = real(weights, n, **kw)
        drawn.append(out.tolist())
        return out

    monkeypatch.setattr(training.torch, "multinomial", spy)
    X_imb, y_imb = X[:4] + X[4:5], Y[:4] + Y[4:5]  # 4 pos, 1 neg
    make(trainable_bert, "head", epochs=40, train_batch_size=5, sampling="balanced").fit(X_imb, y_imb)
    picks = [i for epoch in drawn for i in epoch]
    assert len(drawn) == 40 and all(len(e) == 5 for e in drawn)
    share_neg = sum(i == 4 for i in picks) / len(picks)
    assert 0.4 < share_neg < 0.6  # one negative example drawn as often as the four positives together
    with pytest.raises(ValueError, match="sampling='random' is not one of 'shuffle', 'balanced'"):
        make(trainable_bert, "head", sampling="random").fit(X_imb, y_imb)
