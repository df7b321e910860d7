"""Long texts scored in windows (``truncation="chunks"``): each row too long for the prompt becomes several rows,
its longest text field cut into windows of as many tokens as the prompt leaves room for, overlapping by half a
window; the estimator averages the windows' class log-probabilities.

Pure text-side work on the family's encoding (its ``truncate`` says how much of a field fits) and its
tokenizer's offsets: the template and its answer slot are never cut, and every token of the field is in some
window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["chunk_rows"]


def chunk_rows(encoding: Any, rows: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], list[int]]:
    """(the rows with each long one replaced by its windows, the row number each output row comes from)."""
    cut = encoding.truncate(list(rows))
    out: list[dict[str, str]] = []
    owner: list[int] = []
    tokenizer = encoding.tokenizer
    for i, (row, short) in enumerate(zip(rows, cut)):
        if short == row:
            out.append(row)
            owner.append(i)
            continue
        name = max(row, key=lambda f: len(str(row[f])) - len(str(short.get(f, row[f]))))  # the field cut most
        text = row[name]
        with encoding._lock:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            room = len(tokenizer(short[name], add_special_tokens=False)["input_ids"]) if short[name] else 0
        room = max(1, room)
        stride = max(1, room // 2)
        start = 0
        while True:
            end = min(start + room, len(offsets))
            out.append({**short, name: text[offsets[start][0]:offsets[end - 1][1]]})
            owner.append(i)
            if end >= len(offsets):
                break
            start += stride
    return out, owner
