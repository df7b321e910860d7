"""Automatic label words: rank whole vocabulary words by how well they pick out each class.

In the spirit of LM-BFF's automatic label search (Gao et al. 2021) and PETAL (Schick et al.
2020): the template is run over the labelled examples once; each whole word ``w`` of the
vocabulary (a single token that is a word after a space, never a sub-word piece) gets, for each
class ``c``, the score

    mean log P(w | x in c)  -  mean log P(w | x not in c)

(a log-likelihood ratio: high when the model predicts ``w`` for this class and not for the
others). Each word goes to at most one class, the one it scores best for; each class keeps its
``k`` best words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .estimator import resolve_device
from .inputs import to_rows
from .loading import load_model
from .modeling import PromptModel, build_prompt_model
from .template import Template
from .verbalizer import Verbalizer

__all__ = ["search_label_words", "whole_word_candidates"]


def whole_word_candidates(tokenizer: Any, min_length: int = 2) -> tuple[list[int], list[str]]:
    """Token ids and words of the vocabulary entries that are whole alphabetic words after a space."""
    special = set(tokenizer.all_special_ids)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    ids, words = [], []
    for token, i in vocab:
        if i in special:
            continue
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if len(word) >= min_length and word.isalpha():
            ids.append(i)
            words.append(word)
    if not ids:
        return [], []
    prefix = len(tokenizer("x", add_special_tokens=False)["input_ids"])
    encoded = tokenizer(["x " + w for w in words], add_special_tokens=False)["input_ids"]
    keep = [k for k, (i, enc) in enumerate(zip(ids, encoded)) if enc[prefix:] == [i]]  # one token, as in running text
    return [ids[k] for k in keep], [words[k] for k in keep]


@torch.inference_mode()
def _mask_log_probs(model: PromptModel, rows: list[dict[str, str]], batch_size: int) -> torch.Tensor:
    """(N, V) full-vocabulary log-probabilities at a one-token answer slot."""
    model.eval()
    encoded = model.encode(rows)
    out = []
    for start in range(0, len(encoded), batch_size):
        out.append(model.slot_log_probs(encoded[start : start + batch_size]).cpu())
    return torch.cat(out)


def search_label_words(
    model: Any,
    template: str | Template | Mapping,
    X: Any,
    y: Any,
    *,
    k: int = 1,
    tokenizer: Any = None,
    columns: Mapping[str, str] | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    min_length: int = 2,
    exclude: set[str] | None = None,
    family: str = "auto",
    gguf_file: str | None = None,
) -> Verbalizer:
    """The ``k`` best label words per class for ``template`` on labelled examples ``(X, y)``.

    Example:
        >>> words = search_label_words("roberta-base", "{text} It was [MASK].", texts, labels, k=3)  # doctest: +SKIP
        >>> PromptClassifier("roberta-base", "{text} It was [MASK].", words).fit()  # doctest: +SKIP
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    template = Template.coerce(template)
    lm, tokenizer = load_model(model, tokenizer, family=family, gguf_file=gguf_file)
    lm.to(resolve_device(device))
    prompt_model = build_prompt_model(lm, tokenizer, template, None, max_length=max_length, family=family)
    rows = to_rows(X, template.fields, columns)
    labels = list(y)
    if len(labels) != len(rows):
        raise ValueError(f"X has {len(rows)} rows but y has {len(labels)} labels")
    classes = list(dict.fromkeys(sorted(labels, key=str)))
    if len(classes) < 2:
        raise ValueError(f"label search needs examples of at least two classes, got {classes}")

    ids, words = whole_word_candidates(tokenizer, min_length)
    if exclude:
        keep = [j for j, w in enumerate(words) if w.lower() not in {e.lower() for e in exclude}]
        ids, words = [ids[j] for j in keep], [words[j] for j in keep]
    if len(ids) < k * len(classes):
        raise ValueError(f"the vocabulary has only {len(ids)} whole-word candidates for {len(classes)} classes x k={k}")
    log_probs = _mask_log_probs(prompt_model, rows, batch_size)[:, ids]  # (N, Vc)
    target = np.array([classes.index(label) for label in labels])
    scores = torch.stack(
        [log_probs[target == c].mean(0) - log_probs[target != c].mean(0) for c in range(len(classes))]
    )  # (C, Vc)

    chosen: dict[int, list[str]] = {c: [] for c in range(len(classes))}
    taken: set[int] = set()
    order = scores.flatten().argsort(descending=True).tolist()
    best_class = scores.argmax(0)
    for strict in (True, False):  # first each word for its best class only; then fill classes still short
        for flat in order:
            c, j = divmod(flat, scores.shape[1])
            if j in taken or len(chosen[c]) >= k or (strict and int(best_class[j]) != c):
                continue
            chosen[c].append(words[j])
            taken.add(j)
        if all(len(v) >= k for v in chosen.values()):
            break
    return Verbalizer({classes[c]: chosen[c] for c in range(len(classes))})
