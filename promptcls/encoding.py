"""Encoding: render rows, tokenize once (fast tokenizer, offsets), truncate text fields only, pad.

The answer slot and every soft slot are rendered as runs of the tokenizer's mask token, so
one tokenizer call gives the model's own special tokens, segment ids and word boundaries.
The k-th mask token of a sequence is the k-th slot token in template order. Rows too long
for ``max_length`` lose tokens from their longest text field (never from the template or
a slot); they are re-rendered with the shortened text and tokenized again, so their ids are
exactly those of the already-truncated text.

Batches are padded to their longest prompt. On CPU, where a padded token costs as much as a real
one, a batch runs as the micro-batches of similar length that ``length_groups`` picks.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import torch

from .packing import packed_tokens
from .template import Template, TemplateError, Text

__all__ = ["Encoded", "PromptEncoding", "collate", "length_groups", "micro_batches", "length_batches"]


@dataclasses.dataclass
class Encoded:
    """One tokenized prompt: ids, segment ids, and where the mask and soft tokens sit."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    mask_pos: list[int]
    soft_pos: list[int]

    def with_masks(self, n: int) -> Encoded:
        """The same prompt with ``n`` answer masks (drops masks from the end of the slot)."""
        drop = len(self.mask_pos) - n
        if drop < 0:
            raise ValueError(f"encoded with {len(self.mask_pos)} masks, cannot widen to {n}")
        if drop == 0:
            return self
        start = self.mask_pos[0]
        cut = slice(start + n, start + n + drop)

        def remove(seq: list[int]) -> list[int]:
            return seq[: cut.start] + seq[cut.stop :]

        return Encoded(
            input_ids=remove(self.input_ids),
            token_type_ids=remove(self.token_type_ids) if self.token_type_ids is not None else None,
            mask_pos=self.mask_pos[:n],
            soft_pos=[p - drop if p > start else p for p in self.soft_pos],
        )


