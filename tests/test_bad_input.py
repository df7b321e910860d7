"""The bad-input matrix: every case gets the error type it should, and a message naming the offending value.

Also the silent failures the reliability review found: each now either works or is refused.
"""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from test_training import TEMPLATES, WORDS, X, Y, make

from promptcls import MultiLabelPromptClassifier, PETClassifier, PromptClassifier, TemplateError, TrainMode, Verbalizer
from promptcls.estimator import TrainingDiverged


def zero_shot(model_tok, template="{text} It was [MASK].", words=None, **kw):
    model, tokenizer = model_tok
    return PromptClassifier(model, template, words or WORDS, tokenizer=tokenizer, progress=False, **kw)


# ---------------------------------------------------------------------- settings refused at fit
@pytest.mark.parametrize(("setting", "value", "message"), [
    ("max_grad_norm", -1.0, r"max_grad_norm must be a positive finite number or None, got -1.0"),
    ("max_grad_norm", 0.0, r"max_grad_norm must be a positive finite number or None, got 0.0"),
    ("learning_rate", math.inf, r"learning_rate must be a positive finite number or None, got inf"),
    ("learning_rate", math.nan, r"learning_rate must be a positive finite number or None, got nan"),
    ("prompt_learning_rate", -3e-3, r"prompt_learning_rate must be a positive finite number or None, got -0.003"),
    ("warmup_ratio", 1.5, r"warmup_ratio must be a number in \[0, 1\), got 1.5"),
    ("weight_decay", -0.1, r"weight_decay must be a finite number >= 0, got -0.1"),
    ("epochs", 0, r"epochs must be a positive integer, got 0"),
    ("epochs", 2.5, r"epochs must be a positive integer, got 2.5"),
    ("epochs", True, r"epochs must be a positive integer, got True"),
    ("batch_size", "8", r"batch_size must be a positive integer, got '8'"),
    ("max_length", 2, r"max_length must be an integer of at least 4 or None, got 2"),
    ("mlm_loss_weight", 1.5, r"mlm_loss_weight must be a number in \[0, 1\] or None, got 1.5"),
    ("random_state", -1, r"random_state must be a non-negative integer, got -1"),
    ("random_state", "seed", r"random_state must be an integer, None or a numpy RandomState/Generator, got 'seed'"),
    ("train_mode", "heads", r"train_mode='heads': 'heads' is not a part; parts are 'head', 'verbalizer', 'proto', 'prompt'"),
    ("decoding", "greedy", r"decoding='greedy' is not one of 'parallel', 'iterative'"),
    ("device", "bogus", r"device='bogus' is not a device: use 'auto', 'cpu'"),
    ("device", "meta", r"device='meta' is not supported"),
    ("columns", ["text"], r"columns must be a dict of template field -> column name, got \['text'\]"),
])
def test_bad_settings_are_refused_naming_the_value(trainable_bert, setting, value, message):
    clf = make(trainable_bert, "head", **{setting: value})
    with pytest.raises((ValueError, TypeError), match=message):
        clf.fit(X, Y)
    assert not hasattr(clf, "model_")


def test_bad_fit_arguments(trainable_bert):
    with pytest.raises(ValueError, match=r"temperature must be a positive finite number, got 0"):
        make(trainable_bert, "head").fit(X, soft_labels=np.full((8, 2), 0.5), temperature=0)
    with pytest.raises(ValueError, match=r"soft_labels row 0 sums to 0"):
        make(trainable_bert, "head").fit(X, soft_labels=np.zeros((8, 2)))
    nan = np.full((8, 2), 0.5)
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"soft_labels row 3 is not a probability distribution"):
        make(trainable_bert, "head").fit(X, soft_labels=nan)
    with pytest.raises(ValueError, match=r"soft_labels must be an \(n, 2\) array .* got shape \(8, 3\)"):
        make(trainable_bert, "head").fit(X, soft_labels=np.ones((8, 3)))
    with pytest.raises(ValueError, match=r"X has 8 rows but soft_labels has 7"):
        make(trainable_bert, "head").fit(X, soft_labels=np.ones((7, 2)))


