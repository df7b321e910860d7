"""Demonstrations in context (LM-BFF, Gao et al. 2021; with a causal LM, in-context learning).

Each prompt gets one labelled example per class, rendered as the template with the example's text and its
class's first label word in the answer slot, at the template's ``[DEMOS]`` slot (without one: after the
prompt for a masked LM, before it for a causal LM). The examples come from the labelled data ``fit`` was
given (its pool), chosen

- ``"random"``: at random within each class;
- ``"similar"``: at random among the half of each class most similar to the prompt's text, by the cosine
  of mean-pooled sentence embeddings from the classifier's own encoder (LM-BFF uses SBERT; with the offline
  all-MiniLM-L6-v2 the two are the same model).

An example is never its own demonstration (a pool row equal to the row being scored is skipped). Each draw
puts its examples in a random order (in a fixed class order a causal LM favours the class it saw last, Zhao
et al. 2021's recency bias). Draws are seeded by the classifier's seed, the set number and the row's text: a
row gets the same demonstrations in any batch. At prediction the class log-probabilities are averaged over ``demonstration_sets`` draws; each
training example keeps one draw for the whole fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .template import DEMOS_KEY, Template

__all__ = ["DemonstrationPool", "STRATEGIES"]

STRATEGIES = ("random", "similar")


def _key(row: dict[str, str]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if k != DEMOS_KEY))


class DemonstrationPool:
    """Labelled rows to draw demonstrations from, and how to render and pick them."""

    def __init__(self, template: Template, rows: Sequence[dict[str, str]], labels: Sequence[Any],
                 answers: dict[Any, str], strategy: str, seed: int, separator: str,
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"demonstrations={strategy!r} is not one of {', '.join(map(repr, STRATEGIES))} or None")
        self.template, self.strategy, self.seed, self.separator = template, strategy, int(seed), separator
        self.rows = [{k: v for k, v in r.items() if k != DEMOS_KEY} for r in rows]
        self.labels = list(labels)
        self.classes = list(answers)
        missing = [c for c in self.classes if c not in set(self.labels)]
        if missing:
            raise ValueError(f"demonstrations need a labelled example of every class; the data has none of "
                             f"{missing}: add examples of them")
        self.texts = [template.demonstration(r, answers[y]) for r, y in zip(self.rows, self.labels)]
        self.by_class = {c: [i for i, y in enumerate(self.labels) if y == c] for c in self.classes}
        self.keys = [_key(r) for r in self.rows]
        self._embed = embed
        self._pool_vectors = None

    def _query_text(self, row: dict[str, str]) -> str:
        return " ".join(str(row[f]) for f in self.template.fields)

    def _vectors(self, texts: list[str]) -> np.ndarray:
        v = np.asarray(self._embed(texts), dtype=np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def fill(self, rows: Sequence[dict[str, str]], sets: int = 1) -> tuple[list[dict[str, str]], list[int]]:
        """Each row with ``sets`` demonstration sets: (the filled rows, the row number each comes from)."""
        similar = None
        if self.strategy == "similar":
            if self._pool_vectors is None:
                self._pool_vectors = self._vectors([self._query_text(r) for r in self.rows])
            similar = self._vectors([self._query_text(r) for r in rows]) @ self._pool_vectors.T  # (n, pool)
        out, owner = [], []
        for i, row in enumerate(rows):
            key = _key(row)
            digest = hashlib.sha256(repr(key).encode()).digest()
            for s in range(sets):
                rng = np.random.default_rng([self.seed, s, int.from_bytes(digest[:8], "little")])
                picks = []
                for c in self.classes:
                    candidates = [j for j in self.by_class[c] if self.keys[j] != key]  # never the row itself
                    if not candidates:
                        continue
                    if similar is not None:
                        candidates = sorted(candidates, key=lambda j: -similar[i, j])[: max(1, len(candidates) // 2)]
                    picks.append(self.texts[candidates[int(rng.integers(len(candidates)))]])
                order = rng.permutation(len(picks))  # in a fixed class order the last class would win (recency)
                out.append({**row, DEMOS_KEY: self.separator.join(picks[k] for k in order)})
                owner.append(i)
        return out, owner

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "labels": self.labels}
