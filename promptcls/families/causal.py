"""Causal LMs: each label word is scored as the continuation of the prompt at the answer slot.

    row -> template: text before the slot (the prompt), the slot, text after it
        -> prompt ids (the tokenizer's BOS where it adds one; soft tokens spliced in as embeddings)
        -> ONE forward per batch: each prompt, right-padded, then the first n - 1 tokens of every
           candidate word appended after it, under a 4-D attention mask that lets each candidate
           token see the prompt and its own word's earlier tokens only (a tree of continuations,
           positions continuing the prompt's); the prompt runs once and is shared by every candidate
        -> the LM head only at the prompt's last position (every word's first token) and at the
           candidate tokens (each word's next token), teacher forced
        -> log P(word | prompt) = the sum of its token log-probs -> class scores (B, C)

The continuation is tokenized apart from the prompt, as evaluation harnesses do: the spaces before
the slot go to the word (``"It was [MASK]."`` scores ``" great"`` after ``"It was"``). By default only
the word counts (``score_suffix=False``); with ``score_suffix=True`` the text after the slot is
scored too, each candidate's filled prompt as a whole (its log-likelihood up to that of the prompt
before the slot, which every candidate shares). With ``score_suffix=False`` a causal LM never sees
text after the slot, so a template whose fields follow the slot gets a warning.

Batches are right-padded with explicit position ids, so a batch scores as its prompts one at a time,
whatever the tokenizer's padding side. The LM head runs only where a next token is scored
(transformers' ``logits_to_keep`` with per-row positions): no (B, L, V) tensor is made. A probe on a
tiny input checks the one-pass path against plain full-sequence logits. A model that does not take a
4-D mask is scored as before: the prompt's key/value cache expanded to one row per (prompt, word) and
only the words' tokens run; a model that cannot share its cache either, one full forward per
(prompt, word), logged once.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..prompts import build_soft_prompt
from ..prompts import soft_counts as prompt_soft_counts
from ..template import DEMOS_KEY, Field, Mask, Soft, Template, TemplateError, Text
from ..verbalizer import LabelWords, Verbalizer, word_token_ids

logger = logging.getLogger(__name__)

__all__ = ["CausalPromptModel", "CausalEncoding", "CausalEncoded", "causal_position_limit", "joint_class_scores"]

_SLOT = "\ue000"  # a private-use character marks the slots while a row is rendered


@dataclasses.dataclass
class CausalEncoded:
    """One prompt: its ids up to the answer slot, where its soft tokens sit, and the ids after the slot."""

    input_ids: list[int]
    soft_pos: list[int]
    suffix_ids: list[int]


def slot_separator(template: Template, chat_template: bool = False) -> str:
    """The spaces between the prompt and the slot, which belong to the word: ``"It was" + " great"``."""
    if chat_template:
        return ""  # the answer opens the assistant's turn
    parts = [p for seg in template.segments for p in seg]
    slot = next(i for i, p in enumerate(parts) if isinstance(p, Mask))
    before = parts[slot - 1] if slot else None
    return before.text[len(before.text.rstrip(" ")):] if isinstance(before, Text) else ""


def causal_position_limit(lm: nn.Module) -> int | None:
    n = getattr(lm.config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


class CausalEncoding:
    """Renders rows to prompt ids for a causal LM: the text before the slot, and (for ``score_suffix``) after it."""

    def __init__(self, template: Template, tokenizer: Any, max_length: int, answer_tokens: int,
                 soft_counts: tuple[int, ...], score_suffix: bool = False, chat_template: bool = False,
                 keep: str = "head") -> None:
        if keep not in ("head", "tail"):
            raise ValueError(f"keep={keep!r}: a shortened text keeps its 'head' or its 'tail'")
        self.keep = keep
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: load it with use_fast=True")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.answer_tokens = int(answer_tokens)
        self.soft_counts = tuple(soft_counts)
        self.score_suffix = score_suffix
        self.chat_template = chat_template
        self._lock = threading.Lock()
        parts = [p for seg in template.segments for p in seg]
        slot = next(i for i, p in enumerate(parts) if isinstance(p, Mask))
        if any(isinstance(p, Soft) for p in parts[slot + 1:]):
            raise TemplateError(f"template {template.source!r} has soft tokens after [MASK]: a causal LM reads the "
                                "answer slot as the continuation of what comes before it; put [SOFT] before the slot")
        if not score_suffix and any(isinstance(p, Field) for p in parts[slot + 1:]):
            after = [p.name for p in parts[slot + 1:] if isinstance(p, Field)]
            logger.warning("template %r has fields %s after [MASK]: with score_suffix=False a causal LM never sees them; "
                           "use score_suffix=True or put the slot at the end", template.source, after)
        self.separator = slot_separator(template, chat_template)
        if chat_template and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"chat_template=True but {type(tokenizer).__name__} has no chat template: "
                             "use an instruction-tuned model's tokenizer or chat_template=False")
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        start = next((i for i in range(len(probe) - len(plain) + 1) if probe[i:i + len(plain)] == plain), 0)
        self.lead = [] if chat_template else list(probe[:start])  # BOS where the tokenizer adds one; never an EOS
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_id = start_id
        empty = self.encode([{f: "" for f in template.fields}], truncate=False)[0]
        need = self.length(empty)
        if need > self.max_length:
            raise ValueError(f"template {template.source!r} needs {need} tokens with empty text fields and the longest "
                             f"label word, more than max_length={self.max_length}: shorten it or raise max_length")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def length(self, e: CausalEncoded) -> int:
        """Tokens the longest candidate of this prompt runs through the model."""
        return len(e.input_ids) + self.answer_tokens + (len(e.suffix_ids) if self.score_suffix else 0)

    # ------------------------------------------------------------------ rendering
    def _split(self, row: dict[str, str]) -> tuple[list[str | int], str]:
        """(prompt pieces: text or a soft-token count, text after the slot)."""
        try:
            segments = self.template.render(row, _SLOT, 1, self.soft_counts)
        except KeyError as e:
            raise ValueError(f"template field {e.args[0]!r} is missing from row {row!r}") from None
        text, spans, offset = "", [], 0
        for k, seg in enumerate(segments):  # a causal LM reads a sentence pair as one text
            if k:
                text += " "
                offset += 1
            spans += [dataclasses.replace(s, start=s.start + offset, end=s.end + offset) for s in seg.spans]
            text += seg.text
            offset = len(text)
        for s in spans:
            if s.kind == "field" and _SLOT in text[s.start:s.end]:
                raise ValueError(f"field {s.name!r} holds the character U+E000, which promptcls reserves: remove it")
        mask = next(s for s in spans if s.kind == "mask")
        prompt, suffix = text[:mask.start], text[mask.end:]
        if self.chat_template:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt.strip()}],
                                                        add_generation_prompt=True, tokenize=False)
        elif self.separator and prompt.endswith(self.separator):
            prompt = prompt[: len(prompt) - len(self.separator)]
        return self._pieces(prompt), suffix

    def _pieces(self, prompt: str) -> list[str | int]:
        """The prompt as text pieces and soft-slot token counts, in order."""
        out: list[str | int] = []
        i = 0
        for count in self.soft_counts:
            j = prompt.index(_SLOT * count, i)
            text = prompt[i:j].rstrip(" ")  # the soft tokens start like a word after a space ([SOFT:It was])
            if text:
                out.append(text)
            out.append(count)
            i = j + count
        if prompt[i:]:
            out.append(prompt[i:])
        return out

    def _tokens(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._lock:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode(self, rows: Sequence[dict[str, str]], truncate: bool = True) -> list[CausalEncoded]:
        """Encode rows; rows over ``max_length`` are shortened in their text fields only."""
        return [self._fit(r, i)[1] if truncate else self._encode_row(r) for i, r in enumerate(rows)]

    def _encode_row(self, row: dict[str, str]) -> CausalEncoded:
        pieces, suffix = self._split(row)
        texts = [p for p in pieces if isinstance(p, str)]
        tokens = iter(self._tokens(texts))
        ids, soft = list(self.lead), []
        for p in pieces:
            if isinstance(p, int):
                soft += range(len(ids), len(ids) + p)
                ids += [self.start_id if self.start_id is not None else 0] * p  # placeholders: embeddings replace them
            else:
                ids += next(tokens)
        if not ids:
            if self.start_id is None:
                raise ValueError(f"template {self.template.source!r} puts nothing before the answer slot and the "
                                 "tokenizer has no BOS or EOS token to start from: write some text before [MASK]")
            ids = [self.start_id]
        suffix_ids = self._tokens([suffix])[0] if suffix and self.score_suffix else []
        return CausalEncoded(input_ids=ids, soft_pos=soft, suffix_ids=suffix_ids)

    def truncate(self, rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """The rows as they are scored: text fields shortened (from their end, the longest first) to fit."""
        return [self._fit(r, i)[0] for i, r in enumerate(rows)]

    def _fit(self, row: dict[str, str], i: int) -> tuple[dict[str, str], CausalEncoded]:
        """Row ``i`` shortened until it fits ``max_length``, and its encoding (a row that fits is encoded once)."""
        encoded = self._encode_row(row)
        while (excess := self.length(encoded) - self.max_length) > 0:
            row = self._shorten(dict(row), i, excess)  # each pass drops tokens, so this ends
            encoded = self._encode_row(row)
        return row, encoded

    def _shorten(self, row: dict[str, str], i: int, excess: int) -> dict[str, str]:
        fields = [f for f in (*self.template.fields, DEMOS_KEY) if row.get(f)]  # demonstrations shorten too
        if not fields:
            raise ValueError(
                f"row {i}: the template {self.template.source!r} with its answer needs more than "
                f"max_length={self.max_length} tokens even with empty text fields: raise max_length or shorten it")
        with self._lock:
            enc = {f: self.tokenizer(row[f], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                   for f in fields}
        name = max(fields, key=lambda f: len(enc[f]))
        keep = max(0, len(enc[name]) - excess)
        if not keep:
            row[name] = ""
        elif self.keep == "tail":  # the first tokens go: the text after the last dropped one
            row[name] = row[name][enc[name][len(enc[name]) - keep - 1][1]:].lstrip()
        else:
            row[name] = row[name][: enc[name][keep - 1][1]]
        return row


class CausalPromptModel(nn.Module):
    """A causal LM with a template's soft prompt and a verbalizer's label words: ``class_scores`` -> (B, C)."""

    family = "causal"
    lm_prefix = "lm"
    split_head = False  # no mask rows to cache: head training runs the model every step
    packs = False  # prompts run right-padded (candidates ride after them: promptcls.families.causal's layout)
    label_vocab_only = False

    def __init__(self, lm: nn.Module, tokenizer: Any, template: Template, verbalizer: Verbalizer | None,
                 max_length: int | None = None, seed: int = 0, score_suffix: bool = False,
                 chat_template: bool = False, keep: str = "head") -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.template = template
        self.score_suffix = bool(score_suffix)
        self.chat_template = bool(chat_template)
        sep = slot_separator(template, self.chat_template)
        self.label_words = (LabelWords.build(verbalizer, tokenizer, tokenize=lambda w: self._word_ids(w, sep))
                            if verbalizer is not None else None)
        soft_counts = prompt_soft_counts(template, tokenizer)
        limit = causal_position_limit(lm)
        if max_length is not None and limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} is more than {type(lm).__name__} takes ({limit} positions): "
                             f"use max_length <= {limit}, or leave it None for the model's own limit")
        declared = getattr(tokenizer, "model_max_length", None)
        limits = [n for n in (limit, declared if isinstance(declared, int) and 0 < declared < 1_000_000 else None) if n]
        max_length = max_length or (min(limits) if limits else 2048)
        answer = self.label_words.max_tokens if self.label_words is not None else 1
        if sum(soft_counts) + answer > max_length:
            raise ValueError(f"template {template.source!r} has {sum(soft_counts)} soft tokens, more than "
                             f"max_length={max_length} leaves: use fewer [SOFT] tokens or raise max_length")
        self.encoding = CausalEncoding(template, tokenizer, max_length, answer, soft_counts, self.score_suffix,
                                       self.chat_template, keep)
        self.kv_prefix = None  # key/value prefixes at every layer (promptcls.parts.prefix), attached by a part
        self.soft_verbalizer = None  # vectors in place of the label words' output rows (promptcls.parts.soft_verbalizer)
        self.prototypes = None  # class prototypes of the slot states (promptcls.parts.prototypes)
        self.soft_prompt = (build_soft_prompt(lm.get_input_embeddings(), tokenizer, template, seed,
                                              self.label_words.token_ids if self.label_words else None)
                            if template.has_soft_tokens else None)
        params = inspect.signature(lm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._takes_positions = "position_ids" in params
        self._keep_rows = "logits_to_keep" in params
        self.shares_cache = True
        self.one_pass = True  # candidates appended under a 4-D mask; False: the shared key/value cache
        self._probe()

    def _word_ids(self, word: str, separator: str) -> list[int]:
        if separator:
            return word_token_ids(self.tokenizer, word)  # as after a space in running text
        return self.tokenizer(word, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ family interface
    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def encode(self, rows: Sequence[dict[str, str]]) -> list[CausalEncoded]:
        return self.encoding.encode(rows)

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The output layer's own parameters; none when it is tied to the input embeddings."""
        out = self.lm.get_output_embeddings()
        shared = {id(p) for p in self.lm.get_input_embeddings().parameters()}
        own = {id(p) for p in out.parameters()} - shared if out is not None else set()
        params = {f"lm.{n}": p for n, p in self.lm.named_parameters() if id(p) in own}
        if not params:
            raise ValueError(
                f"{type(self.lm).__name__} has no head of its own to train: its output layer is tied to the input "
                "embeddings; train another part: 'prompt' (soft tokens), 'prefix', 'lora', 'ia3' or 'full'"
            )
        return params

    def joint_key(self) -> tuple | None:
        """What this model's forward shares with another task's in one joint forward (every tensor of the LM);
        None where it cannot join one (key/value prefixes, or a model the one-pass probe turned down)."""
        if (self.kv_prefix is not None or self.soft_verbalizer is not None or self.prototypes is not None
                or not (self.one_pass and self.shares_cache)):
            return None
        return ("causal", tuple((n, p.data_ptr()) for n, p in self.lm.named_parameters()))

    # ------------------------------------------------------------------ forward pieces
    def _prefix_batch(self, encoded: Sequence[CausalEncoded]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Right-padded prompts with explicit positions, and each prompt's length."""
        lengths = torch.tensor([len(e.input_ids) for e in encoded])
        n, width = len(encoded), int(lengths.max())
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        device = self.device
        inputs = {"attention_mask": mask.to(device)}
        if self._takes_positions:
            inputs["position_ids"] = torch.arange(width, device=device).expand(n, -1)
        ids = ids.to(device)
        if self.soft_prompt is not None and encoded[0].soft_pos:
            embeds = self.lm.get_input_embeddings()(ids)  # (B, L, E)
            soft_pos = torch.tensor([e.soft_pos for e in encoded], device=device)  # (B, S)
            prompt = self.soft_prompt().to(embeds.dtype)  # (S, E)
            rows = torch.arange(n, device=device)[:, None].expand_as(soft_pos)
            inputs["inputs_embeds"] = embeds.index_put((rows, soft_pos), prompt.expand(n, -1, -1))
        else:
            inputs["input_ids"] = ids
        if self.kv_prefix is not None:  # a pre-filled cache; the prompt's positions still start at 0
            mask = inputs["attention_mask"]
            inputs["attention_mask"] = torch.cat([self.kv_prefix.mask_columns(n, mask), mask], 1)  # (B, P + L)
            inputs[self._cache_arg] = self.kv_prefix.cache(n, self.lm.get_input_embeddings().weight.dtype)
            inputs["use_cache"] = True
        return inputs, lengths.to(device)

    def _logits_at(self, inputs: dict[str, Any], positions: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, Any]:
        """(N, P, V) logits at per-row ``positions`` (N, P), and the output's cache."""
        if self._keep_rows:
            out = self.lm(**inputs, logits_to_keep=positions, **extra)
            logits = out.logits
        else:
            out = self.lm(**inputs, **extra)
            logits = torch.take_along_dim(out.logits, positions[..., None], dim=1)
        return logits, getattr(out, self._cache_arg, None)

    def _candidates(self, encoded: Sequence[CausalEncoded]) -> list[list[list[int]]]:
        """Per prompt, per label word: the tokens scored (the word, then the suffix with ``score_suffix``)."""
        words = self.label_words.token_ids
        return [[w + e.suffix_ids for w in words] for e in encoded]

    def word_scores(self, encoded: Sequence[CausalEncoded]) -> torch.Tensor:
        """(B, W) log P(word [+ suffix] | prompt) for every label word."""
        if not self.shares_cache:
            return self._word_scores_full(encoded)
        cands = self._candidates(encoded)
        multi_token = any(len(c) > 1 for row in cands for c in row)
        if self.one_pass and multi_token:  # one-token words need no appended tokens
            return self._word_scores_one_pass(encoded, cands)
        inputs, lengths = self._prefix_batch(encoded)
        extra = {} if "use_cache" in inputs else {"use_cache": multi_token}
        logits, cache = self._logits_at(inputs, (lengths - 1)[:, None], **extra)  # (B, 1, V): the slot's first token
        first_lp = logits[:, 0].float().log_softmax(-1)  # (B, V)
        device = first_lp.device
        first = torch.tensor([[c[0] for c in row] for row in cands], device=device)  # (B, W)
        scores = first_lp.gather(1, first)  # (B, W)
        multi = [(b, w) for b, row in enumerate(cands) for w, c in enumerate(row) if len(c) > 1]
        if not multi:
            return scores
        rows = torch.tensor([b for b, _ in multi], device=device)
        cols = torch.tensor([w for _, w in multi], device=device)
        width = max(len(cands[b][w]) for b, w in multi) - 1
        ids = torch.zeros(len(multi), width, dtype=torch.long)
        targets = torch.zeros(len(multi), width, dtype=torch.long)
        valid = torch.zeros(len(multi), width, dtype=torch.bool)
        for k, (b, w) in enumerate(multi):
            c = cands[b][w]
            ids[k, : len(c) - 1] = torch.tensor(c[:-1])  # teacher forced: token t predicts token t + 1
            targets[k, : len(c) - 1] = torch.tensor(c[1:])
            valid[k, : len(c) - 1] = True
        ids, targets, valid = ids.to(device), targets.to(device), valid.to(device)
        cache.reorder_cache(rows)  # one cache row per (prompt, word): the prompt ran once
        attention = torch.cat([inputs["attention_mask"][rows], valid.long()], 1)
        step = {"input_ids": ids, "attention_mask": attention, self._cache_arg: cache, "use_cache": True}
        if self._takes_positions:
            step["position_ids"] = lengths[rows][:, None] + torch.arange(width, device=device)
        keep = torch.arange(width, device=device).expand(len(multi), -1)
        lp = self._logits_at(step, keep)[0].float().log_softmax(-1)  # (N, n - 1, V)
        rest = lp.gather(2, targets[..., None])[..., 0].masked_fill(~valid, 0.0).sum(1)  # (N,)
        return scores.index_put((rows, cols), rest, accumulate=True)

    def _word_scores_one_pass(self, encoded: Sequence[CausalEncoded], cands: list[list[list[int]]]) -> torch.Tensor:
        """(B, W) word scores in one forward: the candidates' tokens (``cands``: per prompt, per word) appended
        after each prompt, 4-D masked."""
        width = max(len(e.input_ids) for e in encoded)
        extra = max(sum(len(c) - 1 for c in row) for row in cands)
        layout = self.one_pass_layout(encoded, cands, width, extra)
        lp = self._logits_at(self.one_pass_inputs(layout), layout.keep.to(self.device))[0]  # (B, 1 + extra, V)
        return layout.read(lp.float().log_softmax(-1), len(cands[0]))

    def one_pass_layout(self, encoded: Sequence[CausalEncoded], cands: list[list[list[int]]], width: int,
                        extra: int) -> OnePass:
        """Each prompt right-padded to ``width``, then its candidates' first n - 1 tokens (at most ``extra``)."""
        n, total = len(encoded), width + extra
        positions = torch.zeros(n, total, dtype=torch.long)
        positions[:, :width] = torch.arange(width)
        allowed = torch.eye(total, dtype=torch.bool).repeat(n, 1, 1)  # padding rows see themselves: no empty row
        keep = torch.zeros(n, 1 + extra, dtype=torch.long)  # where the head runs: the slot, then each candidate token
        sequences, reads = [], []
        for b, (e, row) in enumerate(zip(encoded, cands)):
            length = len(e.input_ids)
            appended = [(w, t) for w, c in enumerate(row) for t in range(len(c) - 1)]
            allowed[b, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
            keep[b] = length - 1
            start: dict[int, int] = {}
            for k, (w, t) in enumerate(appended):
                col = width + k
                start.setdefault(w, col)
                positions[b, col] = length + t
                allowed[b, col, :length] = True
                allowed[b, col, start[w]:col + 1] = True  # its own word's tokens so far
                keep[b, 1 + k] = col
            index = {wt: 1 + k for k, wt in enumerate(appended)}
            reads += [(b, w, 0 if t == 0 else index[(w, t - 1)], token)
                      for w, c in enumerate(row) for t, token in enumerate(c)]
            tokens = e.input_ids + [0] * (width - length) + [row[w][t] for w, t in appended]
            sequences.append(CausalEncoded(tokens + [0] * (total - len(tokens)), e.soft_pos, []))
        return OnePass(sequences, positions, allowed, keep, reads)

    def one_pass_inputs(self, layout: OnePass) -> dict[str, Any]:
        """The model inputs of a layout: ids (or embeddings with the soft prompt), positions, the 4-D mask."""
        n, total = layout.positions.shape
        dtype = self.lm.get_input_embeddings().weight.dtype
        inputs, _ = self._prefix_batch(layout.sequences)  # soft prompt and key/value prefix as for the prompt alone
        mask = torch.zeros(n, 1, total, total, dtype=dtype).masked_fill(~layout.allowed[:, None], torch.finfo(dtype).min)
        if self.kv_prefix is not None:
            seen = inputs["attention_mask"][:, : self.kv_prefix.length].to(dtype)  # (B, P): 1 visible, 0 hidden
            columns = ((1 - seen) * torch.finfo(dtype).min)[:, None, None, :].expand(n, 1, total, -1)
            mask = torch.cat([columns.cpu(), mask], -1)
        inputs["attention_mask"] = mask.to(self.device)
        if self._takes_positions:
            inputs["position_ids"] = layout.positions.to(self.device)
        inputs.setdefault("use_cache", False)
        return inputs

    def _word_scores_full(self, encoded: Sequence[CausalEncoded]) -> torch.Tensor:
        """The same scores with one full forward per (prompt, word): for models that cannot share a cache."""
        cands = self._candidates(encoded)
        seqs, spans = [], []
        for e, row in zip(encoded, cands):
            for c in row:
                seqs.append(CausalEncoded(e.input_ids + c[:-1], e.soft_pos, []))
                spans.append((len(e.input_ids) - 1, c))
        inputs, _ = self._prefix_batch(seqs)
        width = max(len(c) for _, c in spans)
        device = self.device
        positions = torch.zeros(len(seqs), width, dtype=torch.long)
        targets = torch.zeros(len(seqs), width, dtype=torch.long)
        valid = torch.zeros(len(seqs), width, dtype=torch.bool)
        for k, (start, c) in enumerate(spans):
            positions[k, : len(c)] = torch.arange(start, start + len(c))
            targets[k, : len(c)] = torch.tensor(c)
            valid[k, : len(c)] = True
        lp = self._logits_at(inputs, positions.to(device))[0].float().log_softmax(-1)
        total = lp.gather(2, targets.to(device)[..., None])[..., 0].masked_fill(~valid.to(device), 0.0).sum(1)
        return total.view(len(encoded), -1)

    def attach_soft_verbalizer(self) -> None:
        """A soft verbalizer (:mod:`promptcls.parts.soft_verbalizer`) started from the label words' output rows."""
        from ..parts.soft_verbalizer import from_output_layer

        self._output_path = self._output_stand_in("verbalizer")
        first = [ids[0] for ids in self.label_words.token_ids]
        self.soft_verbalizer = from_output_layer(self.lm.get_output_embeddings(), first, type(self.lm).__name__)
        self.soft_verbalizer.to(self.device)

    def _output_stand_in(self, what: str) -> str:
        """The path of the output layer, for a view that replaces it (``what`` names the mode in errors)."""
        from ..views import module_path

        if self.score_suffix:
            raise ValueError(f"train_mode {what!r} reads the state at the slot's first token; score_suffix=True scores "
                             "the text after it too: leave score_suffix=False")
        out = self.lm.get_output_embeddings()
        path = module_path(self.lm, out) if out is not None else None
        if path is None:
            raise ValueError(f"train_mode {what!r} reads the output layer's input, but {type(self.lm).__name__} has no "
                             "output layer of its own: train the prompt instead")
        return path

    def attach_prototypes(self, prototypes: nn.Module) -> None:
        """Class prototypes (:mod:`promptcls.parts.prototypes`) of the state that predicts the answer."""
        self._output_path = self._output_stand_in("proto")
        self.prototypes = prototypes.to(self.device)

    def hidden_size(self) -> int:
        """The width of the states the output layer reads."""
        return int(self.lm.get_output_embeddings().weight.shape[1])

    def slot_states(self, encoded: Sequence[CausalEncoded], rows: Any = None) -> torch.Tensor:
        """(B, H) the last hidden state at each prompt's last position: the input of the output layer there."""
        from ..views import StandIn, view

        inputs, lengths = self._prefix_batch(encoded)
        inputs.setdefault("use_cache", False)
        lm = view(self.lm, {self._output_path: StandIn(self.lm.get_output_embeddings(), lambda out, x: x)})
        positions = (lengths - 1)[:, None]
        if self._keep_rows:
            states = lm(**inputs, logits_to_keep=positions).logits
        else:
            states = torch.take_along_dim(lm(**inputs).logits, positions[..., None], dim=1)
        return states[:, 0]

    def _soft_class_scores(self, encoded: Sequence[CausalEncoded]) -> torch.Tensor:
        """(B, C): the soft verbalizer's logits at each prompt's last position, aggregated per class."""
        from ..views import StandIn, view

        inputs, lengths = self._prefix_batch(encoded)
        inputs.setdefault("use_cache", False)
        sv = self.soft_verbalizer
        lm = view(self.lm, {self._output_path: StandIn(self.lm.get_output_embeddings(), lambda out, x: sv.logits(x))})
        positions = (lengths - 1)[:, None]
        if self._keep_rows:
            logits = lm(**inputs, logits_to_keep=positions).logits
        else:
            logits = torch.take_along_dim(lm(**inputs).logits, positions[..., None], dim=1)
        return self.label_words.aggregate(logits[:, 0].float())  # (B, 1, W) -> (B, C)

    def class_scores(self, encoded: Sequence[CausalEncoded], decoding: str = "parallel") -> torch.Tensor:
        """(B, C) class scores. Multi-token words are exact left to right, whatever ``decoding`` says."""
        if self.prototypes is not None:
            manual = self.label_words.aggregate(self.word_scores(encoded)) if self.prototypes.ensemble else None
            return self.prototypes.scores(self.slot_states(encoded), manual)
        if self.soft_verbalizer is not None:
            return self._soft_class_scores(encoded)
        return self.label_words.aggregate(self.word_scores(encoded))

    def relative_class_scores(self, encoded: Sequence[CausalEncoded] | None = None, rows: Any = None) -> torch.Tensor:
        return self.class_scores(encoded)

    def slot_log_probs(self, encoded: Sequence[CausalEncoded]) -> torch.Tensor:
        """(B, V) log-probabilities of every vocabulary token as the slot's first token."""
        inputs, lengths = self._prefix_batch(encoded)
        inputs.setdefault("use_cache", False)
        return self._logits_at(inputs, (lengths - 1)[:, None])[0][:, 0].float().log_softmax(-1)

    def auxiliary_loss(self, encoded: Sequence[CausalEncoded], generator: torch.Generator) -> torch.Tensor:
        """PET's auxiliary loss for a causal LM: the language-model loss on the unlabeled prompts."""
        inputs, lengths = self._prefix_batch(encoded)
        width = int(lengths.max())
        mask = torch.arange(width, device=lengths.device)[None] < lengths[:, None]  # (B, L) real tokens
        ids = torch.zeros(len(encoded), width, dtype=torch.long, device=lengths.device)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, device=ids.device)
        inputs.setdefault("use_cache", False)
        logits = self.lm(**inputs).logits[:, :-1].float()  # every position is scored here
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        soft = torch.zeros_like(mask)
        for i, e in enumerate(encoded):
            soft[i, e.soft_pos] = True
        targets = targets.masked_fill(soft[:, 1:], -100)  # soft tokens are not words to predict
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    # ------------------------------------------------------------------ probe
    @torch.no_grad()
    def _probe(self) -> None:
        """Does the cached path equal plain logits of the filled sequences on a tiny input? If not, fall back."""
        was_training = self.lm.training
        self.lm.eval()
        try:
            vocab = self.lm.get_input_embeddings().weight.shape[0]
            g = torch.Generator().manual_seed(0)
            prompts = [torch.randint(vocab, (n,), generator=g).tolist() for n in (3, 5)]
            words = [torch.randint(vocab, (n,), generator=g).tolist() for n in (1, 3)]
            encoded = [CausalEncoded(p, [], []) for p in prompts]
            saved = self.label_words, self.soft_prompt
            self.label_words = _Words(words)
            self.soft_prompt = None
            try:
                if self._keep_rows and not self._keeps_rows(encoded):
                    # transformers before per-row logits_to_keep index every row at every row's positions: the
                    # paths below would read out of range (on CUDA a device-side assert that ends the process)
                    self._keep_rows = False
                reference = torch.tensor([[self._plain_score(p, w) for w in words] for p in prompts])
                ok = self._agrees(encoded, reference)
                if not ok:
                    self.one_pass = False  # a model that does not take a 4-D mask: share the prompt's cache
                    logger.debug("%s: one-pass scoring disagrees with plain logits; sharing the key/value cache",
                                 type(self.lm).__name__)
                    ok = self._agrees(encoded, reference)
                if not ok:
                    self.shares_cache = False
                    logger.warning("%s cannot share its prompt's key/value cache between candidate words here: each "
                                   "(prompt, word) runs one full forward (correct, slower)", type(self.lm).__name__)
                    if self._keep_rows and not torch.allclose(self.word_scores(encoded).cpu(), reference, atol=1e-4):
                        self._keep_rows = False  # per-row logits_to_keep unsupported: full logits, gathered
            finally:
                self.label_words, self.soft_prompt = saved
        finally:
            self.lm.train(was_training)

    def _keeps_rows(self, encoded: list[CausalEncoded]) -> bool:
        """Does ``logits_to_keep`` take per-row positions (N, P), giving (N, P, V) logits at them?"""
        try:
            inputs, _ = self._prefix_batch(encoded)
            inputs.setdefault("use_cache", False)
            positions = torch.tensor([[0, 2], [1, 2]], device=self.device)
            kept = self.lm(**inputs, logits_to_keep=positions).logits
            full = torch.take_along_dim(self.lm(**inputs).logits, positions[..., None], dim=1)
            return bool(kept.shape == full.shape and torch.allclose(kept, full, atol=1e-4, rtol=1e-4))
        except Exception as e:  # a model whose forward takes no tensor there
            logger.debug("per-row logits_to_keep probe failed: %r", e)
            return False

    def _agrees(self, encoded: list[CausalEncoded], reference: torch.Tensor) -> bool:
        try:
            return bool(torch.allclose(self.word_scores(encoded).cpu(), reference, atol=1e-4, rtol=1e-4))
        except Exception as e:  # a model whose forward cannot be used this way
            logger.debug("scoring probe failed: %r", e)
            return False

    def _plain_score(self, prompt: list[int], word: list[int]) -> float:
        ids = torch.tensor([prompt + word], device=self.device)
        lp = self.lm(input_ids=ids).logits[0].float().log_softmax(-1)
        return float(sum(lp[len(prompt) - 1 + t, word[t]] for t in range(len(word))))


@dataclasses.dataclass
class OnePass:
    """The layout of a one-pass forward: per row its tokens, positions, which columns each column sees, where the
    head runs (``keep``), and the reads ``(row, word, keep column, token)`` that sum into the word scores."""

    sequences: list[CausalEncoded]
    positions: torch.Tensor  # (B, T)
    allowed: torch.Tensor  # (B, T, T) bool
    keep: torch.Tensor  # (B, 1 + extra)
    reads: list[tuple[int, int, int, int]]

    def read(self, lp: torch.Tensor, n_words: int) -> torch.Tensor:
        """(B, 1 + extra, V) log-probs at ``keep`` -> (B, W) word scores."""
        n = lp.shape[0]
        b, w, k, token = (torch.tensor(c, device=lp.device) for c in zip(*self.reads))
        flat = lp[b, k, token]
        return lp.new_zeros(n * n_words).index_add(0, b * n_words + w, flat).view(n, n_words)


def joint_class_scores(chunks: Sequence[tuple[CausalPromptModel, Sequence[CausalEncoded]]]) -> list[torch.Tensor]:
    """(B_t, C_t) class scores of several tasks' prompts on one causal LM, in ONE forward.

    Every task must share the whole LM (its soft prompt and label words are its own): each task lays its
    prompts out as in ``one_pass_layout`` to a common width, its soft prompt is spliced into its own rows,
    and the rows run together.
    """
    lead = chunks[0][0]
    cands = [model._candidates(encoded) for model, encoded in chunks]
    width = max(len(e.input_ids) for _, encoded in chunks for e in encoded)
    extra = max(sum(len(c) - 1 for c in row) for rows in cands for row in rows)
    layouts = [model.one_pass_layout(encoded, c, width, extra) for (model, encoded), c in zip(chunks, cands)]
    inputs = [model.one_pass_inputs(layout) for (model, _), layout in zip(chunks, layouts)]
    if any("inputs_embeds" in i for i in inputs):
        embed = lead.lm.get_input_embeddings()
        for i in inputs:
            if "input_ids" in i:
                i["inputs_embeds"] = embed(i.pop("input_ids"))
    merged = {k: torch.cat([i[k] for i in inputs]) for k in inputs[0] if k != "use_cache"}
    keep = torch.cat([layout.keep for layout in layouts]).to(lead.device)
    lp = lead._logits_at({**merged, "use_cache": False}, keep)[0].float().log_softmax(-1)  # (N, 1 + extra, V)
    out, start = [], 0
    for (model, encoded), layout, c in zip(chunks, layouts, cands):
        scores = layout.read(lp[start:start + len(encoded)], len(c[0]))
        out.append(model.label_words.aggregate(scores))
        start += len(encoded)
    return out


@dataclasses.dataclass
class _Words:
    """Stand-in label words for the probe."""

    token_ids: list[list[int]]
