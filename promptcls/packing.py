"""Packing: a right-padded batch of prompts run through an encoder as fewer, fuller rows.

Prompts of mixed lengths padded to the longest waste compute on the padding: a batch of sixteen
random SST-2 prompts is about 1.6 times its real tokens once padded. Packed, the prompts are laid end
to end in rows of at least ``ROW`` tokens (first fit, longest first); each keeps its own position ids,
counted from the model's first position, and sees only its own tokens through a block-diagonal 4-D
attention mask. The
encoder's states are then put back in the padded layout, so everything after the encoder (mask
rows, heads, label words) is unchanged, and the scores are those of the padded batch up to
rounding. A model takes packed rows only where a probe on a tiny input found it equal to the padded
forward (:meth:`promptcls.families.masked.PromptModel`).

    (B, L) padded rows --plan--> (N, W) packed rows, N * W < B * L
    encoder on (N, W) with positions and a (N, 1, W, W) mask -> (N, W, H) -> back to (B, L, H)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Packing", "plan", "pack_width", "packed_tokens", "forward_arguments", "MIN_SAVING", "ROW"]

# Pack only where it saves at least this share of the padded tokens: a packed forward pays for a
# wider attention mask and two index copies, so a nearly full padded batch is run as it is.
MIN_SAVING = 0.15


ROW = 128  # the width a packed row takes at least (or all the batch's tokens, if fewer)


def pack_width(lengths: Sequence[int], most: int = ROW) -> int:
    """The width of a packed row: the longest prompt, and at least ``most`` tokens (or all of them), so that
    several short prompts share a row while attention stays a small part of the cost. ``most`` is at most
    the model's longest input (its position table)."""
    return max(max(lengths), min(most, sum(lengths)))


def plan(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Rows of prompt indices, first fit in order of decreasing length; each row holds at most ``width``
    tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def _layout(lengths: Sequence[int], min_saving: float, most: int) -> tuple[int, list[list[int]]] | None:
    """(row width, rows of prompt indices) of a packed batch, or None where packing saves less than
    ``min_saving`` of its padded tokens (it then runs padded)."""
    if len(lengths) < 2 or min(lengths) < 1:
        return None
    width = pack_width(lengths, most)
    rows = plan(lengths, width)
    return (width, rows) if len(rows) * width <= (1 - min_saving) * len(lengths) * max(lengths) else None


def packed_tokens(lengths: Sequence[int], min_saving: float = MIN_SAVING, most: int = ROW) -> int | None:
    """The tokens a batch of prompts of ``lengths`` runs as when packed (rows times width), or None where
    packing saves less than ``min_saving`` of its padded tokens (it then runs padded)."""
    layout = _layout(lengths, min_saving, most)
    return None if layout is None else len(layout[1]) * layout[0]


@dataclasses.dataclass
class Packing:
    """Where every token of a right-padded (B, L) batch goes in (N, W) packed rows, and back."""

    source: torch.Tensor  # (N, W) index into the flattened (B * L) padded tokens; B * L marks packed padding
    back: torch.Tensor  # (B, L) index into the flattened (N * W) packed tokens (padding reads any token)
    positions: torch.Tensor  # (N, W) each token's position within its own prompt
    segment: torch.Tensor  # (N, W) which prompt of the row a token belongs to; -1 on packed padding

    @classmethod
    def of(cls, attention_mask: torch.Tensor, min_saving: float = MIN_SAVING, most: int = ROW) -> Packing | None:
        """The packing of a right-padded batch into rows of ``pack_width(lengths, most)``, or None where it would
        save less than ``min_saving`` of the padded tokens (or the padding is not on the right)."""
        b, length = attention_mask.shape
        real = attention_mask.bool()
        lengths = real.sum(1).tolist()
        layout = _layout(lengths, min_saving, most)
        if layout is None or not all(bool(real[i, :n].all()) for i, n in enumerate(lengths)):
            return None  # too little to save, or not right-padded: run it as it is
        width, rows = layout
        n = len(rows)
        source = torch.full((n, width), b * length, dtype=torch.long)
        back = torch.zeros(b, length, dtype=torch.long)
        positions = torch.zeros(n, width, dtype=torch.long)
        segment = torch.full((n, width), -1, dtype=torch.long)
        for r, members in enumerate(rows):
            start = 0
            for k, i in enumerate(members):
                size = lengths[i]
                span = torch.arange(size)
                source[r, start:start + size] = i * length + span
                back[i, :size] = r * width + start + span
                positions[r, start:start + size] = span
                segment[r, start:start + size] = k
                start += size
        return cls(source, back, positions, segment)

    def attention(self, dtype: torch.dtype) -> torch.Tensor:
        """(N, 1, W, W) additive mask: a token sees the tokens of its own prompt; packed padding sees itself."""
        same = (self.segment[:, :, None] == self.segment[:, None, :]) & (self.segment[:, :, None] >= 0)
        same |= torch.eye(self.segment.shape[1], dtype=torch.bool)  # no row without a visible column
        return torch.zeros(same.shape, dtype=dtype).masked_fill(~same, torch.finfo(dtype).min)[:, None]

    def pack(self, padded: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """(B, L, ...) -> (N, W, ...), packed padding set to ``fill``."""
        flat = padded.reshape(-1, *padded.shape[2:])
        flat = torch.cat([flat, flat.new_full((1, *flat.shape[1:]), fill)])
        return flat[self.source.to(flat.device)]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, W, ...) -> (B, L, ...): each prompt's tokens where the padded batch had them."""
        flat = packed.reshape(-1, *packed.shape[2:])
        return flat[self.back.to(flat.device)]

    def run(self, base: nn.Module, inputs: dict[str, Any], position_offset: int, pad_token_id: int) -> Any:
        """The encoder ``base`` on the packed form of padded ``inputs`` (its forward's keyword arguments);
        its states come back in the padded layout, as ``(last_hidden_state,)``."""
        device = inputs["attention_mask"].device
        packed = dict(inputs)
        if inputs.get("inputs_embeds") is not None:
            packed["inputs_embeds"] = self.pack(inputs["inputs_embeds"])
        if inputs.get("input_ids") is not None:
            packed["input_ids"] = self.pack(inputs["input_ids"], pad_token_id)
        if inputs.get("token_type_ids") is not None:
            packed["token_type_ids"] = self.pack(inputs["token_type_ids"])
        dtype = base.get_input_embeddings().weight.dtype
        packed["attention_mask"] = self.attention(dtype).to(device)
        packed["position_ids"] = (self.positions + position_offset).to(device)
        hidden = base(**packed)[0]  # (N, W, H)
        return (self.unpack(hidden),)


def forward_arguments(base: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The base model's call as keyword arguments, or None where they cannot be named."""
    try:
        bound = inspect.signature(base.forward).bind(*args, **kwargs)
    except TypeError:
        return None
    out = dict(bound.arguments)
    for name, param in bound.signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(out.pop(name, {}))
        elif param.kind is inspect.Parameter.VAR_POSITIONAL and out.get(name):
            return None
    return out