class PromptEncoding:
    """Renders and tokenizes rows for one template and tokenizer.

    ``n_mask`` is the width of the answer slot (the longest label word, in tokens); ``soft_counts``
    the number of tokens of each soft slot.
    """

    def __init__(
        self,
        template: Template,
        tokenizer: Any,
        max_length: int,
        n_mask: int = 1,
        soft_counts: tuple[int, ...] = (),
        keep: str = "head",
    ) -> None:
        if keep not in ("head", "tail"):
            raise ValueError(f"keep={keep!r}: a shortened text keeps its 'head' or its 'tail'")
        self.keep = keep
        if tokenizer.mask_token is None or tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token: promptcls needs a masked-LM tokenizer")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; promptcls locates slots by character offsets. "
                "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.n_mask = int(n_mask)
        self.soft_counts = tuple(soft_counts)
        self.n_slot_tokens = self.n_mask + sum(self.soft_counts)
        self._lock = threading.Lock()  # one tokenizer call at a time: a fast tokenizer is not re-entrant
        self._check_template()

    def __getstate__(self) -> dict[str, Any]:  # copies get a lock of their own
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _check_template(self) -> None:
        """Refuse, before anything is scored, a template that writes the mask token or cannot fit ``max_length``."""
        mask = self.tokenizer.mask_token
        for seg in self.template.segments:
            for part in seg:
                if isinstance(part, Text) and mask in part.text:
                    raise TemplateError(
                        f"template {self.template.source!r} writes the tokenizer's mask token {mask!r} as literal text; "
                        "the answer slot is [MASK] (written once): remove the literal mask token"
                    )
        budget = f"max_length={self.max_length}"
        if self.n_slot_tokens > self.max_length:
            raise ValueError(
                f"template {self.template.source!r} has {self.n_mask} answer-slot and {sum(self.soft_counts)} soft tokens, "
                f"more than {budget}: use fewer [SOFT] tokens or raise max_length"
            )
        empty = {f: "" for f in self.template.fields}
        _, enc = self._tokenize([empty])
        need = len(enc["input_ids"][0])
        if need > self.max_length:
            raise ValueError(
                f"template {self.template.source!r} needs {need} tokens with empty text fields (its slots and special "
                f"tokens included), more than {budget}: shorten the template or raise max_length"
            )

    # ------------------------------------------------------------------ public
    def encode(self, rows: Sequence[dict[str, str]]) -> list[Encoded]:
        """Encode rows; rows over ``max_length`` are truncated in their text fields only."""
        _, enc = self._tokenize(rows)
        over = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > self.max_length]
        out = [self._finish(rows[i], i, i, enc) if len(ids) <= self.max_length else None
               for i, ids in enumerate(enc["input_ids"])]
        if over:
            short = self.truncate([rows[i] for i in over], row_numbers=over)
            _, enc = self._tokenize(short)
            for k, i in enumerate(over):
                out[i] = self._finish(short[k], i, k, enc)
        return out  # type: ignore[return-value]

    def truncate(self, rows: Sequence[dict[str, str]], row_numbers: Sequence[int] | None = None) -> list[dict[str, str]]:
        """The rows as they are scored: text fields shortened where the prompt exceeds ``max_length``.

        Tokens leave the longest field first, from its end (``keep="tail"``: from its start); the template and its
        slots stay whole.
        """
        numbers = list(row_numbers) if row_numbers is not None else list(range(len(rows)))
        out = [dict(r) for r in rows]
        pending = list(range(len(rows)))
        while pending:  # a cut text can re-tokenize one token longer: check again until it fits
            rendered, enc = self._tokenize([out[k] for k in pending])
            still = []
            for j, k in enumerate(pending):
                excess = len(enc["input_ids"][j]) - self.max_length
                if excess > 0:
                    out[k] = self._shorten(out[k], numbers[k], rendered[j], enc, j, excess)
                    still.append(k)
            pending = still
        return out

    # ------------------------------------------------------------------ internals
    def _render(self, row: dict[str, str]) -> list:
        try:
            return self.template.render(row, self.tokenizer.mask_token, self.n_mask, self.soft_counts)
        except KeyError as e:
            raise ValueError(f"template field {e.args[0]!r} is missing from row {row!r}") from None

    def _tokenize(self, rows: Sequence[dict[str, str]]) -> tuple[list, Any]:
        rendered = [self._render(r) for r in rows]
        first = [r[0].text for r in rendered]
        second = [r[1].text for r in rendered] if self.template.is_pair else None
        with self._lock:
            enc = self.tokenizer(
                first,
                second,
                add_special_tokens=True,
                return_offsets_mapping=True,
                return_attention_mask=False,
                truncation=False,
                verbose=False,
            )
        return rendered, enc

    def _finish(self, row: dict[str, str], i: int, j: int, enc: Any) -> Encoded:
        """Encoded prompt of row number ``i``, the ``j``-th sequence of ``enc``."""
        ids = enc["input_ids"][j]
        mask_id = self.tokenizer.mask_token_id
        slots = [p for p, t in enumerate(ids) if t == mask_id]
        if len(slots) != self.n_slot_tokens:
            self._explain_mask_mismatch(row, i, len(slots))
        mask_pos, soft_pos = slots_in_order(slots, self.template, self.n_mask, self.soft_counts)
        types = enc["token_type_ids"][j] if "token_type_ids" in enc else None
        return Encoded(
            input_ids=list(ids),
            token_type_ids=list(types) if types is not None else None,
            mask_pos=mask_pos,
            soft_pos=soft_pos,
        )

    def _explain_mask_mismatch(self, row: dict[str, str], i: int, found: int) -> None:
        mask = self.tokenizer.mask_token
        for field, value in row.items():
            if mask in value:
                raise ValueError(
                    f"row {i}: field {field!r} contains the mask token {mask!r}; the prompt's answer slot must be "
                    "the only mask: remove or replace it in the text"
                )
        raise ValueError(
            f"row {i}: expected {self.n_slot_tokens} mask tokens for the answer and soft slots, the tokenizer "
            f"produced {found}; this tokenizer does not keep {mask!r} as one token"
        )

    def _field_token_ends(self, rendered: list, i: int, enc: Any) -> dict[str, list[int]]:
        """Per field name: character end (within the value) of each of its tokens, first occurrence."""
        offsets = enc["offset_mapping"][i]
        seq_ids = enc.sequence_ids(i)
        ends: dict[str, list[int]] = {}
        seen: set[str] = set()
        for s, segment in enumerate(rendered):
            for span in segment.spans:
                if span.kind != "field" or span.name in seen:
                    continue
                seen.add(span.name)
                ends[span.name] = [
                    min(b, span.end) - span.start
                    for (a, b), sid in zip(offsets, seq_ids)
                    if sid == s and span.start <= a < span.end
                ]
        return ends

    def _shorten(self, row: dict[str, str], i: int, rendered: list, enc: Any, j: int, excess: int) -> dict[str, str]:
        """Drop ``excess`` tokens from the longest text fields of row ``i`` (``j``-th sequence of ``enc``)."""
        ends = self._field_token_ends(rendered, j, enc)
        occurrences = {name: sum(sp.name == name for seg in rendered for sp in seg.spans) for name in ends}
        keep = {name: len(e) for name, e in ends.items()}
        while excess > 0:
            name = max(keep, key=lambda n: keep[n] * occurrences[n])
            if keep[name] == 0:
                raise ValueError(
                    f"row {i}: the template {self.template.source!r} with its {self.n_mask}-token answer slot and "
                    f"{sum(self.soft_counts)} soft tokens needs more than max_length={self.max_length} tokens even "
                    "with empty text fields: raise max_length or shorten the template"
                )
            keep[name] -= 1
            excess -= occurrences[name]
        out = dict(row)
        for name, k in keep.items():
            if k < len(ends[name]):
                if not k:
                    out[name] = ""
                elif self.keep == "tail":  # the first tokens go: the text after the last dropped one
                    out[name] = row[name][ends[name][len(ends[name]) - k - 1]:].lstrip()
                else:
                    out[name] = row[name][: ends[name][k - 1]]
        return out


