from __future__ import annotations

import json

import pytest
import torch

from promptcls import Verbalizer
from promptcls.verbalizer import LabelWords, word_token_ids


def test_classes_keep_order_and_types():
    v = Verbalizer({1: "great", 0: ["terrible", "bad"]})
    assert v.classes == (1, 0)
    assert v.words[0] == ("terrible", "bad")
    assert Verbalizer([["bad"], ["good"]]).classes == (0, 1)


def test_json_round_trip_keeps_label_types():
    v = Verbalizer({0: ["bad"], 1: ["good"]}, aggregation="logsumexp")
    back = Verbalizer.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v and back.classes == (0, 1) and back.aggregation.value == "logsumexp"


@pytest.mark.parametrize(
    "words, message",
    [
        ({"a": ["good"], "b": []}, "class 'b' has no label words"),
        ({"a": ["good"], "b": ["good"]}, "'good' appears in classes 'a' and 'b'"),
        ({"a": ["good", "good"], "b": ["bad"]}, "'good' appears twice in class 'a'"),
        ({"a": [" good"], "b": ["bad"]}, "surrounding spaces"),
        ({"a": ["good"]}, "at least two classes"),
    ],
)
def test_bad_verbalizers(words, message):
    with pytest.raises(ValueError) as err:
        Verbalizer(words)
    assert message in str(err.value)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation='median' is not one of"):
        Verbalizer({"a": "x", "b": "y"}, aggregation="median")


def test_words_after_a_space_per_tokenizer_family(tokenizers):
    assert tokenizers["bpe"].convert_ids_to_tokens(word_token_ids(tokenizers["bpe"], "great")) == ["Ġgreat"]
    assert tokenizers["unigram"].convert_ids_to_tokens(word_token_ids(tokenizers["unigram"], "great")) == ["▁great"]
    wp = tokenizers["wordpiece"]
    assert wp.convert_ids_to_tokens(word_token_ids(wp, "terrible")) == ["terr", "##ible"]


def test_unknown_word_is_an_error(tokenizers):
    v = Verbalizer({"a": ["great"], "b": ["zebra€"]})
    with pytest.raises(ValueError, match="'zebra€' of class 'b' becomes the unknown token"):
        LabelWords.build(v, tokenizers["wordpiece"])


def test_mean_logit_needs_single_token_words(tokenizers):
    v = Verbalizer({"a": ["great"], "b": ["terrible"]}, aggregation="mean_logit")
    with pytest.raises(ValueError, match="'terrible' has 2 tokens"):
        LabelWords.build(v, tokenizers["wordpiece"])


def test_groups_by_token_count(tokenizers):
    lw = LabelWords.build(Verbalizer({"a": ["terrible", "bad"], "b": ["fantastic", "good"]}), tokenizers["wordpiece"])
    assert lw.groups == {1: [1, 3], 2: [0], 3: [2]}
    assert lw.word_class == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("mean", [[-1.5, -3.0]]),
        ("max", [[-1.0, -3.0]]),
        ("logsumexp", [[float(torch.tensor([-1.0, -2.0]).logsumexp(0)), -3.0]]),
    ],
)
def test_aggregations(tokenizers, aggregation, expected):
    lw = LabelWords.build(Verbalizer({"a": ["great", "good"], "b": ["bad"]}, aggregation), tokenizers["wordpiece"])
    got = lw.aggregate(torch.tensor([[-1.0, -2.0, -3.0]]))
    torch.testing.assert_close(got, torch.tensor(expected))
