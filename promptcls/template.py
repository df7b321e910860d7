"""Templates: parse a prompt string, validate it, and render rows to text. No torch here.

A template is plain text with slots::

    "{text} It was [MASK]."                      one text field, the answer slot
    "{premise} ? [MASK] , {hypothesis}"          a sentence pair (two segments)
    "[SOFT*4] {text} [SOFT:it was] [MASK]."      learnable prompt tokens

``{field}``
    filled from the row (a string fills the only field; dicts and DataFrame rows by name).
``[MASK]``
    the answer slot; exactly one per template.
``[SOFT]``, ``[SOFT*n]``, ``[SOFT:words]``
    one, ``n``, or ``len(tokens(words))`` learnable embeddings; ``[SOFT:words]`` starts from
    the embeddings of ``words``.
``soft_init`` (a template option) starts the ``[SOFT]`` and ``[SOFT*n]`` slots (Lester et al. 2021
compare these): ``"vocab"`` (the default) from the embeddings of sampled vocabulary tokens, ``"uniform"``
at random (uniform, with the embedding table's spread), ``"label-words"`` from the class label words'
embeddings (then sampled tokens once they are used up). ``[SOFT:words]`` always starts from its words.
``[SEP]``
    where the second segment of a sentence pair starts. Without it, a template with two or
    more fields starts the second segment at its second field.

``\\{``, ``\\}``, ``\\[``, ``\\]`` and ``\\\\`` write the literal character.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["Template", "TemplateError", "PromptEncoderType", "SoftInit"]

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SOFT_COUNT = re.compile(r"SOFT\*(\d+)\Z")


class TemplateError(ValueError):
    """A template string that cannot be parsed or used; ``position`` is the character where the problem is."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class PromptEncoderType(str, Enum):
    """Re-parameterisation of the soft tokens (P-tuning, Liu et al. 2021)."""

    NONE = "none"
    LSTM = "lstm"
    MLP = "mlp"


class SoftInit(str, Enum):
    """Where ``[SOFT]`` and ``[SOFT*n]`` slots start (``[SOFT:words]`` starts from its words)."""

    VOCAB = "vocab"  # embeddings of sampled ordinary vocabulary tokens
    UNIFORM = "uniform"  # uniform at random, with the embedding table's standard deviation
    LABEL_WORDS = "label-words"  # the class label words' embeddings, then sampled tokens


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Field:
    name: str


@dataclasses.dataclass(frozen=True)
class Mask:
    pass


@dataclasses.dataclass(frozen=True)
class Soft:
    """``count`` learnable tokens; ``init`` words to initialise them from (count set later)."""

    count: int | None
    init: str | None = None


@dataclasses.dataclass(frozen=True)
class Demos:
    """Where the demonstrations go (LM-BFF's in-context examples): filled by the estimator, never by a column."""


DEMOS_KEY = "\x00demonstrations"  # the row key the estimator fills; no column can have this name
Part = Text | Field | Mask | Soft | Demos


@dataclasses.dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of a rendered segment that hold a field value or a slot."""

    kind: str  # "field", "mask" or "soft"
    name: str | None
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class RenderedSegment:
    text: str
    spans: tuple[Span, ...]


def _error(source: str, pos: int, message: str) -> TemplateError:
    pointer = f"\n  {source}\n  {' ' * pos}^"
    return TemplateError(f"template position {pos}: {message}{pointer}", position=pos)


def _parse(source: str, where: dict[str, list[int]] | None = None) -> list[list[Part]]:
    """Split ``source`` into segments of parts. Raises ``TemplateError`` with the position.

    ``where`` collects the character positions of the ``"mask"`` and ``"sep"`` slots.
    """
    where = where if where is not None else {}
    where.setdefault("mask", [])
    where.setdefault("sep", [])
    segments: list[list[Part]] = [[]]
    buf: list[str] = []

    def flush() -> None:
        if buf:
            segments[-1].append(Text("".join(buf)))
            buf.clear()

    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "\\":
            if i + 1 >= len(source) or source[i + 1] not in "\\{}[]":
                raise _error(source, i, "a backslash must escape one of \\ { } [ ]")
            buf.append(source[i + 1])
            i += 2
            continue
        if ch in "{[":
            close = "}" if ch == "{" else "]"
            end = source.find(close, i + 1)
            if end < 0:
                raise _error(source, i, f"'{ch}' is never closed with '{close}' (write \\{ch} for a literal)")
            body = source[i + 1 : end]
            flush()
            if ch == "{":
                if not _FIELD_NAME.match(body):
                    raise _error(source, i, f"'{{{body}}}' is not a field name (letters, digits, _)")
                segments[-1].append(Field(body))
            elif body == "MASK":
                segments[-1].append(Mask())
                where["mask"].append(i)
            elif body == "SEP":
                segments.append([])
                where["sep"].append(i)
            elif body == "DEMOS":
                if where.setdefault("demos", []):
                    raise _error(source, i, "[DEMOS] marks where the demonstrations go: write it once")
                segments[-1].append(Demos())
                where["demos"].append(i)
            elif body == "SOFT":
                segments[-1].append(Soft(1))
            elif m := _SOFT_COUNT.match(body):
                if int(m.group(1)) < 1:
                    raise _error(source, i, f"'[{body}]' needs at least one token")
                segments[-1].append(Soft(int(m.group(1))))
            elif body.startswith("SOFT:"):
                words = body[len("SOFT:") :].strip()
                if not words:
                    raise _error(source, i, "'[SOFT:]' needs words to start from, such as [SOFT:it was]")
                segments[-1].append(Soft(None, words))
            else:
                raise _error(
                    source,
                    i,
                    f"unknown slot '[{body}]': expected [MASK], [SOFT], [SOFT*n], [SOFT:words], [SEP] or [DEMOS]"
                    " (write \\[ for a literal bracket)",
                )
            i = end + 1
            continue
        if ch in "}]":
            raise _error(source, i, f"unmatched '{ch}' (write \\{ch} for a literal)")
        buf.append(ch)
        i += 1
    flush()
    return segments


def _strip_edge(parts: list[Part], end: bool) -> list[Part]:
    """Drop whitespace at the end (or start) of a segment's literal text."""
    parts = list(parts)
    i = -1 if end else 0
    if parts and isinstance(parts[i], Text):
        text = parts[i].text.rstrip() if end else parts[i].text.lstrip()
        if text:
            parts[i] = Text(text)
        else:
            parts.pop(i)
    return parts


