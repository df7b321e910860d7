"""The forward path: prompt ids -> encoder -> mask rows -> MLM head on those rows -> class scores.

The head is found without a table of model classes. Every ``AutoModelForMaskedLM`` calls its
base model (``model.base_model``) and hands the hidden states to its head. While scoring, the
model runs as a *view*: a shallow copy of the module tree (parameters shared, nothing copied)
whose base model is a stand-in that returns only the rows at the mask positions. The head then
runs on (B, M, H) instead of (B, L, H) and no (B, L, V) tensor exists. The same stand-in can
return cached mask rows without running the encoder at all (head training on a frozen
encoder). Views are made per call and never change the shared modules, so any number of
threads may score one model. A probe on a tiny input checks both paths against the plain
``model(...).logits``; where they disagree the model falls back to full logits, gathered at
the masks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from ..encoding import Encoded, PromptEncoding, collate
from ..packing import ROW, Packing, forward_arguments
from ..prompts import build_soft_prompt
from ..prompts import soft_counts as prompt_soft_counts
from ..template import Template
from ..verbalizer import Aggregation, LabelWords, Verbalizer
from ..views import StandIn, gather_rows, module_path, view

logger = logging.getLogger(__name__)

__all__ = ["PromptModel", "default_max_length", "position_limit", "joint_class_scores"]


def position_limit(model: nn.Module, tokenizer: Any) -> int | None:
    """The most tokens a model with absolute position embeddings can take (None: no fixed table)."""
    config = model.config
    n_pos = getattr(config, "max_position_embeddings", None)
    relative = getattr(config, "position_embedding_type", "absolute") not in (None, "absolute") or (
        getattr(config, "position_biased_input", True) is False
    )
    if not isinstance(n_pos, int) or relative:
        return None
    embeddings = getattr(model.base_model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return n_pos - (padding_idx + 1 if isinstance(padding_idx, int) else 0)


def default_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the model takes: the tokenizer's limit and the position table's, whichever is less."""
    limits = [position_limit(model, tokenizer)]
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 100_000:
        limits.append(declared)
    limits = [n for n in limits if n is not None]
    return min(limits) if limits else 512


