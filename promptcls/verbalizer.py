"""Verbalizers: label words per class, their tokens, and the reduction of word scores to class scores."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch

__all__ = ["Verbalizer", "Aggregation", "LabelWords"]


class Aggregation(str, Enum):
    """How a class score is made from the scores of its label words.

    ``mean``        mean of the words' full-vocabulary log-probabilities at the mask (default;
                    the same argmax as PET and OpenPrompt)
    ``logsumexp``   log of the summed probability of the class's words
    ``max``         the best word's log-probability
    ``mean_logit``  PET's mean raw logit (single-token words only)
    """

    MEAN = "mean"
    LOGSUMEXP = "logsumexp"
    MAX = "max"
    MEAN_LOGIT = "mean_logit"


class Verbalizer:
    """Ordered classes, each with one or more label words.

    Example:
        >>> v = Verbalizer({"negative": ["terrible"], "positive": ["great", "good"]})
        >>> v.classes
        ('negative', 'positive')
        >>> v.words["positive"]
        ('great', 'good')
    """

    def __init__(
        self,
        label_words: Mapping[Hashable, str | Sequence[str]] | Sequence[str | Sequence[str]],
        aggregation: str | Aggregation = "mean",
    ) -> None:
        if isinstance(label_words, Mapping):
            items = list(label_words.items())
        elif isinstance(label_words, Sequence) and not isinstance(label_words, str):
            items = list(enumerate(label_words))
        else:
            raise TypeError(
                "label words are a dict {class: [words]} or a list of word lists (classes 0..C-1), "
                f"got {type(label_words).__name__}"
            )
        if len(items) < 2:
            raise ValueError(f"a verbalizer needs at least two classes, got {len(items)}: {label_words!r}")
        try:
            self.aggregation = Aggregation(aggregation)
        except ValueError:
            choices = ", ".join(repr(a.value) for a in Aggregation)
            raise ValueError(f"aggregation={aggregation!r} is not one of {choices}") from None
        words: dict[Hashable, tuple[str, ...]] = {}
        owner: dict[str, Hashable] = {}
        for label, ws in items:
            if isinstance(label, np.generic):
                label = label.item()  # numpy class keys (from pandas labels) as plain values: they save as JSON
            if not isinstance(label, Hashable) or isinstance(label, (list, dict, set)):
                raise TypeError(f"class labels must be hashable, got {label!r}")
            ws = (ws,) if isinstance(ws, str) else tuple(ws)
            if not ws:
                raise ValueError(f"class {label!r} has no label words: give it at least one")
            for w in ws:
                if not isinstance(w, str) or not w.strip():
                    raise ValueError(f"class {label!r} has an empty or non-string label word {w!r}")
                if w != w.strip():
                    raise ValueError(f"label word {w!r} of class {label!r} has surrounding spaces; write {w.strip()!r}")
                if w in owner:
                    where = "twice in class" if owner[w] == label else f"in classes {owner[w]!r} and"
                    raise ValueError(f"label word {w!r} appears {where} {label!r}: each word belongs to one class")
                owner[w] = label
            words[label] = ws
        self.words: dict[Hashable, tuple[str, ...]] = words
        self.classes: tuple[Hashable, ...] = tuple(words)

    def __len__(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"label": label, "words": list(ws)} for label, ws in self.words.items()],
            "aggregation": self.aggregation.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verbalizer:
        if "classes" not in data:
            raise ValueError(f"a verbalizer dict needs the key 'classes', got keys {sorted(data)}")
        classes = data["classes"]
        return cls({c["label"]: c["words"] for c in classes}, aggregation=data.get("aggregation", "mean"))

    @classmethod
    def coerce(cls, verbalizer: Verbalizer | Mapping | Sequence) -> Verbalizer:
        if isinstance(verbalizer, Verbalizer):
            return verbalizer
        if isinstance(verbalizer, Mapping) and "classes" in verbalizer and isinstance(verbalizer["classes"], list):
            return cls.from_dict(verbalizer)
        return cls(verbalizer)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verbalizer) and json.dumps(self.to_dict()) == json.dumps(other.to_dict())

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict()))

    def __repr__(self) -> str:
        words = {k: list(v) for k, v in self.words.items()}
        agg = f", aggregation={self.aggregation.value!r}" if self.aggregation != Aggregation.MEAN else ""
        return f"Verbalizer({words!r}{agg})"


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of ``word`` as it appears in running text after a space.

    Probes the tokenizer instead of reading its class: ``"x great"`` is tokenized and the ids
    after those of ``"x"`` are the word's (``Ġgreat`` for byte-level BPE, ``▁great`` for
    SentencePiece, ``great`` for WordPiece).
    """
    prefix = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x " + word, add_special_tokens=False)["input_ids"]
    if full[: len(prefix)] != prefix or len(full) == len(prefix):
        raise ValueError(f"could not isolate the tokens of label word {word!r} with this tokenizer")
    return full[len(prefix) :]


