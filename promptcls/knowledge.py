"""Many label words per class from a few seeds: the expansion step of a knowledgeable verbalizer (KPT, Hu et
al. 2022), offline.

KPT takes its related words from external knowledge bases; none can be reached here, and a user may have
their own lists (give those as the verbalizer directly). :func:`expand_label_words` draws them from the model
itself instead: the vocabulary tokens whose input embeddings lie closest (cosine) to the class's seed words,
each token going to the class it is closest to. Only tokens that are whole words in running text (a word
that tokenizes back to that one token after a space) and alphabetic are taken; case variants of a word
already taken are skipped.

The rest of KPT is in :class:`promptcls.PromptClassifier`: ``word_refinement`` drops the words that are rare
at the slot on a support set of unlabeled texts (frequency refinement), ``word_calibration`` divides each
word's probability by its mean on that set (contextualized calibration), and the classes' words are then
averaged as any verbalizer's are. KPT's relevance refinement and its learned per-word weights are not
built.
"""

from __future__ import annotations

from typing import Any

import torch

from .verbalizer import Verbalizer, word_token_ids

__all__ = ["expand_label_words"]


def expand_label_words(model: Any, verbalizer: Any, tokenizer: Any = None, *, per_class: int = 50,
                       min_length: int = 3) -> dict[Any, list[str]]:
    """``{class: seed words}`` -> ``{class: the seeds, then up to per_class - len(seeds) nearest words}``.

    ``model``: a loaded transformers model (with ``tokenizer``), a hub id, a local path or the embedded
    default's name (``"smollm2"``). The result is a verbalizer for ``PromptClassifier`` (a dict of word
    lists, JSON-ready), in the seeds' class order.
    """
    from .loading import load_model

    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    seeds = Verbalizer.coerce(verbalizer)
    lm, tok = load_model(model, tokenizer)
    weight = lm.get_input_embeddings().weight.detach().float()
    unit = torch.nn.functional.normalize(weight, dim=-1)  # (V, d)
    vectors = []
    for label in seeds.classes:
        per_seed = []
        for word in seeds.words[label]:
            ids = word_token_ids(tok, word)
            per_seed.append(torch.nn.functional.normalize(weight[ids].mean(0), dim=-1))
        vectors.append(torch.stack(per_seed))  # (S_c, d)
    sims = torch.stack([(unit @ v.T).max(1).values for v in vectors])  # (C, V): closest seed of each class
    owner = sims.argmax(0)  # each token goes to its closest class
    special = set(tok.all_special_ids)
    taken = {w.lower() for label in seeds.classes for w in seeds.words[label]}
    out: dict[Any, list[str]] = {}
    for c, label in enumerate(seeds.classes):
        words = list(seeds.words[label])
        order = torch.argsort(sims[c].masked_fill(owner != c, float("-inf")), descending=True)
        for token in order.tolist():
            if len(words) >= per_class or owner[token] != c:
                break
            if token in special:
                continue
            word = tok.decode([token]).strip()
            if len(word) < min_length or not word.isalpha() or word.lower() in taken:
                continue
            try:
                if word_token_ids(tok, word) != [token]:
                    continue  # not a whole word in running text
            except ValueError:
                continue
            taken.add(word.lower())
            words.append(word)
        out[label] = words
    return out