class PromptModel(nn.Module):
    """A masked LM with a template's soft prompt and a verbalizer's label words.

    ``class_scores(encoded)`` gives (B, C) class scores; gradients flow where parameters
    require them. Scoring policy (aggregation, decoding) lives here; batching and devices live
    in the estimator.
    """

    def __init__(
        self,
        mlm: nn.Module,
        tokenizer: Any,
        template: Template,
        verbalizer: Verbalizer | None,
        max_length: int | None = None,
        seed: int = 0,
        keep: str = "head",
    ) -> None:
        super().__init__()
        self.mlm = mlm
        self.tokenizer = tokenizer
        self._base_path = module_path(mlm, mlm.base_model)
        self._output_path = module_path(mlm, mlm.get_output_embeddings())
        self.template = template
        # without a verbalizer (label-word search) the answer slot is one mask wide
        self.label_words = LabelWords.build(verbalizer, tokenizer) if verbalizer is not None else None
        soft_counts = prompt_soft_counts(template, tokenizer)
        limit = position_limit(mlm, tokenizer)
        if max_length is not None and limit is not None and max_length > limit:
            raise ValueError(
                f"max_length={max_length} is more than {type(mlm).__name__} takes ({limit} positions): "
                f"use max_length <= {limit}, or leave it None for the model's own limit"
            )
        max_length = max_length or default_max_length(mlm, tokenizer)
        n_mask = self.label_words.max_tokens if self.label_words is not None else 1
        # checks the template against the tokenizer and max_length before any soft-prompt tensor exists
        self.encoding = PromptEncoding(template, tokenizer, max_length, n_mask, soft_counts, keep)
        self.kv_prefix = None  # key/value prefixes at every layer (promptcls.parts.prefix), attached by a part
        self.soft_verbalizer = None  # vectors in place of the label words' output rows (promptcls.parts.soft_verbalizer)
        self.prototypes = None  # class prototypes of the slot states (promptcls.parts.prototypes)
        self.soft_prompt = (build_soft_prompt(mlm.get_input_embeddings(), tokenizer, template, seed,
                                              self.label_words.token_ids if self.label_words else None)
                            if template.has_soft_tokens else None)
        self.packs, self._position_offset = False, 0  # set by the packing probe below
        self.split_head = self._probe_split()
        if not self.split_head:
            logger.warning(
                "%s does not hand its base model's hidden states straight to its head; scoring falls back to "
                "full-vocabulary logits at every position (correct, slower)",
                type(mlm).__name__,
            )
        self.label_vocab_only = self._probe_label_vocab()
        self.packs, self._position_offset = self._probe_packing() if self.split_head else (False, 0)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def _probe_split(self) -> bool:
        """Do the mask-row paths equal plain logits on a tiny input? (eval mode, no dropout)"""
        was_training = self.mlm.training
        self.mlm.eval()
        try:
            vocab = self.mlm.get_input_embeddings().weight.shape[0]
            generator = torch.Generator().manual_seed(0)
            device = self.device
            ids = torch.randint(min(5, vocab - 1), vocab, (2, 7), generator=generator).to(device)
            attention = torch.ones_like(ids)
            positions = torch.tensor([[1, 4], [2, 6]], device=device)
            reference = self.mlm(input_ids=ids, attention_mask=attention).logits
            reference = gather_rows(reference, positions)
            split = self._split_logits({"input_ids": ids, "attention_mask": attention}, positions)
            rows = self.mask_hidden({"input_ids": ids, "attention_mask": attention, "mask_pos": positions})
            head_only = self.head_logits(rows)
            return bool(
                split.shape == reference.shape
                and torch.allclose(split, reference, atol=1e-4, rtol=1e-4)
                and torch.allclose(head_only, reference, atol=1e-4, rtol=1e-4)
            )
        except Exception as e:  # any model whose forward cannot be split this way
            logger.debug("head split probe failed: %r", e)
            return False
        finally:
            self.mlm.train(was_training)

    @torch.no_grad()
    def _probe_packing(self) -> tuple[bool, int]:
        """Does the encoder give the same states to prompts packed end to end (:mod:`promptcls.packing`) as to
        a padded batch, and from which first position id? (False, 0) where it does not."""
        base = self.mlm.base_model
        if "position_ids" not in inspect.signature(base.forward).parameters:
            return False, 0
        was_training = self.mlm.training
        self.mlm.eval()
        try:
            vocab = self.mlm.get_input_embeddings().weight.shape[0]
            ids = torch.randint(min(5, vocab - 1), vocab, (3, 7), generator=torch.Generator().manual_seed(2))
            mask = (torch.arange(7)[None] < torch.tensor([7, 3, 2])[:, None]).long()
            pad = self._pad_id()
            ids, mask = ids.masked_fill(mask == 0, pad).to(self.device), mask.to(self.device)
            reference = base(input_ids=ids, attention_mask=mask)[0]
            packing = Packing.of(mask.cpu(), min_saving=0.0)
            padding_idx = getattr(getattr(base, "embeddings", None), "padding_idx", None)
            for offset in dict.fromkeys([0, padding_idx + 1 if isinstance(padding_idx, int) else 0]):
                packed = packing.run(base, {"input_ids": ids, "attention_mask": mask}, offset, pad)[0]
                real = mask.bool()
                if torch.allclose(packed[real], reference[real], atol=1e-4, rtol=1e-4):
                    return True, offset
            return False, 0
        except Exception as e:  # noqa: BLE001 - an encoder that takes no 4-D mask or position ids: run it padded
            logger.debug("packing probe failed: %r", e)
            return False, 0
        finally:
            self.mlm.train(was_training)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def _probe_label_vocab(self) -> bool:
        """Can training use the label words' logits alone? (see ``relative_class_scores``)

        Only when every label word is one token: then all words share one mask position and one
        softmax normaliser, which no class score needs for training or argmax.
        """
        if self.label_words is None or list(self.label_words.groups) != [1] or not self.split_head:
            return False
        if self._output_path is None or self._base_path is None or self._output_path.startswith(self._base_path + "."):
            return False
        if not isinstance(self.mlm.get_output_embeddings(), nn.Linear):
            return False
        was_training = self.mlm.training
        self.mlm.eval()
        try:
            vocab = self.mlm.get_input_embeddings().weight.shape[0]
            tokens = torch.randint(min(5, vocab - 1), vocab, (2, 6), generator=torch.Generator().manual_seed(1))
            tokens = tokens.to(self.device)
            batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens),
                     "mask_pos": torch.tensor([[2], [5]], device=self.device)}
            rows = self.mask_hidden(batch)  # (2, 1, H)
            ids = self._label_ids()
            full = self.head_logits(rows)[..., ids]
            restricted = self.head_logits(rows, self._label_vocab())
            return bool(restricted.shape == full.shape and torch.allclose(restricted, full, atol=1e-4, rtol=1e-4))
        except Exception as e:
            logger.debug("label-vocabulary probe failed: %r", e)
            return False
        finally:
            self.mlm.train(was_training)

    def output_layer(self) -> nn.Linear | None:
        """The output layer, where the head's logits are exactly ``linear(head_states(rows), weight, bias)`` (the
        joint forward then runs the output layer once for the rows of every task that shares its weight);
        None otherwise. Probed once."""
        if getattr(self, "_output_layer_ok", None) is None:
            self._output_layer_ok = self._probe_output_layer()
        return self.mlm.get_output_embeddings() if self._output_layer_ok else None

    @torch.no_grad()
    def _probe_output_layer(self) -> bool:
        out = self.mlm.get_output_embeddings()
        if (not self.split_head or self.soft_verbalizer is not None or self.prototypes is not None
                or not isinstance(out, nn.Linear) or self._output_path is None
                or self._output_path.startswith(self._base_path + ".")):
            return False
        was_training = self.mlm.training
        self.mlm.eval()
        try:
            hidden = self.mlm.config.get_text_config().hidden_size
            rows = torch.randn(2, 1, hidden, generator=torch.Generator().manual_seed(3)).to(self.device, out.weight.dtype)
            full = self.head_logits(rows)
            split = nn.functional.linear(self.head_states(rows), out.weight, out.bias)
            return bool(split.shape == full.shape and torch.allclose(split, full, atol=1e-5, rtol=1e-5))
        except Exception as e:  # noqa: BLE001 - any head the split does not describe: score it whole
            logger.debug("output-layer probe failed: %r", e)
            return False
        finally:
            self.mlm.train(was_training)

    def head_states(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, M, H) encoder states -> (B, M, E) the head's states just before its output layer."""
        return self.head_logits(rows, {self._output_path: StandIn(self.mlm.get_output_embeddings(), lambda out, x: x)})

    def _label_ids(self) -> torch.Tensor:
        return torch.tensor([ids[0] for ids in self.label_words.token_ids], device=self.device)

    def _label_vocab(self) -> dict[str, StandIn]:
        """A view replacement: the output layer computes the label words' rows only, (..., W) logits."""
        ids = self._label_ids()

        def rows(out: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, out.weight[ids], out.bias[ids] if out.bias is not None else None)

        return {self._output_path: StandIn(self.mlm.get_output_embeddings(), rows)}

    def relative_class_scores(self, encoded: Sequence[Encoded] | None = None, rows: torch.Tensor | None = None):
        """(B, C) class scores up to a per-example constant, for training.

        With single-token label words every class score is ``f(label-word logits) - log Z`` with one
        normaliser ``log Z`` per example; cross-entropy over classes and the argmax do not depend on
        it, nor do the gradients. So the head computes the W label-word rows of its output layer
        instead of the whole vocabulary. Otherwise this is ``class_scores`` (or ``head_logits`` on
        cached mask ``rows``).
        """
        if not self.label_vocab_only or self.soft_verbalizer is not None or self.prototypes is not None:
            if rows is not None:
                return self.class_scores_from_rows(rows)
            return self.class_scores(encoded)
        only = self._label_vocab()
        logits = self.head_logits(rows[1], only) if rows is not None else self.mask_logits(self.batch(encoded, 1), only)
        return self.label_words.aggregate(logits[:, 0].float())  # (B, W) logits -> (B, C)

    def joint_key(self) -> tuple | None:
        """What this model's forward shares with another task's in one joint forward (the encoder's tensors);
        None where it cannot join one (key/value prefixes, or no split between encoder and head)."""
        if self.kv_prefix is not None or not self.split_head:
            return None
        return ("masked", tuple((n, p.data_ptr()) for n, p in self.mlm.base_model.named_parameters()))

    family = "masked"
    lm_prefix = "mlm"  # parameter names in saves: "mlm.<name in the transformers model>"

    @property
    def lm(self) -> nn.Module:
        """The transformers model."""
        return self.mlm

    @property
    def device(self) -> torch.device:
        return self.mlm.get_input_embeddings().weight.device

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The MLM head's own parameters: everything outside the base model except the output matrix."""
        in_base = {id(p) for p in self.mlm.base_model.parameters()}
        output = self.mlm.get_output_embeddings()
        output_weight = id(output.weight) if output is not None else None
        return {f"mlm.{name}": p for name, p in self.mlm.named_parameters()
                if id(p) not in in_base and id(p) != output_weight}

    def slot_log_probs(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """(B, V) log-probabilities of every vocabulary token at a one-token answer slot."""
        return self.mask_logits(self.batch(encoded, 1))[:, 0].float().log_softmax(-1)

    def auxiliary_loss(self, encoded: Sequence[Encoded], generator: torch.Generator) -> torch.Tensor:
        """PET's auxiliary MLM loss: BERT-style masking of 15% of the text tokens of unlabeled prompts."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        batch = collate(encoded, tok.pad_token_id if tok.pad_token_id is not None else 0)
        ids = batch["input_ids"]
        candidates = torch.tensor([[t not in special for t in row] for row in ids.tolist()]) & batch["attention_mask"].bool()
        chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & candidates
        for i in range(len(ids)):  # at least one masked token per prompt
            if not chosen[i].any() and candidates[i].any():
                chosen[i, candidates[i].nonzero()[0, 0]] = True
        targets = ids.clone()
        roll = torch.rand(ids.shape, generator=generator)
        ids = ids.clone()
        ids[chosen & (roll < 0.8)] = tok.mask_token_id
        random_words = torch.randint(len(tok), ids.shape, generator=generator)
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        ids[swap] = random_words[swap]
        counts = chosen.sum(1)
        width = int(counts.max())
        positions = torch.zeros(len(ids), width, dtype=torch.long)
        valid = torch.zeros(len(ids), width, dtype=torch.bool)
        for i in range(len(ids)):
            p = chosen[i].nonzero()[:, 0]
            positions[i, : len(p)] = p
            valid[i, : len(p)] = True
        device = self.device
        batch = {k: v.to(device) for k, v in batch.items()}
        batch.update(input_ids=ids.to(device), mask_pos=positions.to(device))
        logits = self.mask_logits(batch)  # (B, P, V) at the masked positions only
        gold = targets.gather(1, positions).to(device)
        return nn.functional.cross_entropy(logits[valid.to(device)].float(), gold[valid.to(device)])

    # ------------------------------------------------------------------ forward pieces
    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        soft_pos = batch.get("soft_pos")
        if self.soft_prompt is not None and soft_pos is not None and soft_pos.numel():
            embeds = self.mlm.get_input_embeddings()(batch["input_ids"])  # (B, L, E)
            prompt = self.soft_prompt().to(embeds.dtype)  # (S, E)
            rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
            embeds = embeds.index_put((rows.expand_as(soft_pos), soft_pos), prompt.expand(soft_pos.shape[0], -1, -1))
            inputs["inputs_embeds"] = embeds
        else:
            inputs["input_ids"] = batch["input_ids"]
        return inputs

    def _run_base(self, base: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward, with the key/value prefixes when a part attached them.

        A prefix reaches the encoder as a pre-filled cache with a 4-D additive mask over (prefix + prompt)
        columns; the embeddings stand in a view that ignores the cache's length, so positions start at 0.
        """
        if self.kv_prefix is None:
            if self.packs:  # prompts of mixed lengths: run them packed end to end, states back in the padded layout
                call = forward_arguments(base, args, kwargs)
                mask = call.get("attention_mask") if call is not None else None
                # on CPU only, as micro-batches: measured there; on an accelerator padding is nearly free
                if mask is not None and mask.dim() == 2 and mask.device.type == "cpu" and call.get("position_ids") is None:
                    packing = Packing.of(mask, most=min(ROW, self.encoding.max_length))  # within the position table
                    if packing is not None:
                        return packing.run(base, call, self._position_offset, self._pad_id())
            return base(*args, **kwargs)
        if self.kv_prefix.route == "attention":  # an encoder that takes no cache: through its attention interface
            from ..parts.prefix import prefixed_attention

            with prefixed_attention(self.mlm, self.kv_prefix.values(), self.kv_prefix.visible):
                return base(*args, **kwargs)
        cache_name, path, embeddings = self._prefix_plumbing()
        mask = kwargs["attention_mask"]  # (B, L), 1 = a real token
        b, length = mask.shape
        full = torch.cat([self.kv_prefix.mask_columns(b, mask), mask], 1)  # (B, P + L)
        dtype = self.mlm.get_input_embeddings().weight.dtype
        additive = (1.0 - full[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # (B, 1, 1, P + L)
        kwargs["attention_mask"] = additive.expand(b, 1, length, full.shape[1])
        kwargs[cache_name] = self.kv_prefix.cache(b, dtype)

        def from_zero(module: nn.Module, *a: Any, **k: Any) -> Any:
            for name in ("cache_length", "past_key_values_length"):
                if name in k:
                    k[name] = 0  # the prefix takes no positions
            return module(*a, **k)

        return view(base, {path: StandIn(embeddings, from_zero)} if path else {})(*args, **kwargs)

    def _prefix_plumbing(self) -> tuple[str, str | None, nn.Module]:
        """(the base model's cache argument, the path and module of its embeddings), found once."""
        if getattr(self, "_plumbing", None) is None:
            from ..parts.prefix import cache_argument

            base = self.mlm.base_model
            embeddings = next(m for m in base.modules() if self.mlm.get_input_embeddings() in m.children())
            self._plumbing = (cache_argument(base), module_path(base, embeddings), embeddings)
        return self._plumbing

    def _with_base(self, call: Callable[..., BaseModelOutput], extra: Mapping[str, Any] | None = None) -> nn.Module:
        """A view of the MLM whose base model answers ``call(base, *args, **kwargs)``."""
        if self._base_path is None:
            raise ValueError(f"{type(self.mlm).__name__} has no separate base model to stand in for")
        return view(self.mlm, {self._base_path: StandIn(self.mlm.base_model, call), **(extra or {})})

    def _split_logits(self, inputs: dict[str, torch.Tensor], positions: torch.Tensor,
                      extra: Mapping[str, Any] | None = None) -> torch.Tensor:
        def gather(base: nn.Module, *args: Any, **kwargs: Any) -> BaseModelOutput:
            out = self._run_base(base, *args, **kwargs)
            return BaseModelOutput(last_hidden_state=gather_rows(out[0], positions))

        return self._with_base(gather, extra)(**inputs).logits  # (B, M, V)

    def mask_logits(self, batch: dict[str, torch.Tensor], extra: Mapping[str, Any] | None = None) -> torch.Tensor:
        """(B, M, V) logits at the answer-slot positions; the head runs on those rows only.

        ``extra``: further view replacements (the label-vocabulary output layer).
        """
        inputs = self._model_inputs(batch)
        if self.split_head:
            return self._split_logits(inputs, batch["mask_pos"], extra)
        if self.kv_prefix is not None:
            return gather_rows(self._with_base(self._run_base, extra)(**inputs).logits, batch["mask_pos"])
        return gather_rows(self.mlm(**inputs).logits, batch["mask_pos"])

    def mask_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M, H) encoder states at the answer-slot positions (the head's input)."""
        hidden = self._run_base(self.mlm.base_model, **self._model_inputs(batch))[0]  # (B, L, H)
        return gather_rows(hidden, batch["mask_pos"])

    def head_logits(self, rows: torch.Tensor, extra: Mapping[str, Any] | None = None) -> torch.Tensor:
        """The MLM head alone on (B, M, H) rows -> (B, M, V); the encoder does not run."""
        b, m = rows.shape[:2]
        dummy = torch.zeros((b, m), dtype=torch.long, device=rows.device)
        run = self._with_base(lambda base, *a, **k: BaseModelOutput(last_hidden_state=rows), extra)
        return run(input_ids=dummy, attention_mask=torch.ones_like(dummy)).logits

    # ------------------------------------------------------------------ scores
    def batch(self, encoded: Sequence[Encoded], n_mask: int) -> dict[str, torch.Tensor]:
        """A padded batch on the model's device, each prompt with an ``n_mask``-token answer slot."""
        return {k: v.to(self.device) for k, v in collate([e.with_masks(n_mask) for e in encoded], self._pad_id()).items()}

    def group_batches(self, encoded: Sequence[Encoded]) -> dict[int, dict[str, torch.Tensor]]:
        """One padded batch per label-word length n, each prompt with an n-token answer slot."""
        return {n: self.batch(encoded, n) for n in self.label_words.groups}

    def word_scores_from_logits(self, n: int, logits: torch.Tensor) -> torch.Tensor:
        """(B, n, V) logits at an n-token slot -> (B, W_n) scores of the n-token words (summed log-probs)."""
        words = self.label_words.groups[n]
        ids = torch.tensor([self.label_words.token_ids[w] for w in words], device=logits.device)  # (W_n, n)
        if self.label_words.verbalizer.aggregation != Aggregation.MEAN_LOGIT:
            logits = logits.float().log_softmax(-1)
        index = ids.T[None].expand(logits.shape[0], -1, -1)  # (B, n, W_n)
        return logits.gather(2, index).sum(1)  # (B, W_n)

    def attach_soft_verbalizer(self) -> None:
        """A soft verbalizer (:mod:`promptcls.parts.soft_verbalizer`) started from the label words' output rows."""
        from ..parts.soft_verbalizer import from_output_layer

        if not self.split_head or self._output_path is None or self._output_path.startswith(self._base_path + "."):
            raise ValueError(f"train_mode 'verbalizer' replaces the output layer's rows, but {type(self.mlm).__name__} "
                             "does not keep its output layer apart from its encoder: train the head instead")
        first = [ids[0] for ids in self.label_words.token_ids]
        self.soft_verbalizer = from_output_layer(self.mlm.get_output_embeddings(), first, type(self.mlm).__name__)
        self.soft_verbalizer.to(self.device)

    def _soft_output(self) -> dict[str, StandIn]:
        """A view replacement: the output layer computes the soft verbalizer's (..., W) logits."""
        sv = self.soft_verbalizer
        return {self._output_path: StandIn(self.mlm.get_output_embeddings(), lambda out, x: sv.logits(x))}

    def attach_prototypes(self, prototypes: nn.Module) -> None:
        """Class prototypes (:mod:`promptcls.parts.prototypes`) of the encoder's states at a one-token slot."""
        if self._base_path is None:
            raise ValueError(f"train_mode 'proto' reads the encoder's states at the mask, but {type(self.mlm).__name__} "
                             "has no separate base model: train the head instead")
        self.prototypes = prototypes.to(self.device)

    def hidden_size(self) -> int:
        """The width of the encoder's states (what the head reads)."""
        config = self.mlm.config.get_text_config() if hasattr(self.mlm.config, "get_text_config") else self.mlm.config
        return int(config.hidden_size)

    def slot_states(self, encoded: Sequence[Encoded] | None = None, rows: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, H) encoder states at a one-token answer slot, from cached ``rows`` or by running the encoder."""
        if rows is not None:
            return rows[1][:, 0]
        return self.mask_hidden(self.batch(encoded, 1))[:, 0]

    def slot_widths(self) -> tuple[int, ...]:
        """The answer-slot widths a prompt is scored with: one per label-word length (a soft verbalizer: 1;
        prototypes: 1, and the label words' widths too when they join the scores)."""
        if self.soft_verbalizer is not None:
            return (1,)
        if self.prototypes is not None:
            return tuple(sorted({1, *self.label_words.groups})) if self.prototypes.ensemble else (1,)
        return tuple(self.label_words.groups)

    def class_scores_from_rows(self, rows: dict[int, torch.Tensor]) -> torch.Tensor:
        """{n: (B, n, H) encoder states at an n-token slot} -> (B, C) class scores; the head alone runs."""
        if self.prototypes is not None:
            manual = None
            if self.prototypes.ensemble:
                manual = self.class_scores_from_words({n: self.word_scores_from_logits(n, self.head_logits(rows[n]))
                                                       for n in self.label_words.groups})
            return self.prototypes.scores(rows[1][:, 0], manual)
        if self.soft_verbalizer is not None:
            return self.label_words.aggregate(self.head_logits(rows[1], self._soft_output())[:, 0].float())
        return self.class_scores_from_words({n: self.word_scores_from_logits(n, self.head_logits(r))
                                             for n, r in rows.items()})

    def class_scores(self, encoded: Sequence[Encoded], decoding: str = "parallel") -> torch.Tensor:
        """(B, C) class scores for encoded prompts. ``decoding``: ``"parallel"`` or ``"iterative"``."""
        if self.prototypes is not None:  # the slot states, then the prototypes (and the head) on them
            return self.class_scores_from_rows({n: self.mask_hidden(self.batch(encoded, n)) for n in self.slot_widths()})
        if self.soft_verbalizer is not None:  # W logits at a one-token slot
            logits = self.mask_logits(self.batch(encoded, 1), self._soft_output())
            return self.label_words.aggregate(logits[:, 0].float())
        word_scores = {}
        for n, batch in self.group_batches(encoded).items():
            if decoding == "iterative" and n > 1:
                word_scores[n] = self._iterative_word_scores(n, batch)
            else:
                word_scores[n] = self.word_scores_from_logits(n, self.mask_logits(batch))
        return self.class_scores_from_words(word_scores)

    def class_scores_from_words(self, word_scores: dict[int, torch.Tensor]) -> torch.Tensor:
        """{n: (B, W_n) scores of the n-token words} -> (B, C) class scores."""
        return self.label_words.aggregate(self._word_matrix(word_scores))

    def _word_matrix(self, word_scores: dict[int, torch.Tensor]) -> torch.Tensor:
        """{n: (B, W_n)} -> (B, W) in the verbalizer's word order."""
        first = next(iter(word_scores.values()))
        scores = first.new_zeros(first.shape[0], len(self.label_words.token_ids))  # (B, W)
        for n, s in word_scores.items():
            scores = scores.index_copy(1, torch.tensor(self.label_words.groups[n], device=s.device), s)
        return scores

    def word_scores(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """(B, W) every label word's log-probability at the slot (its tokens' summed, parallel decoding)."""
        return self._word_matrix({n: self.word_scores_from_logits(n, self.mask_logits(batch))
                                  for n, batch in self.group_batches(encoded).items()})

    def _iterative_word_scores(self, n: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """PET's max-first decoding of the n-token words, batched over examples and words.

        All n masks start open; each step fills the position whose word token is most probable
        and adds its log-prob; n forwards in all.
        """
        words = self.label_words.groups[n]
        b, w = batch["input_ids"].shape[0], len(words)
        targets = torch.tensor([self.label_words.token_ids[i] for i in words], device=self.device)  # (W, n)
        tiled = {k: v.repeat_interleave(w, dim=0) for k, v in batch.items()}  # (B*W, ...)
        targets = targets.repeat(b, 1)  # (B*W, n)
        rows = torch.arange(b * w, device=self.device)
        open_ = torch.ones(b * w, n, dtype=torch.bool, device=self.device)
        total = torch.zeros(b * w, device=self.device)
        input_ids = tiled["input_ids"].clone()
        for _ in range(n):
            lp = self.mask_logits({**tiled, "input_ids": input_ids}).float().log_softmax(-1)  # (B*W, n, V)
            token_lp = lp.gather(2, targets[..., None])[..., 0].masked_fill(~open_, float("-inf"))  # (B*W, n)
            best = token_lp.argmax(1)
            total = total + token_lp[rows, best]
            input_ids[rows, tiled["mask_pos"][rows, best]] = targets[rows, best]
            open_[rows, best] = False
        return total.view(b, w)

    def encode(self, rows: Sequence[dict[str, str]]) -> list[Encoded]:
        return self.encoding.encode(rows)


def joint_class_scores(chunks: Sequence[tuple[PromptModel, Sequence[Encoded]]]) -> list[torch.Tensor]:
    """(B_t, C_t) class scores of several tasks' prompts on one encoder, in ONE encoder forward.

    Every task must share the encoder (its soft prompt, MLM head and label words are its own): each task's
    prompts get their answer slots for each of its label-word lengths, its soft prompt is spliced into its
    own rows, all rows are right-padded to one width and run together; each task's head then runs on its
    own mask rows only.
    """
    lead = chunks[0][0]
    pieces = [(t, n, model.batch(encoded, n)) for t, (model, encoded) in enumerate(chunks) for n in model.slot_widths()]
    inputs = [chunks[t][0]._model_inputs(batch) for t, _, batch in pieces]
    embed = lead.mlm.get_input_embeddings()
    if any("inputs_embeds" in i for i in inputs):
        for i in inputs:
            if "input_ids" in i:
                i["inputs_embeds"] = embed(i.pop("input_ids"))  # (B, L, E)
    width = max(i["attention_mask"].shape[1] for i in inputs)
    pad = lead.tokenizer.pad_token_id if lead.tokenizer.pad_token_id is not None else 0
    typed = any("token_type_ids" in i for i in inputs)
    merged: dict[str, list[torch.Tensor]] = {}
    for i in inputs:
        b, length = i["attention_mask"].shape
        if typed and "token_type_ids" not in i:
            i["token_type_ids"] = torch.zeros_like(i["attention_mask"])
        for k, v in i.items():
            fill = pad if k == "input_ids" else 0
            grow = (0, 0, 0, width - length) if v.dim() == 3 else (0, width - length)
            merged.setdefault(k, []).append(nn.functional.pad(v, grow, value=fill))
    hidden = lead._run_base(lead.mlm.base_model, **{k: torch.cat(v) for k, v in merged.items()})[0]  # (N, L, H)
    rows: list[dict[int, torch.Tensor]] = [{} for _ in chunks]
    start = 0
    for t, n, batch in pieces:
        size = batch["mask_pos"].shape[0]
        rows[t][n] = gather_rows(hidden[start:start + size], batch["mask_pos"])  # (B, n, H)
        start += size
    out: list[torch.Tensor | None] = [None] * len(chunks)
    # tasks whose output layers share one weight (tied to the shared input embeddings): each task's head up to
    # its output layer, then ONE product with the vocabulary for all of their rows, each task's own bias after
    sharing: dict[int, list[int]] = {}
    for t, (model, _) in enumerate(chunks):
        layer = model.output_layer()
        if layer is not None:
            sharing.setdefault(layer.weight.data_ptr(), []).append(t)
    for group in sharing.values():
        if len(group) < 2:
            continue
        states = [(t, n, chunks[t][0].head_states(r)) for t in group for n, r in rows[t].items()]
        weight = chunks[group[0]][0].output_layer().weight
        flat = torch.cat([s.reshape(-1, s.shape[-1]) for _, _, s in states])
        logits = nn.functional.linear(flat, weight)  # (sum of B * n, V)
        words: dict[int, dict[int, torch.Tensor]] = {t: {} for t in group}
        start = 0
        for t, n, s in states:
            size = s.shape[0] * s.shape[1]
            piece = logits[start:start + size].view(*s.shape[:2], -1)
            bias = chunks[t][0].output_layer().bias
            model = chunks[t][0]
            words[t][n] = model.word_scores_from_logits(n, piece + bias if bias is not None else piece)
            start += size
        for t in group:
            out[t] = chunks[t][0].class_scores_from_words(words[t])
    return [o if o is not None else model.class_scores_from_rows(r)
            for o, (model, _), r in zip(out, chunks, rows)]