@dataclasses.dataclass
class LabelWords:
    """A verbalizer bound to a tokenizer: token ids per word, words grouped by token count."""

    verbalizer: Verbalizer
    token_ids: list[list[int]]  # per word, in class order
    word_class: list[int]  # class index per word
    groups: dict[int, list[int]]  # n tokens -> word indices with n tokens
    #: (W,) log-priors subtracted from the word scores before aggregation (KPT's contextualized calibration)
    offsets: torch.Tensor | None = None
    #: (W,) which words count (KPT's frequency refinement drops the rest)
    keep: torch.Tensor | None = None

    @classmethod
    def build(cls, verbalizer: Verbalizer, tokenizer: Any, tokenize: Any = None) -> LabelWords:
        """Token ids of every label word; ``tokenize(word)`` gives them (default: as in running text after a space)."""
        tokenize = tokenize or (lambda word: word_token_ids(tokenizer, word))
        token_ids, word_class = [], []
        seen: dict[tuple[int, ...], tuple[str, Hashable]] = {}
        unk = tokenizer.unk_token_id
        for c, label in enumerate(verbalizer.classes):
            for w in verbalizer.words[label]:
                ids = tokenize(w)
                if not ids:
                    raise ValueError(f"label word {w!r} of class {label!r} gives no tokens with this tokenizer")
                if unk is not None and unk in ids:
                    pieces = tokenizer.convert_ids_to_tokens(ids)
                    raise ValueError(
                        f"label word {w!r} of class {label!r} becomes the unknown token {tokenizer.unk_token!r} "
                        f"({pieces}): choose a word in the model's vocabulary"
                    )
                same = seen.get(tuple(ids))
                if same is not None:
                    raise ValueError(
                        f"label words {same[0]!r} (class {same[1]!r}) and {w!r} (class {label!r}) are the same tokens "
                        f"for this tokenizer ({tokenizer.convert_ids_to_tokens(ids)}; it may lowercase or strip accents): "
                        "they would always score alike, so keep one of them"
                    )
                seen[tuple(ids)] = (w, label)
                token_ids.append(ids)
                word_class.append(c)
        if verbalizer.aggregation == Aggregation.MEAN_LOGIT:
            for word, ids in zip(_all_words(verbalizer), token_ids):
                if len(ids) > 1:
                    raise ValueError(
                        f"aggregation='mean_logit' needs single-token label words; {word!r} has {len(ids)} "
                        "tokens: use aggregation='mean'"
                    )
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(token_ids):
            groups.setdefault(len(ids), []).append(i)
        return cls(verbalizer, token_ids, word_class, dict(sorted(groups.items())))

    @property
    def max_tokens(self) -> int:
        return max(self.groups)

    def class_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, K) word indices per class, padded, and the (C, K) validity mask."""
        n_classes = len(self.verbalizer)
        per_class: list[list[int]] = [[] for _ in range(n_classes)]
        for w, c in enumerate(self.word_class):
            per_class[c].append(w)
        k = max(len(ws) for ws in per_class)
        index = torch.zeros(n_classes, k, dtype=torch.long)
        valid = torch.zeros(n_classes, k, dtype=torch.bool)
        for c, ws in enumerate(per_class):
            index[c, : len(ws)] = torch.tensor(ws)
            valid[c, : len(ws)] = True
        return index, valid

    def aggregate(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, W) word scores -> (B, C) class scores with the verbalizer's aggregation (over the kept words, each
        less its log-prior where priors are set)."""
        index, valid = self.class_index()
        index, valid = index.to(word_scores.device), valid.to(word_scores.device)
        if self.offsets is not None:
            word_scores = word_scores - self.offsets.to(word_scores.device, word_scores.dtype)
        if self.keep is not None:
            valid = valid & self.keep.to(word_scores.device)[index]
        per_class = word_scores[:, index]  # (B, C, K)
        agg = self.verbalizer.aggregation
        if agg in (Aggregation.MEAN, Aggregation.MEAN_LOGIT):
            per_class = per_class.masked_fill(~valid, 0.0)
            return per_class.sum(-1) / valid.sum(-1).to(per_class.dtype)
        per_class = per_class.masked_fill(~valid, float("-inf"))
        if agg == Aggregation.LOGSUMEXP:
            return per_class.logsumexp(-1)
        return per_class.max(-1).values


    def words_in_order(self) -> list[str]:
        """Every label word, in the order of ``token_ids`` (class by class)."""
        return _all_words(self.verbalizer)

    def kept_words(self) -> dict[Hashable, list[str]] | None:
        """{class: its words that ``keep`` keeps}, or None when no refinement dropped any."""
        if self.keep is None:
            return None
        kept: dict[Hashable, list[str]] = {c: [] for c in self.verbalizer.classes}
        for w, c, k in zip(self.words_in_order(), self.word_class, self.keep.tolist()):
            if k:
                kept[self.verbalizer.classes[c]].append(w)
        return kept


def _all_words(verbalizer: Verbalizer) -> list[str]:
    return [w for label in verbalizer.classes for w in verbalizer.words[label]]
