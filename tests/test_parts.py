"""Trained parts (promptcls.parts): deep prefixes, LoRA and IA3 through peft, prompt-tuning starts, and how
they compose, on tiny masked and causal LMs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_causal import make_causal, make_tokenizer

from promptcls import PromptClassifier, Template
from promptcls.parts import PART_NAMES, build_parts, parse_train_mode
from promptcls.parts.lora import block_linear_layers
from promptcls.parts.prefix import prefix_shape

X = ["the food was great", "it was terrible , really awful and boring", "nice staff",
     "the service was poor and the price was not cheap at all", "fun film", "bad food"]
Y = ["pos", "neg", "pos", "neg", "pos", "neg"]
WORDS = {"neg": ["bad", "terrible"], "pos": ["good", "fantastic"]}  # single- and multi-token words
CAUSAL_PREFIX = ["gpt2", "llama", "qwen2", "gpt-neox", "opt"]


@pytest.fixture(scope="module")
def causal_lms():
    plain, bos = make_tokenizer(bos=False), make_tokenizer(bos=True)
    return {name: (make_causal(name, bos if name == "llama" else plain), bos if name == "llama" else plain)
            for name in CAUSAL_PREFIX}


@pytest.fixture(params=["bert", "roberta", "gpt2", "llama"])
def lm(request, tokenizers, _models, causal_lms):
    """(name, model, tokenizer, template) of both families."""
    name = request.param
    if name in causal_lms:
        return name, *causal_lms[name], "{text} It was [MASK]"
    from conftest import TOKENIZER_OF

    return name, _models[name], tokenizers[TOKENIZER_OF[name]], "{text} It was [MASK]."


def fit(model, tokenizer, template, mode, **kw):
    kw = {"max_steps": 2, "train_batch_size": 3, "progress": False, **kw}
    return PromptClassifier(model, template, WORDS, tokenizer=tokenizer, train_mode=mode, **kw).fit(X, Y)


def zero_shot(model, tokenizer, template):
    return PromptClassifier(model, template, WORDS, tokenizer=tokenizer, progress=False).fit()


# ---------------------------------------------------------------------- composition
def test_train_mode_strings_compose_into_parts():
    assert parse_train_mode("none") == ()
    assert parse_train_mode("head+prompt") == ("head", "prompt")
    assert parse_train_mode("lora+head") == ("head", "lora")  # canonical order
    assert parse_train_mode(" Prompt + LoRA ") == ("prompt", "lora")
    assert [p.name for p in build_parts(("head", "prefix"), {})] == ["head", "prefix"]
    assert set(PART_NAMES) == {"head", "verbalizer", "proto", "prompt", "prefix", "lora", "ia3", "full"}
    with pytest.raises(ValueError, match="'adapterz' is not a part; parts are 'head', 'verbalizer', 'proto', 'prompt'"):
        parse_train_mode("head+adapterz")
    with pytest.raises(ValueError, match="names a part twice"):
        parse_train_mode("lora+lora")
    with pytest.raises(ValueError, match="does not compose: LoRA and IA3 would adapt the same layers twice"):
        parse_train_mode("lora+ia3")
    with pytest.raises(ValueError, match="does not compose: 'full' already trains every weight"):
        parse_train_mode("full+lora")
    with pytest.raises(TypeError, match="train_mode must be a string"):
        parse_train_mode(3)


def test_bad_part_options_are_named(bert):
    model, tokenizer = bert
    for name, value in (("prefix_length", 0), ("lora_rank", 1.5), ("lora_dropout", 1.0), ("lora_alpha", -1)):
        with pytest.raises(ValueError, match=name):
            fit(model, tokenizer, "{text} It was [MASK].", "lora", **{name: value})
    with pytest.raises(TypeError, match="lora_target_modules must be module names"):
        fit(model, tokenizer, "{text} It was [MASK].", "lora", lora_target_modules=[3])
    with pytest.raises(ValueError, match="lora: .*nonexistent"):
        fit(model, tokenizer, "{text} It was [MASK].", "lora", lora_target_modules=["nonexistent"])


# ---------------------------------------------------------------------- zero starts
@pytest.mark.parametrize("mode", ["lora", "ia3"])
def test_an_untrained_adapter_scores_exactly_like_the_base_model(lm, mode):
    name, model, tokenizer, template = lm
    clf = zero_shot(model, tokenizer, template)
    base = clf.decision_function(X)
    adapted = copy.deepcopy(clf.model_)
    for part in build_parts((mode,), {"seed": 0}):
        part.attach(adapted)
        assert part.parameters(adapted)
    with torch.no_grad():
        scores = adapted.class_scores(adapted.encode([{"text": x} for x in X])).numpy()
    np.testing.assert_allclose(scores, base, atol=1e-6, rtol=0)


def test_prefix_with_masked_columns_is_the_base_model_and_shown_moves_it(lm):
    name, model, tokenizer, template = lm
    clf = zero_shot(model, tokenizer, template)
    base = clf.decision_function(X)
    prompted = copy.deepcopy(clf.model_)
    build_parts(("prefix",), {"prefix_length": 3, "seed": 0})[0].attach(prompted)
    rows = prompted.encode([{"text": x} for x in X])
    with torch.no_grad():
        prompted.kv_prefix.visible = False
        np.testing.assert_allclose(prompted.class_scores(rows).numpy(), base, atol=1e-5, rtol=0)
        prompted.kv_prefix.visible = True
        assert not np.allclose(prompted.class_scores(rows).numpy(), base, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- the prefix against plain logits
def _prefix_cache(kv, config):
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)
    return cache


@pytest.mark.parametrize("name", CAUSAL_PREFIX)
def test_causal_prefix_scores_equal_a_plain_forward_with_the_prefix_cache(causal_lms, name):
    model, tokenizer = causal_lms[name]
    clf = fit(model, tokenizer, "{text} It was [MASK]", "prefix", prefix_length=4)
    kv = clf.model_.kv_prefix.values().detach()
    assert tuple(kv.shape) == prefix_shape(model.config, 4)
    lm = clf.model_.lm
    got = clf.decision_function(X)
    one = np.stack([clf.decision_function([x])[0] for x in X])
    np.testing.assert_allclose(got, one, atol=1e-5, rtol=0)  # padding and prefix columns are right
    for i, text in enumerate(X):
        prompt = tokenizer(f"{text} It was", add_special_tokens=True)["input_ids"]
        scores = []
        for label in ("neg", "pos"):
            word_scores = []
            for w in WORDS[label]:
                cont = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + cont[:-1]])
                with torch.no_grad():
                    out = lm(input_ids=ids, attention_mask=torch.ones(1, 4 + ids.shape[1], dtype=torch.long),
                             position_ids=torch.arange(ids.shape[1])[None], cache=_prefix_cache(kv, lm.config))
                lp = out.logits[0].float().log_softmax(-1)
                word_scores.append(sum(float(lp[len(prompt) - 1 + t, cont[t]]) for t in range(len(cont))))
            scores.append(np.mean(word_scores))
        np.testing.assert_allclose(got[i], scores, atol=1e-5, rtol=0)


def test_masked_prefix_scores_equal_a_plain_forward_with_the_prefix_cache(bert):
    model, tokenizer = bert
    clf = fit(model, tokenizer, "{text} It was [MASK].", "prefix", prefix_length=4)
    kv = clf.model_.kv_prefix.values().detach()
    lm = clf.model_.lm
    got = clf.decision_function(X)
    one = np.stack([clf.decision_function([x])[0] for x in X])
    np.testing.assert_allclose(got, one, atol=1e-5, rtol=0)
    mask_id = tokenizer.mask_token_id
    for i, text in enumerate(X):
        row = []
        for label in ("neg", "pos"):
            word_scores = []
            for w in WORDS[label]:
                target = tokenizer(w, add_special_tokens=False)["input_ids"]
                ids = tokenizer(f"{text} It was " + " ".join(["[MASK]"] * len(target)) + ".")["input_ids"]
                ids = torch.tensor([ids])
                where = (ids[0] == mask_id).nonzero()[:, 0]
                with torch.no_grad():
                    out = lm(input_ids=ids, attention_mask=torch.zeros(1, 1, ids.shape[1], 4 + ids.shape[1]),
                             position_ids=torch.arange(ids.shape[1])[None], cache=_prefix_cache(kv, lm.config))
                lp = out.logits[0, where].float().log_softmax(-1)
                word_scores.append(sum(float(lp[t, target[t]]) for t in range(len(target))))
            row.append(np.mean(word_scores))
        np.testing.assert_allclose(got[i], row, atol=1e-5, rtol=0)


def test_a_model_whose_attention_takes_neither_a_cache_nor_the_interface_cannot_take_prefixes(tokenizers, _models):
    model = _models["deberta-v2"]  # disentangled attention: its own scores, not transformers' attention functions
    implementation = model.config._attn_implementation
    with pytest.raises(ValueError, match="DebertaV2ForMaskedLM cannot take key/value prefixes: .*attention interface"
                                         ".*'lora'"):
        fit(model, tokenizers["unigram"], "{text} It was [MASK].", "prefix")
    assert model.config._attn_implementation == implementation  # left as it was


# ---------------------------------------------------------------------- prefixes through the attention interface
@pytest.fixture(scope="module")
def modernbert(tokenizers):
    from conftest import make_model

    return make_model("modernbert", tokenizers["bpe"]), tokenizers["bpe"]


def test_the_attention_route_gives_the_cache_routes_scores(bert):
    """BERT takes both: the same prefixes through the attention interface score as through a cache."""
    model, tokenizer = bert
    clf = fit(copy.deepcopy(model), tokenizer, "{text} It was [MASK].", "prefix", prefix_length=4)
    assert clf.model_.kv_prefix.route == "cache"
    by_cache = clf.decision_function(X)
    clf.model_.kv_prefix.route = "attention"
    by_attention = clf.decision_function(X)
    np.testing.assert_allclose(by_attention, by_cache, atol=1e-5, rtol=0)
    assert clf.model_.lm.config._attn_implementation == "promptcls_prefix_sdpa"


@pytest.mark.parametrize("family", ["albert", "modernbert"])
def test_encoders_without_a_cache_take_prefixes_through_their_attention(tokenizers, _models, modernbert, family, tmp_path):
    from conftest import TOKENIZER_OF

    model, tokenizer = modernbert if family == "modernbert" else (_models[family], tokenizers[TOKENIZER_OF[family]])
    model = copy.deepcopy(model)
    template = "{text} It was [MASK]."
    other = zero_shot(model, tokenizer, template)  # shares the model with the prefix task below
    base = other.decision_function(X)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf = fit(model, tokenizer, template, "prefix", prefix_length=3, learning_rate=1e-2)
    assert clf.model_.kv_prefix.route == "attention"
    kv = clf.model_.kv_prefix.values()
    assert tuple(kv.shape) == prefix_shape(model.config, 3)  # ALBERT: one prefix per pass of its shared layer
    rows = clf.model_.encode([{"text": x} for x in X])
    with torch.no_grad():  # hidden, the prefix leaves the base model's scores; shown, it moves them
        clf.model_.kv_prefix.visible = False
        np.testing.assert_allclose(clf.model_.class_scores(rows).numpy(), base, atol=1e-5, rtol=0)
        clf.model_.kv_prefix.visible = True
    got = clf.decision_function(X)
    assert not np.allclose(got, base, atol=1e-4, rtol=0)
    one = np.stack([clf.decision_function([x])[0] for x in X])
    np.testing.assert_allclose(got, one, atol=1e-5, rtol=0)  # padding: mask columns are right
    np.testing.assert_allclose(other.decision_function(X), base, atol=1e-6, rtol=0)  # others pass through unchanged
    assert set(clf.trained_parameters_) == {"kv_prefix.prefix"}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    # the trainer takes the prefix alone, and the loss's gradient reaches it through the wrapped attention
    from promptcls.training import trainable_parameters

    model_side, prompt_side = trainable_parameters(clf.model_, clf.parts_)
    assert set(model_side) | set(prompt_side) == {"kv_prefix.prefix"}
    prefix = clf.model_.kv_prefix.prefix
    prefix.requires_grad_(True)
    clf.model_.class_scores(rows).logsumexp(-1).sum().backward()
    assert bool(prefix.grad.abs().sum() > 0) and bool(prefix.grad[-1].abs().sum() > 0)  # the last layer's too
    prefix.grad = None
    prefix.requires_grad_(False)
    clf.save_pretrained(tmp_path / "saved")
    stored = load_file(tmp_path / "saved" / "trained.safetensors")
    stored.pop("calibration", None)
    assert {k: tuple(v.shape) for k, v in stored.items()} == {"kv_prefix.prefix": prefix_shape(model.config, 3)}
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), got)
    assert model.config._attn_implementation == "sdpa"  # the caller's model keeps its own attention


def test_a_switched_attention_implementation_is_switched_back(tokenizers, _models):
    """A user who sets the model's attention afterwards does not silently lose the prefixes."""
    model = copy.deepcopy(_models["albert"])
    clf = fit(model, tokenizers["unigram"], "{text} It was [MASK].", "prefix", prefix_length=3, learning_rate=1e-2)
    got = clf.decision_function(X)
    clf.model_.lm.set_attn_implementation("eager")
    np.testing.assert_allclose(clf.decision_function(X), got, atol=1e-5, rtol=0)
    assert clf.model_.lm.config._attn_implementation == "promptcls_prefix_eager"