def slots_in_order(
    mask_token_positions: list[int], template: Template, n_mask: int, soft_counts: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """Split the mask-token positions of one sequence into answer-slot and soft-slot positions."""
    mask_pos: list[int] = []
    soft_pos: list[int] = []
    it = iter(mask_token_positions)
    soft_i = 0
    for seg in template.segments:
        for part in seg:
            kind = type(part).__name__
            if kind == "Mask":
                mask_pos.extend(next(it) for _ in range(n_mask))
            elif kind == "Soft":
                soft_pos.extend(next(it) for _ in range(soft_counts[soft_i]))
                soft_i += 1
    return mask_pos, soft_pos


def pad_ids(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id rows right-padded to the longest; needs no tokenizer pad token."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    return input_ids, attention_mask


def collate(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest prompt (dynamic padding)."""
    n = len(batch)
    input_ids, attention_mask = pad_ids([e.input_ids for e in batch], pad_token_id)
    has_types = batch[0].token_type_ids is not None
    token_type_ids = torch.zeros(input_ids.shape, dtype=torch.long) if has_types else None
    if token_type_ids is not None:
        for i, e in enumerate(batch):
            token_type_ids[i, :len(e.token_type_ids)] = torch.tensor(e.token_type_ids)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mask_pos": torch.tensor([e.mask_pos for e in batch], dtype=torch.long),
        "soft_pos": torch.tensor([e.soft_pos for e in batch], dtype=torch.long).reshape(n, -1),
    }
    if token_type_ids is not None:
        out["token_type_ids"] = token_type_ids
    return out


# The fixed cost of one pass through the model on CPU, in padded tokens: on one and two cores
# all-MiniLM-L6-v2 (6 x 384) spent about as long on a pass of a single short prompt as on a few
# dozen more tokens in a larger batch. Larger is the safe side: fewer, larger micro-batches.
# What it gives: benchmarks/results/micro_batch_speed.md.
CPU_PASS_OVERHEAD = 48


def pass_overhead(device: torch.device | str) -> float | None:
    """The per-pass cost ``length_groups`` weighs padding against, or None: no micro-batches.

    Only on CPU: an accelerator pays per kernel launch, and a padded token there is nearly free.
    """
    return CPU_PASS_OVERHEAD if torch.device(device).type == "cpu" else None


def length_groups(lengths: Sequence[int], overhead: float) -> list[list[int]]:
    """Positions of ``lengths`` split into the micro-batches that are cheapest to run padded.

    A micro-batch costs ``overhead + size * longest`` (its padded tokens plus a fixed cost per
    pass). The cheapest split of a batch sorted by length is into contiguous runs; dynamic
    programming over the cut points finds it. Groups come shortest first, positions ascending
    within each.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    cost = [0.0] + [float("inf")] * n  # cost[i]: the cheapest split of the i shortest
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[order[end - 1]]
        for start in range(end):
            c = cost[start] + overhead + (end - start) * longest
            if c < cost[end]:
                cost[end], cut[end] = c, start
    groups = []
    end = n
    while end:
        groups.append(sorted(order[cut[end] : end]))
        end = cut[end]
    return groups[::-1]


def micro_batches(lengths: Sequence[int], device: torch.device | str, packs: bool = False) -> list[list[int]]:
    """Positions of one batch as the micro-batches it runs as on ``device``: ``length_groups`` on
    CPU, the whole batch elsewhere. A model that packs its prompts (``packs``, :mod:`promptcls.packing`)
    runs the whole batch in one pass where its packed tokens cost less than the micro-batches."""
    overhead = pass_overhead(device)
    whole = [list(range(len(lengths)))]
    if overhead is None:
        return whole
    groups = length_groups(lengths, overhead)
    if packs and len(groups) > 1 and (packed := packed_tokens(lengths)) is not None:
        split = sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)
        if overhead + packed < split:
            return whole  # one packed pass costs less than the padded micro-batches
    return groups


def length_batches(lengths: Sequence[int], batch_size: int, device: torch.device | str,
                   packs: bool = False) -> list[list[int]]:
    """Positions of ``lengths`` in scoring batches: longest first, ``batch_size`` at a time, each run
    as its ``micro_batches``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out += [[chunk[j] for j in group] for group in micro_batches([lengths[i] for i in chunk], device, packs)]
    return out