class Template:
    """A prompt with one ``[MASK]`` answer slot, text fields, and optional soft tokens.

    Example:
        >>> t = Template("{text} It was [MASK].")
        >>> t.fields
        ('text',)
        >>> t.render({"text": "Great food!"}, mask_token="<mask>")[0].text
        'Great food! It was <mask>.'
    """

    def __init__(self, template: str, prompt_encoder: str | PromptEncoderType = "none",
                 soft_init: str | SoftInit = "vocab") -> None:
        if not isinstance(template, str):
            raise TypeError(f"a template is a string, got {type(template).__name__}: {template!r}")
        try:
            self.prompt_encoder = PromptEncoderType(prompt_encoder or "none")
        except ValueError:
            choices = ", ".join(repr(e.value) for e in PromptEncoderType)
            raise ValueError(f"prompt_encoder={prompt_encoder!r} is not one of {choices}") from None
        try:
            self.soft_init = SoftInit(soft_init or "vocab")
        except ValueError:
            choices = ", ".join(repr(e.value) for e in SoftInit)
            raise ValueError(f"soft_init={soft_init!r} is not one of {choices}") from None
        self.source = template
        where: dict[str, list[int]] = {}
        segments = _parse(template, where)
        parts = [p for seg in segments for p in seg]
        n_masks = sum(isinstance(p, Mask) for p in parts)
        if n_masks != 1:
            pos = where["mask"][1] if n_masks > 1 else len(template)
            raise _error(template, pos, f"a template needs exactly one [MASK] answer slot, found {n_masks}")
        if len(segments) > 2:
            raise _error(template, where["sep"][1], f"a template has at most two segments (one [SEP]), found {len(segments)}")
        if any(not seg for seg in segments):
            raise _error(template, where["sep"][0], "[SEP] must have text on both sides")
        fields = [p.name for p in parts if isinstance(p, Field)]
        if not fields:
            raise _error(template, 0, "a template needs at least one {field} for the input text, found none")
        if len(segments) == 1 and len(set(fields)) >= 2:
            # the second segment starts at the second distinct field
            second = next(i for i, p in enumerate(parts) if isinstance(p, Field) and p.name != fields[0])
            segments = [parts[:second], parts[second:]]
        if self.prompt_encoder != PromptEncoderType.NONE and not any(isinstance(p, Soft) for p in parts):
            raise _error(
                template, 0, f"prompt_encoder={self.prompt_encoder.value!r} re-parameterises soft tokens, but the "
                "template has none: add [SOFT] slots or use prompt_encoder='none'"
            )
        if self.soft_init != SoftInit.VOCAB and not any(isinstance(p, Soft) and p.init is None for p in parts):
            raise _error(
                template, 0, f"soft_init={self.soft_init.value!r} starts [SOFT] and [SOFT*n] slots, but the template "
                "has none ([SOFT:words] starts from its words): add such a slot or leave soft_init='vocab'"
            )
        if len(segments) == 2:  # spaces at the segment boundary would become stray tokens for BPE tokenizers
            segments = [_strip_edge(segments[0], end=True), _strip_edge(segments[1], end=False)]
            if any(not seg for seg in segments):
                raise _error(template, where["sep"][0] if where["sep"] else 0,
                             "each segment of a sentence pair needs more than spaces")
        self.segments: tuple[tuple[Part, ...], ...] = tuple(tuple(s) for s in segments)
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(fields))

    # ------------------------------------------------------------------ properties
    @property
    def is_pair(self) -> bool:
        return len(self.segments) == 2

    @property
    def soft_slots(self) -> tuple[Soft, ...]:
        return tuple(p for seg in self.segments for p in seg if isinstance(p, Soft))

    @property
    def has_soft_tokens(self) -> bool:
        return bool(self.soft_slots)

    @property
    def has_demonstrations(self) -> bool:
        """Does the template mark where demonstrations go (``[DEMOS]``)?"""
        return any(isinstance(p, Demos) for seg in self.segments for p in seg)

    def demonstration(self, row: Mapping[str, Any], answer: str) -> str:
        """One demonstration: the template filled from ``row`` with ``answer`` in the slot, as plain text (no soft
        tokens, no demonstrations, the segments joined by a space)."""
        out = []
        for seg in self.segments:
            pieces = []
            for part in seg:
                if isinstance(part, Text):
                    pieces.append(part.text)
                elif isinstance(part, Field):
                    pieces.append(_field_value(row, part.name))
                elif isinstance(part, Mask):
                    pieces.append(answer)
            out.append(re.sub(" {2,}", " ", "".join(pieces)).strip())  # no double space where [DEMOS] was
        return " ".join(t for t in out if t)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        row: Mapping[str, Any],
        mask_token: str,
        n_mask: int = 1,
        soft_counts: tuple[int, ...] | None = None,
    ) -> list[RenderedSegment]:
        """Fill the fields from ``row``; slots become runs of ``mask_token`` with their spans.

        ``n_mask`` masks fill the answer slot (one per token of a multi-token label word);
        ``soft_counts`` gives the number of tokens of each soft slot (needed for ``[SOFT:words]``).
        """
        soft_counts = soft_counts or tuple(s.count or 1 for s in self.soft_slots)
        out = []
        soft_i = 0
        for seg in self.segments:
            pieces: list[str] = []
            spans: list[Span] = []
            pos = 0
            for part in seg:
                if isinstance(part, Text):
                    piece = part.text
                elif isinstance(part, Field):
                    piece = _field_value(row, part.name)
                    spans.append(Span("field", part.name, pos, pos + len(piece)))
                elif isinstance(part, Mask):
                    piece = mask_token * n_mask
                    spans.append(Span("mask", None, pos, pos + len(piece)))
                elif isinstance(part, Demos):  # shortened like a text field when the prompt is too long
                    piece = str(row.get(DEMOS_KEY, ""))
                    spans.append(Span("field", DEMOS_KEY, pos, pos + len(piece)))
                else:
                    piece = mask_token * soft_counts[soft_i]
                    spans.append(Span("soft", str(soft_i), pos, pos + len(piece)))
                    soft_i += 1
                pieces.append(piece)
                pos += len(piece)
            out.append(RenderedSegment("".join(pieces), tuple(spans)))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"template": self.source, "prompt_encoder": self.prompt_encoder.value, "soft_init": self.soft_init.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Template:
        data = dict(data)
        if "template" not in data:
            raise ValueError(f"a template dict needs the key 'template', got keys {sorted(data)}")
        return cls(data.pop("template"), prompt_encoder=data.pop("prompt_encoder", "none"),
                   soft_init=data.pop("soft_init", "vocab"))

    @classmethod
    def coerce(cls, template: Template | str | Mapping[str, Any]) -> Template:
        if isinstance(template, Template):
            return template
        if isinstance(template, str):
            return cls(template)
        if isinstance(template, Mapping):
            return cls.from_dict(template)
        raise TypeError(f"expected a Template, a template string or a dict, got {type(template).__name__}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.source, self.prompt_encoder, self.soft_init))

    def __repr__(self) -> str:
        extra = f", prompt_encoder={self.prompt_encoder.value!r}" if self.prompt_encoder != PromptEncoderType.NONE else ""
        extra += f", soft_init={self.soft_init.value!r}" if self.soft_init != SoftInit.VOCAB else ""
        return f"Template({self.source!r}{extra})"


def _field_value(row: Mapping[str, Any], name: str) -> str:
    if name not in row:
        raise KeyError(name)
    value = row[name]
    if value is None or (isinstance(value, float) and value != value):
        raise ValueError(f"field {name!r} is missing (None/NaN) in row {dict(row)!r}")
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}: {value!r}")
    return value