def test_empty_and_missing_data(trainable_bert):
    with pytest.raises(ValueError, match=r"train_mode='head' needs at least one training example; X is empty"):
        make(trainable_bert, "head").fit([], [])
    with pytest.raises(ValueError, match=r"unlabeled is empty"):
        make(trainable_bert, "head").fit(X, Y, unlabeled=[])
    with pytest.raises(ValueError, match=r"train_mode='head' trains on labelled data: call fit\(X, y\)"):
        make(trainable_bert, "head").fit(None, Y)
    with pytest.raises(ValueError, match=r"eval_set is empty"):
        make(trainable_bert, "head").fit(X, Y, eval_set=([], []))
    with pytest.raises(ValueError, match=r"X has 8 rows but y has 7 labels"):
        make(trainable_bert, "head").fit(X, Y[:7])
    clf = zero_shot(trainable_bert).fit()
    with pytest.raises(ValueError, match=r"X is None: pass texts"):
        clf.predict(None)
    with pytest.raises(TypeError, match=r"X must be texts .* got int: 3"):
        clf.predict(3)
    with pytest.raises(ValueError, match=r"key 'text' holds int 3"):
        clf.predict({"text": 3})


def test_pet_with_empty_unlabeled_texts(trainable_bert):
    model, tokenizer = trainable_bert
    pet = PETClassifier(model, patterns=[(TEMPLATES["head"], WORDS)], tokenizer=tokenizer,
                        classifier_params={"train_mode": "head", "epochs": 1})
    with pytest.raises(ValueError, match=r"unlabeled is empty: PET distils"):
        pet.fit(X, Y, unlabeled=[])


def test_generators_numpy_values_and_enums_are_accepted(trainable_bert, tmp_path):
    # a generator as X, numpy integers as settings, the exported enum as train_mode, numpy labels
    clf = make(trainable_bert, TrainMode.HEAD, epochs=np.int64(2), max_length=np.int64(64), train_batch_size=np.int32(4))
    clf.fit((x for x in X), np.asarray(Y))
    assert len(clf.history_) == 2 and clf.predict(iter(X[:3])).shape == (3,)
    clf.save_pretrained(tmp_path / "saved")
    params = json.loads((tmp_path / "saved" / "promptcls_config.json").read_text())["params"]
    assert params["epochs"] == 2 and params["max_length"] == 64 and params["train_mode"] == "head"
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=trainable_bert[0], tokenizer=trainable_bert[1])
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))


def test_grid_search_over_numpy_ranges(trainable_bert):
    search = GridSearchCV(make(trainable_bert, "head", epochs=1), {"epochs": np.arange(1, 3)}, cv=2, error_score="raise")
    search.fit(X, Y)
    assert search.best_params_["epochs"] in (1, 2)


def test_random_state_none_draws_a_seed_and_saves_it(trainable_bert, tmp_path):
    clf = make(trainable_bert, "prompt", epochs=1, random_state=None).fit(X, Y)
    assert isinstance(clf.random_state_, int)
    clf.save_pretrained(tmp_path / "saved")
    params = json.loads((tmp_path / "saved" / "promptcls_config.json").read_text())["params"]
    assert params["random_state"] == clf.random_state_
    generator = make(trainable_bert, "prompt", epochs=1, random_state=np.random.RandomState(3)).fit(X, Y)
    assert isinstance(generator.random_state_, int)