# ---------------------------------------------------------------------- gradients and saves
@pytest.mark.parametrize("mode", ["prefix", "lora", "ia3", "prompt+lora"])
def test_training_moves_only_the_parts_and_the_save_holds_only_them(lm, mode, tmp_path):
    name, model, tokenizer, template = lm
    if "prompt" in mode:
        template = "[SOFT*2] " + template
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf = fit(model, tokenizer, template, mode, learning_rate=1e-2, prompt_learning_rate=1e-2)
    for n, p in model.named_parameters():  # the caller's model is untouched
        assert torch.equal(p, before[n]), n
    trained = set(clf.trained_parameters_)
    params = dict(clf.model_.named_parameters())
    marker = {"prefix": "kv_prefix.", "lora": ".lora_", "ia3": ".ia3_"}
    for part in mode.split("+"):
        key = marker.get(part, "soft_prompt.")
        assert any(key in n for n in trained), (part, sorted(trained)[:4])
    assert all(any(k in n for k in (*marker.values(), "soft_prompt.")) for n in trained)
    base_names = {n.replace(".base_layer.", "."): n for n in params if n not in trained}
    for short, n in base_names.items():  # every base weight is as it was
        original = short.split(".", 1)[1]
        if original in before:
            assert torch.equal(params[n], before[original]), n
    for n in trained:  # the adapters left their exact start (B = 0, IA3 vectors = 1)
        if "lora_B" in n:
            assert bool(params[n].abs().sum() > 0), n
        if "ia3_" in n:
            assert not torch.equal(params[n], torch.ones_like(params[n])), n
    # counts as PEFT gives them
    counts = clf.trainable_parameters_
    assert counts["trainable"] == sum(params[n].numel() for n in trained)
    assert counts["share"] == pytest.approx(counts["trainable"] / counts["total"])
    # the save: only the parts' tensors, at their sizes
    clf.save_pretrained(tmp_path / "saved")
    stored = load_file(tmp_path / "saved" / "trained.safetensors")
    stored.pop("calibration", None)
    assert set(stored) == trained
    if "lora" in mode:
        layers = dict(clf.model_.lm.named_modules())
        rank = clf.lora_rank
        for target in block_linear_layers(model):
            a = stored[f"{clf.model_.lm_prefix}.{target}.lora_A.default.weight"]
            b = stored[f"{clf.model_.lm_prefix}.{target}.lora_B.default.weight"]
            base = layers[target].base_layer.weight
            assert a.numel() + b.numel() == rank * (base.shape[0] + base.shape[1])
    if mode == "prefix":
        assert tuple(stored["kv_prefix.prefix"].shape) == prefix_shape(model.config, 16)
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    assert loaded.trainable_parameters_ == counts


