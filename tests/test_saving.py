"""Save only what was trained, load it back to the same predictions, refuse what does not fit."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_training import TEMPLATES, WORDS, X, Y, make

import promptcls
import promptcls.saving
from promptcls import PromptClassifier


@pytest.mark.parametrize("mode", ["none", "head", "prompt", "head+prompt", "full"])
def test_round_trip_per_mode(trainable_bert, tmp_path, mode):
    model, tokenizer = trainable_bert
    template_mode = "head+prompt" if mode == "none" else mode
    clf = make(trainable_bert, template_mode, train_mode=mode, epochs=3, calibration=True).fit(X, Y)
    clf.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == ["promptcls_config.json", "trained.safetensors"]
    with safe_open(tmp_path / "saved" / "trained.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == set(clf.trained_parameters_) | {"calibration"}
    n_model = sum(1 for n in keys if n.startswith("mlm."))
    if mode in ("none", "prompt"):
        assert n_model == 0
    elif mode in ("head", "head+prompt"):
        assert n_model == 5 and not any("embeddings" in n or "encoder" in n for n in keys)
    else:
        assert n_model == len(dict(model.named_parameters()))  # only full mode stores the whole model

    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    assert loaded.get_params()["train_mode"] == mode and loaded.template_ == clf.template_
    assert list(loaded.classes_) == ["neg", "pos"]


def test_local_path_model_round_trip(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    clf = PromptClassifier(str(tmp_path / "base"), TEMPLATES["head"], WORDS, train_mode="head", epochs=2, progress=False).fit(X, Y)
    clf.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "promptcls_config.json").read_text())
    assert config["base_model"]["name_or_path"] == str(tmp_path / "base")
    assert config["promptcls_version"] == promptcls.__version__
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved")  # base model found by its path
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_other_base_model_is_refused(trainable_bert, bert, tmp_path):
    clf = make(trainable_bert, "head", epochs=1).fit(X, Y)
    clf.save_pretrained(tmp_path / "saved")
    other, tokenizer = bert  # another configuration
    with pytest.raises(ValueError, match="trained on base model .* different config"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=other, tokenizer=tokenizer)
    retrained = copy.deepcopy(trainable_bert[0])  # same configuration and vocabulary, other weights
    with torch.no_grad():
        retrained.get_input_embeddings().weight.add_(0.1)
    with pytest.raises(ValueError, match="same config and vocabulary but other weights"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=retrained, tokenizer=tokenizer)
    # the embeddings untouched, one encoder layer changed (the old fingerprint sampled embeddings only)
    retrained = copy.deepcopy(trainable_bert[0])
    with torch.no_grad():
        retrained.bert.encoder.layer[1].output.dense.weight.mul_(1.5)
    with pytest.raises(ValueError, match="same config and vocabulary but other weights"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=retrained, tokenizer=tokenizer)
    # the same weights in bfloat16 still load: they match at the precision they share
    half = copy.deepcopy(trainable_bert[0]).to(torch.bfloat16)
    PromptClassifier.from_pretrained(tmp_path / "saved", model=half, tokenizer=tokenizer)


def test_missing_and_corrupted_files(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        PromptClassifier.from_pretrained(tmp_path / "nothing", model=model, tokenizer=tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved PromptClassifier"):
        PromptClassifier.from_pretrained(tmp_path / "empty", model=model, tokenizer=tokenizer)
    clf = make(trainable_bert, "head", epochs=1).fit(X, Y)
    clf.save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "trained.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="trained.safetensors is corrupted"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="trained.safetensors is missing"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    (tmp_path / "saved" / "promptcls_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="promptcls_config.json is corrupted"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)


def test_failed_save_keeps_the_earlier_one(trainable_bert, tmp_path, monkeypatch):
    model, tokenizer = trainable_bert
    first = make(trainable_bert, "head", epochs=1).fit(X, Y)
    first.save_pretrained(tmp_path / "saved")
    second = make(trainable_bert, "head", epochs=5).fit(X, Y)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(promptcls.saving, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        second.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path)) == ["saved"]  # no half-written directory left behind
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), first.decision_function(X))
    monkeypatch.undo()
    second.save_pretrained(tmp_path / "saved")  # a later save replaces it
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), second.decision_function(X))


def test_refuses_to_overwrite_a_foreign_directory(trainable_bert, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    clf = make(trainable_bert, "head", epochs=1).fit(X, Y)
    with pytest.raises(FileExistsError, match="not a promptcls save"):
        clf.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_checkpoint_without_mlm_head_is_seeded_and_its_head_saved(trainable_bert, tmp_path):
    """An encoder saved without an MLM head (like all-MiniLM-L6-v2) gets a head initialised from random_state."""
    import transformers

    model, tokenizer = trainable_bert
    transformers.BertModel(model.config).save_pretrained(tmp_path / "encoder")  # no cls.* weights
    tokenizer.save_pretrained(tmp_path / "encoder")
    path = str(tmp_path / "encoder")

    def make_clf(**kw):
        return PromptClassifier(path, "{text} It [SOFT:was] [MASK].", WORDS, progress=False, **kw)

    torch.manual_seed(123)
    a = make_clf().fit().decision_function(X)
    torch.manual_seed(456)  # the global seed does not matter, random_state does
    np.testing.assert_array_equal(make_clf().fit().decision_function(X), a)
    assert not np.array_equal(make_clf(random_state=1).fit().decision_function(X), a)

    clf = make_clf(train_mode="prompt", epochs=2).fit(X, Y)
    assert any(n.startswith("mlm.cls.") for n in clf.initialised_parameters_)
    clf.save_pretrained(tmp_path / "saved")
    with safe_open(tmp_path / "saved" / "trained.safetensors", "pt") as f:
        assert set(clf.initialised_parameters_) <= set(f.keys())
    torch.manual_seed(789)
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", random_state=5)  # another seed: the file wins
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))


def test_loading_a_trained_save_is_quiet_and_warns_only_when_a_head_is_random(trainable_bert, tmp_path, caplog, capfd):
    """One promptcls message for a checkpoint's missing head, none once a save restores it, and no transformers noise."""
    import logging

    import transformers

    model, tokenizer = trainable_bert
    transformers.BertModel(model.config).save_pretrained(tmp_path / "encoder")  # no cls.* weights
    tokenizer.save_pretrained(tmp_path / "encoder")
    path = str(tmp_path / "encoder")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="promptcls"):
        clf = PromptClassifier(path, TEMPLATES["head"], WORDS, train_mode="head", epochs=1, progress=False).fit(X, Y)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("promptcls")]
    assert len(messages) == 1 and "ships no weights for 5 parameters" in messages[0]
    # the same message, word for word, on every load: the parameters are named in a stable order
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="promptcls"):
        PromptClassifier(path, TEMPLATES["head"], WORDS, progress=False).fit()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("promptcls")] == messages
    assert "saved with the classifier" not in messages[0]
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "Loading weights" not in err and "seem corrupted" not in err

    clf.save_pretrained(tmp_path / "saved")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = PromptClassifier.from_pretrained(tmp_path / "saved")
    assert not [r for r in caplog.records if "ships no weights" in r.getMessage()]
    assert "LOAD REPORT" not in capfd.readouterr().err
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
