"""Tiny random masked LMs with locally made tokenizers: no hub, no network.

Three tokenizer families, as the real models use them:
- WordPiece from a hand-written vocab file (BERT, DistilBERT, ELECTRA),
- byte-level BPE trained with ``tokenizers`` (RoBERTa),
- a Metaspace/Unigram tokenizer trained with ``tokenizers`` (ALBERT, DeBERTa-v2; SentencePiece-style).
Models are built once per session; tests that train work on copies.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

transformers.logging.set_verbosity_error()

WORDS = (
    "the a an it was is this that movie film food service great good bad awful fine terrible fantastic "
    "wonderful poor ok yes no maybe true false really very quite and or but not so all in on of to "
    "i you he she we they love hate liked boring fun nice price cheap place staff x n / ? , . ! : ' \""
).split()

CORPUS = [
    "the movie was great and the food was good .",
    "it was terrible , really awful and boring .",
    "this film is fantastic , a wonderful and fun movie !",
    "the service was poor and the price was not cheap .",
    "i love this place , the staff are nice .",
    "she hated it , it was bad , not fine at all .",
    "is it true ? yes . no . maybe . false .",
    "we liked the film , it was ok , quite good really .",
    "they say the food is great but the service is terrible .",
] * 20


def _wordpiece_vocab(path: Path) -> Path:
    # "terrible" and "fantastic" are not whole entries: they split into pieces (multi-token label words)
    pieces = ["terr", "##ible", "fan", "##tas", "##tic", "##s", "##ed", "##ing", "##ly", "wonder", "##ful"]
    words = [w for w in WORDS if w not in {"terrible", "fantastic", "wonderful"}]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words + pieces + letters)]
    vocab += ["##" + c for c in letters if "##" + c not in vocab]
    path.write_text("\n".join(vocab) + "\n")
    return path


def make_wordpiece_tokenizer(tmp_path: Path) -> PreTrainedTokenizerFast:
    vocab_file = _wordpiece_vocab(tmp_path / "vocab.txt")
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def make_bpe_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # "terrible" and "fantastic" stay rare, so they split into several tokens
    tok.train_from_iterator([line.replace("terrible", "terr").replace("fantastic", "fan") for line in CORPUS], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True)])  # as in roberta-base

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
        model_input_names=["input_ids", "attention_mask"],
    )


def make_unigram_tokenizer() -> PreTrainedTokenizerFast:
    # a hand-written SentencePiece-style vocabulary: whole words as "▁word", a few split words, characters
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    whole = ["▁" + w for w in WORDS if w not in {"terrible", "fantastic", "wonderful"}]
    pieces = ["▁terr", "ible", "▁fan", "tas", "tic", "▁wonder", "ful", "▁"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [(t, 0.0) for t in specials] + [(t, -2.0) for t in whole + pieces] + [(t, -8.0) for t in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=1, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials[:4]])
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=False, special=True)])  # as in albert-base-v2
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token=AddedToken("[MASK]", lstrip=True, rstrip=False),
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def make_model(family: str, tokenizer) -> torch.nn.Module:
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    if family == "bert":
        config = transformers.BertConfig(vocab_size=vocab, max_position_embeddings=128, pad_token_id=pad, **TINY)
    elif family == "roberta":
        config = transformers.RobertaConfig(
            vocab_size=vocab, max_position_embeddings=130, pad_token_id=pad, bos_token_id=0, eos_token_id=2,
            type_vocab_size=1, **TINY,
        )
    elif family == "albert":
        config = transformers.AlbertConfig(
            vocab_size=vocab, embedding_size=16, max_position_embeddings=128, pad_token_id=pad, **TINY
        )
    elif family == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=128, pad_token_id=pad
        )
    elif family == "deberta-v2":
        config = transformers.DebertaV2Config(
            vocab_size=vocab, max_position_embeddings=128, pad_token_id=pad, relative_attention=True,
            position_buckets=16, pos_att_type=["p2c", "c2p"], type_vocab_size=2, **TINY,
        )
    elif family == "modernbert":  # alternating global and sliding-window (local) attention, rotary positions
        config = transformers.ModernBertConfig(
            vocab_size=vocab, max_position_embeddings=128, pad_token_id=pad, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, global_attn_every_n_layers=2, local_attention=4,
            hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
        )
    elif family == "electra":
        config = transformers.ElectraConfig(
            vocab_size=vocab, embedding_size=16, max_position_embeddings=128, pad_token_id=pad, **TINY
        )
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(config)
    # random but not uniform output bias, so log-probs differ clearly between words
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.shape == (vocab,):
                p.normal_(0, 1.0)
    return model.eval()


FAMILIES = ["bert", "roberta", "albert", "distilbert", "deberta-v2", "electra", "modernbert"]
TOKENIZER_OF = {
    "bert": "wordpiece", "distilbert": "wordpiece", "electra": "wordpiece",
    "roberta": "bpe", "albert": "unigram", "deberta-v2": "unigram", "modernbert": "bpe",
}


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    return {
        "wordpiece": make_wordpiece_tokenizer(tmp_path_factory.mktemp("wp")),
        "bpe": make_bpe_tokenizer(),
        "unigram": make_unigram_tokenizer(),
    }


@pytest.fixture(scope="session")
def _models(tokenizers):
    return {f: make_model(f, tokenizers[TOKENIZER_OF[f]]) for f in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request, tokenizers, _models):
    """(name, model, tokenizer) for each model family."""
    name = request.param
    return name, _models[name], tokenizers[TOKENIZER_OF[name]]


@pytest.fixture
def bert(tokenizers, _models):
    return _models["bert"], tokenizers["wordpiece"]


@pytest.fixture
def roberta(tokenizers, _models):
    return _models["roberta"], tokenizers["bpe"]


@pytest.fixture
def fresh_bert(tokenizers, _models):
    """A private copy, free to train."""
    return copy.deepcopy(_models["bert"]), tokenizers["wordpiece"]


@pytest.fixture(scope="session")
def _trainable_bert(tokenizers):
    # larger initial weights and no dropout: a random tiny model whose mask state depends on its input
    tokenizer = tokenizers["wordpiece"]
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForMaskedLM.from_config(config).eval(), tokenizer


@pytest.fixture
def trainable_bert(_trainable_bert):
    return _trainable_bert
