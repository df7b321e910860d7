"""The same classifiers on CUDA as on CPU: scores, training, saving. Skipped where no GPU is present (CI has
none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.

Each case fits one classifier on CPU and one on CUDA from the same weights, data and seed, and compares their
scores: zero-shot to 1e-4, a few training steps to 2e-3 (the reductions run in another order on the GPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_causal import make_causal, make_tokenizer

from promptcls import PromptClassifier, PromptRegressor, TaskSet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TEXTS = ["the food was great", "it was terrible , really awful and boring", "nice staff , fun film",
         "the service was poor and the price was not cheap at all", "fun film", "i love this place",
         "bad , boring", "great food , great staff , really good"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "pos", "neg", "pos"]
WORDS = {"neg": ["bad"], "pos": ["good"]}
MASKED_TEMPLATE = "{text} It was [MASK]."
CAUSAL_TEMPLATE = "Review: {text} Sentiment: [MASK]"


@pytest.fixture(scope="module")
def causal_llama():
    tokenizer = make_tokenizer(bos=True)
    return make_causal("llama", tokenizer), tokenizer


def both(model, tokenizer, template, mode, fit=True, **kw):
    """(cpu classifier, cuda classifier), fitted alike on copies of ``model``."""
    out = []
    for device in ("cpu", "cuda"):
        clf = PromptClassifier(copy.deepcopy(model), template, WORDS, tokenizer=tokenizer, train_mode=mode,
                               device=device, progress=False, epochs=2, train_batch_size=4, random_state=0, **kw)
        if mode == "none" and not kw.get("demonstrations"):
            clf.fit()
        else:
            clf.fit(TEXTS, LABELS)
        out.append(clf)
    return out


def assert_same_scores(cpu, gpu, atol):
    a, b = cpu.decision_function(TEXTS), gpu.decision_function(TEXTS)
    assert isinstance(b, np.ndarray)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


MASKED_MODES = ["none", "head", "prompt", "head+prompt", "prefix", "lora", "ia3", "full", "head+verbalizer",
                "proto"]
CAUSAL_MODES = ["none", "prompt", "prefix", "lora", "ia3", "full", "prompt+verbalizer", "proto"]


@pytest.mark.parametrize("mode", MASKED_MODES)
def test_masked_modes_on_cuda_score_as_on_cpu(trainable_bert, mode):
    model, tokenizer = trainable_bert
    template = ("[SOFT*2] " if "prompt" in mode else "") + MASKED_TEMPLATE
    cpu, gpu = both(model, tokenizer, template, mode)
    assert all(p.is_cuda for p in gpu.model_.parameters())
    assert_same_scores(cpu, gpu, 1e-4 if mode == "none" else 2e-3)


@pytest.mark.parametrize("mode", CAUSAL_MODES)
def test_causal_modes_on_cuda_score_as_on_cpu(causal_llama, mode):
    model, tokenizer = causal_llama
    template = ("[SOFT*2] " if "prompt" in mode else "") + CAUSAL_TEMPLATE
    cpu, gpu = both(model, tokenizer, template, mode)
    assert_same_scores(cpu, gpu, 1e-4 if mode == "none" else 2e-3)


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_calibration_demonstrations_and_class_weights_on_cuda(trainable_bert, causal_llama, kind):
    model, tokenizer = trainable_bert if kind == "masked" else causal_llama
    template = MASKED_TEMPLATE if kind == "masked" else CAUSAL_TEMPLATE
    cpu, gpu = both(model, tokenizer, template, "none", calibration=True)
    assert_same_scores(cpu, gpu, 1e-4)
    cpu, gpu = both(model, tokenizer, template, "none", demonstrations="random", demonstration_sets=2)
    assert_same_scores(cpu, gpu, 1e-4)
    mode = "head" if kind == "masked" else "prompt"
    template = template if kind == "masked" else "[SOFT*2] " + template
    cpu, gpu = both(model, tokenizer, template, mode, class_weight="balanced", sampling="balanced")
    assert_same_scores(cpu, gpu, 2e-3)


def test_mixed_precision_trains_on_cuda(causal_llama):
    model, tokenizer = causal_llama
    clf = PromptClassifier(copy.deepcopy(model), "[SOFT*2] " + CAUSAL_TEMPLATE, WORDS, tokenizer=tokenizer,
                           train_mode="prompt", device="cuda", mixed_precision="bf16", progress=False, epochs=2)
    clf.fit(TEXTS, LABELS)
    assert np.isfinite(clf.decision_function(TEXTS)).all()


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_saved_on_cuda_loads_on_cpu(trainable_bert, causal_llama, kind, tmp_path):
    model, tokenizer = trainable_bert if kind == "masked" else causal_llama
    template = "[SOFT*2] " + (MASKED_TEMPLATE if kind == "masked" else CAUSAL_TEMPLATE)
    _, gpu = both(model, tokenizer, template, "prompt+lora")
    gpu.save_pretrained(tmp_path / "saved")
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=copy.deepcopy(model), tokenizer=tokenizer,
                                              device="cpu")
    np.testing.assert_allclose(loaded.decision_function(TEXTS), gpu.decision_function(TEXTS), atol=2e-4, rtol=0)


def test_regressor_on_cuda(trainable_bert):
    model, tokenizer = trainable_bert
    out = []
    for device in ("cpu", "cuda"):
        reg = PromptRegressor(copy.deepcopy(model), "{text} It was [MASK].", ("bad", "good"), value_range=(0, 5),
                              tokenizer=tokenizer, train_mode="head", device=device, progress=False, epochs=2,
                              random_state=0)
        reg.fit(TEXTS, [4.0, 0.5, 3.5, 1.0, 4.5, 5.0, 0.0, 4.0])
        out.append(reg.predict(TEXTS))
    np.testing.assert_allclose(out[0], out[1], atol=2e-3, rtol=0)


def test_task_set_on_cuda(trainable_bert, tmp_path):
    model, tokenizer = trainable_bert
    _, soft = both(model, tokenizer, "[SOFT*2] " + MASKED_TEMPLATE, "head+prompt")
    zero = PromptClassifier(copy.deepcopy(model), MASKED_TEMPLATE, WORDS, tokenizer=tokenizer, device="cuda",
                            progress=False).fit()
    originals = {"soft": soft, "zero": zero}
    for name, clf in originals.items():
        clf.save_pretrained(tmp_path / name)
    tasks = TaskSet.from_pretrained({n: tmp_path / n for n in originals}, model=copy.deepcopy(model),
                                    tokenizer=tokenizer, device="cuda")
    assert len(tasks.groups_) == 1  # one encoder forward for both
    rows = tasks.decision_function(TEXTS + TEXTS, ["soft"] * len(TEXTS) + ["zero"] * len(TEXTS))
    np.testing.assert_allclose(np.stack(rows[: len(TEXTS)]), soft.decision_function(TEXTS), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.stack(rows[len(TEXTS):]), zero.decision_function(TEXTS), atol=1e-4, rtol=0)