def test_numpy_class_keys_save_and_load(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    words = {np.int64(0): ["bad"], np.int64(1): ["good"]}
    clf = PromptClassifier(model, TEMPLATES["head"], words, tokenizer=tokenizer, train_mode="head", epochs=1,
                           progress=False).fit(X, np.asarray([1] * 4 + [0] * 4))
    clf.save_pretrained(tmp_path / "saved")
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    assert loaded.classes_.tolist() == [0, 1]
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


# ---------------------------------------------------------------------- label words and inputs
@pytest.mark.parametrize(("words", "first", "second"), [
    ({"neg": ["bad"], "pos": ["BAD"]}, "bad", "BAD"),
    ({"neg": ["café"], "pos": ["cafe"]}, "café", "cafe"),
    ({"neg": ["good", "Good"], "pos": ["bad"]}, "good", "Good"),
])
def test_label_words_that_are_the_same_tokens_are_refused(trainable_bert, words, first, second):
    with pytest.raises(ValueError, match=rf"label words {first!r} .* and {second!r} .* are the same tokens"):
        zero_shot(trainable_bert, words=words).fit()


def test_a_single_dict_is_one_row(trainable_bert):
    clf = zero_shot(trainable_bert).fit()
    one = clf.decision_function({"text": "good food"})
    assert one.shape == (1, 2)
    np.testing.assert_allclose(one, clf.decision_function(["good food"]), atol=1e-6)
    assert clf.predict({"text": ["good food", "bad food"]}).shape == (2,)  # a dict of columns
    with pytest.raises(ValueError, match=r"different lengths"):
        clf.predict({"text": ["a", "b"], "other": ["c"]})


@pytest.mark.parametrize(("template", "fixture"), [("{text} It was \\[MASK\\] [MASK].", "bert"),
                                                   ("{text} <mask> It was [MASK].", "roberta")])
def test_a_literal_mask_token_in_the_template_blames_the_template(request, template, fixture):
    model, tokenizer = request.getfixturevalue(fixture)
    clf = PromptClassifier(model, template, WORDS if fixture == "bert" else {"n": ["bad"], "p": ["good"]},
                           tokenizer=tokenizer)
    with pytest.raises(TemplateError, match=r"writes the tokenizer's mask token '(\[MASK\]|<mask>)' as literal text"):
        clf.fit()


def test_template_problems_are_found_at_fit(trainable_bert):
    with pytest.raises(ValueError, match=r"100000 soft tokens, more than max_length=128"):
        zero_shot(trainable_bert, template="[SOFT*100000] {text} [MASK].").fit()
    with pytest.raises(ValueError, match=r"max_length=1000 is more than BertForMaskedLM takes \(128 positions\)"):
        zero_shot(trainable_bert, max_length=1000).fit()


def test_multilabel_threshold_of_the_wrong_length(trainable_bert):
    model, tokenizer = trainable_bert
    clf = MultiLabelPromptClassifier(model, "{text} Is it about {label}? [MASK].", labels={"f": "food", "s": "service"},
                                     tokenizer=tokenizer, threshold=[0.5, 0.4, 0.3])
    with pytest.raises(ValueError, match=r"threshold has 3 values but there are 2 labels"):
        clf.fit()
    clf.set_params(threshold=float("nan"))
    with pytest.raises(ValueError, match=r"threshold must be finite numbers, got nan"):
        clf.fit()


# ---------------------------------------------------------------------- models and devices
def test_model_paths_and_remote_code(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"model path '/nonexistent/path' does not exist"):
        PromptClassifier("/nonexistent/path", verbalizer=WORDS).fit()
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a file: give the folder"):
        PromptClassifier(str(tmp_path / "weights.bin"), verbalizer=WORDS).fit()

    import transformers

    seen = []

    def refuse(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        PromptClassifier(str(tmp_path), verbalizer=WORDS).fit()
    transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                            intermediate_size=8).save_pretrained(tmp_path)
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", refuse)
    with pytest.raises(OSError, match=r"cannot load model '.*': stop here"):
        PromptClassifier(str(tmp_path), verbalizer=WORDS).fit()
    assert seen == [False]  # custom code in a model folder is never run, nor asked about on a terminal


# ---------------------------------------------------------------------- training that diverges
def test_training_that_diverges_stops_naming_the_epoch_and_step(trainable_bert):
    clf = make(trainable_bert, "full", learning_rate=1e6, max_grad_norm=None, epochs=6)
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+, optimiser step \d+: .*lower learning_rate"):
        clf.fit(X, Y)
    assert not hasattr(clf, "model_")  # no half-trained classifier that predicts class 0


def test_non_finite_scores_are_an_error_not_class_zero(trainable_bert):
    model, tokenizer = trainable_bert
    broken = __import__("copy").deepcopy(model)
    with torch.no_grad():
        broken.cls.predictions.bias.fill_(float("nan"))
    clf = PromptClassifier(broken, TEMPLATES["head"], WORDS, tokenizer=tokenizer).fit()
    with pytest.raises(FloatingPointError, match=r"scores of row 0 are not finite"):
        clf.predict(X)


# ---------------------------------------------------------------------- the caller's state is left alone
def test_zero_shot_leaves_the_callers_model_and_random_state_alone(trainable_bert):
    model, tokenizer = trainable_bert
    model.train()
    try:
        py, npy, pt = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        clf = PromptClassifier(model, TEMPLATES["head"], WORDS, tokenizer=tokenizer, progress=False).fit()
        clf.predict(X)
        assert model.training and all(m.training for m in model.modules())
        assert clf.model_.mlm.get_input_embeddings().weight is model.get_input_embeddings().weight  # shared, not copied
        make(trainable_bert, "prompt", epochs=1).fit(X, Y)
        assert random.getstate() == py and torch.equal(torch.random.get_rng_state(), pt)
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), npy))
    finally:
        model.eval()