def test_gradients_flow_into_the_parts_parameters_and_the_trainer_takes_exactly_them(lm):
    name, model, tokenizer, template = lm
    for mode in ("prefix", "lora"):
        clf = fit(model, tokenizer, template, mode)
        pm = clf.model_
        trained = set(clf.trained_parameters_)
        for p in pm.parameters():
            p.requires_grad_(True)
            p.grad = None
        pm.train()
        loss = pm.class_scores(pm.encode([{"text": x} for x in X[:3]])).logsumexp(-1).sum()
        loss.backward()
        for p in pm.parameters():
            p.requires_grad_(False)
        grads = {n for n, p in pm.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        assert trained & grads, mode
        # the trainer's own set: requires_grad only on the parts during fit
        from promptcls.training import trainable_parameters

        model_side, prompt_side = trainable_parameters(pm, clf.parts_)
        assert set(model_side) | set(prompt_side) == trained


def test_head_plus_lora_trains_both_and_nothing_else(bert):
    model, tokenizer = bert
    clf = fit(model, tokenizer, "{text} It was [MASK].", "head+lora")
    trained = clf.trained_parameters_
    assert any(".lora_" in n for n in trained)
    assert set(clf.model_.head_parameters()) <= set(trained)
    assert not any(".encoder." in n and ".lora_" not in n for n in trained)


def test_prefix_mlp_is_folded_after_training(bert, tmp_path):
    model, tokenizer = bert
    clf = fit(model, tokenizer, "{text} It was [MASK].", "prefix", prefix_length=5, prefix_hidden_size=12)
    assert clf.trained_parameters_ == ["kv_prefix.prefix"]
    assert clf.model_.kv_prefix.mlp is None
    clf.save_pretrained(tmp_path / "p")
    stored = load_file(tmp_path / "p" / "trained.safetensors")
    assert set(stored) - {"calibration"} == {"kv_prefix.prefix"}
    assert tuple(stored["kv_prefix.prefix"].shape) == prefix_shape(model.config, 5)
    loaded = PromptClassifier.from_pretrained(tmp_path / "p", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    with pytest.raises(ValueError, match="from_pretrained cannot change.*prefix_length"):
        PromptClassifier.from_pretrained(tmp_path / "p", model=model, tokenizer=tokenizer, prefix_length=3)


def test_merged_lora_scores_like_unmerged(lm):
    name, model, tokenizer, template = lm
    clf = fit(model, tokenizer, template, "lora", learning_rate=5e-2, max_steps=3)
    unmerged = clf.decision_function(X)
    assert not np.allclose(unmerged, zero_shot(model, tokenizer, template).decision_function(X), atol=1e-4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clf.merge_adapters()
    assert all(m.merged for m in clf.model_.lm.modules() if hasattr(m, "merged"))
    np.testing.assert_allclose(clf.decision_function(X), unmerged, atol=1e-5, rtol=0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the caller's weights
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        fit(model, tokenizer, template, "prefix", prefix_length=2).merge_adapters()


# ---------------------------------------------------------------------- prompt-tuning starts
def test_soft_prompt_starts(bert):
    model, tokenizer = bert
    table = model.get_input_embeddings().weight.detach()
    words = {"neg": ["bad"], "pos": ["good"]}
    clf = PromptClassifier(model, Template("[SOFT*3] {text} It was [MASK].", soft_init="label-words"), words,
                           tokenizer=tokenizer, progress=False).fit()
    start = clf.model_.soft_prompt.embedding.detach()
    ids = [tokenizer.convert_tokens_to_ids(w) for w in ("bad", "good")]
    torch.testing.assert_close(start[:2], table[ids])  # the label words, then a sampled token
    assert clf.model_.soft_prompt.embedding.shape == (3, table.shape[1])
    uniform = PromptClassifier(model, Template("[SOFT*50] {text} [MASK].", soft_init="uniform"), words,
                               tokenizer=tokenizer, progress=False).fit().model_.soft_prompt.embedding.detach()
    spread = float(table.std()) * 3**0.5
    assert float(uniform.abs().max()) <= spread and float(uniform.std()) == pytest.approx(float(table.std()), rel=0.2)
    assert not any(torch.equal(row, t) for row in uniform for t in table)
    vocab = PromptClassifier(model, "[SOFT*2] {text} [MASK].", words, tokenizer=tokenizer,
                             progress=False).fit().model_.soft_prompt.embedding.detach()
    assert all(any(torch.equal(row, t) for t in table) for row in vocab)  # sampled vocabulary rows
    t = Template("[SOFT*2] {text} [MASK].", soft_init="label-words")
    assert Template.from_dict(t.to_dict()) == t and "soft_init='label-words'" in repr(t)
    with pytest.raises(ValueError, match="soft_init='uniform' starts \\[SOFT\\] and \\[SOFT\\*n\\] slots, but the template"):
        Template("[SOFT:it was] {text} [MASK].", soft_init="uniform")
    with pytest.raises(ValueError, match="soft_init='zeros' is not one of 'vocab', 'uniform', 'label-words'"):
        Template("[SOFT] {text} [MASK].", soft_init="zeros")


# ---------------------------------------------------------------------- many saves, one base model
def test_saves_loaded_onto_one_model_hold_its_weights_once(bert, tmp_path):
    model, tokenizer = bert
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved, expected = [], []
    for mode, template in (("head", "{text} It was [MASK]."), ("prompt", "[SOFT*2] {text} It was [MASK]."),
                           ("lora", "{text} It was [MASK]."), ("prefix", "{text} It was [MASK]."),
                           ("full", "{text} It was [MASK].")):
        clf = fit(model, tokenizer, template, mode, learning_rate=1e-2, prompt_learning_rate=1e-2)
        clf.save_pretrained(tmp_path / mode)
        saved.append(tmp_path / mode)
        expected.append(clf.decision_function(X))
    loaded = [PromptClassifier.from_pretrained(d, model=model, tokenizer=tokenizer) for d in saved]
    for clf, scores in zip(loaded, expected):
        np.testing.assert_array_equal(clf.decision_function(X), scores)
    storage = {}
    for clf in loaded:
        for p in clf.model_.parameters():
            storage[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    base = sum(p.untyped_storage().nbytes() for p in {p.untyped_storage().data_ptr(): p for p in model.parameters()}.values())
    own = sum(t.numel() * 4 for d in saved for n, t in load_file(d / "trained.safetensors").items() if n != "calibration")
    assert sum(storage.values()) == base + own  # the base weights once, plus each save's own tensors
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    full = loaded[-1].model_.lm  # a full save keeps its output layer tied to its own input embeddings
    assert full.get_output_embeddings().weight is full.get_input_embeddings().weight