# ---------------------------------------------------------------------- loading
def test_overrides_apply_on_load(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    make(trainable_bert, "head", epochs=2).fit(X, Y).save_pretrained(tmp_path / "plain")
    make(trainable_bert, "head", epochs=2, calibration=True).fit(X, Y).save_pretrained(tmp_path / "calibrated")

    def load(name, **kw):
        return PromptClassifier.from_pretrained(tmp_path / name, model=model, tokenizer=tokenizer, **kw)

    plain, calibrated = load("plain").decision_function(X), load("calibrated").decision_function(X)
    assert not np.allclose(plain, calibrated)
    np.testing.assert_allclose(load("plain", calibration=True).decision_function(X), calibrated, atol=1e-5)
    np.testing.assert_allclose(load("calibrated", calibration=False).decision_function(X), plain, atol=1e-5)
    long = ["the food was nice and the staff are nice and i love this place really very much"]
    assert not np.allclose(load("plain", max_length=10).decision_function(long), load("plain").decision_function(long))
    with pytest.raises(ValueError, match=r"from_pretrained cannot change \['template'\]"):
        load("plain", template="{text} [MASK] !")
    with pytest.raises(TypeError, match=r"from_pretrained got unknown settings \['calibrate'\]"):
        load("plain", calibrate=True)


@pytest.mark.parametrize(("content", "message"), [
    (b"[]", r"a JSON list, not an object"),
    (b"{}", r"the key 'template' is missing"),
    (b'{"template": {"template": "{text} [MASK]"}, "verbalizer": {"classes": []}, "trained_parameters": []}',
     r"the key 'base_model' is missing"),
    (b'{"template": "x", "verbalizer": {}, "base_model": {}, "trained_parameters": []}', r"'template' is a str"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"not UTF-8 text"),
    (b"{not json", r"not valid JSON"),
])
def test_a_corrupted_config_says_so(trainable_bert, tmp_path, content, message):
    model, tokenizer = trainable_bert
    make(trainable_bert, "head", epochs=1).fit(X, Y).save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "promptcls_config.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"promptcls_config.json is corrupted \({message}"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_save_takes_the_umasks_permissions(trainable_bert, tmp_path, umask):
    clf = make(trainable_bert, "head", epochs=1).fit(X, Y)
    old = os.umask(umask)
    try:
        clf.save_pretrained(tmp_path / "saved")
        clf.save_pretrained(tmp_path / "saved")  # and when it replaces a save
    finally:
        os.umask(old)
    assert (tmp_path / "saved").stat().st_mode & 0o777 == 0o777 & ~umask
    for f in (tmp_path / "saved").iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no staging or backup left behind


def test_verbalizer_with_equal_label_words_across_types_is_fine():
    # a sanity check that the duplicate rule is about tokens, not about a class's own words
    v = Verbalizer({0: ["bad"], 1: ["good", "great"]})
    assert v.classes == (0, 1)
