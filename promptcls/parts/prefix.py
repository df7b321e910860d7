"""The ``prefix`` part: trained key/value prefixes at every attention layer (prefix tuning, Li and Liang
2021; P-tuning v2, Liu et al. 2022).

Each layer attends to ``prefix_length`` extra key/value pairs before the prompt's own. They reach the
model as a pre-filled key/value cache (transformers' ``DynamicCache``), the way a causal LM reads its
past: the prompt's attention mask gains ``prefix_length`` visible columns, and position ids are those of
the prompt alone (a prefix takes no positions). A masked LM gets a 4-D mask built here and its
embeddings stand in a view that ignores the cache's length, so positions start at 0 as without a prefix.

The prefixes start from the model's own keys and values of ``prefix_length`` sampled vocabulary tokens
(Li and Liang found real activations a better start than random values). A zero prefix is *not* a
no-op: softmax attention gives its keys weight and dilutes the prompt's values, so no start equals
the base model; a probe instead checks that a prefix whose columns are masked scores exactly as the
base model does (positions and masks are right), and a model whose attention takes no cache gets a
clear error.

``prefix_hidden_size`` trains through Li and Liang's re-parameterisation, ``start + MLP(embedding)`` with
a zero-initialised last layer (so training starts at ``start``); after training it is folded into one
tensor and the save holds only the prefixes, (layers, 2, key/value heads, prefix_length, head size).

Encoders whose forward takes no cache (ALBERT, ModernBERT in this transformers version) get their prefixes
through transformers' attention interface instead (``route == "attention"``): the model's attention
implementation becomes a registered wrapper of the one it had (``sdpa`` or ``eager``) that, during a
prefixed forward of the calling thread only, puts each layer's prefix keys and values before the layer's
own and widens its attention mask by the prefix columns. Outside such a forward the wrapper calls the
original function unchanged, so other classifiers sharing the model score as before. Layers are counted
per forward, so ALBERT's one shared layer gets a prefix for each of its passes. A model whose attention
does not go through the interface (DeBERTa-v2's disentangled attention) gets a clear error.

With a prefix the encoder's output changes as it trains, so head-only caching does not apply: every
step runs the encoder again.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import Part

logger = logging.getLogger(__name__)

__all__ = ["DeepPrefix", "PrefixPart", "prefix_shape", "prefixed_attention"]


def prefix_shape(config: Any, length: int) -> tuple[int, int, int, int, int]:
    """(layers, 2, key/value heads, length, head size) of a model config's attention."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, 2, kv_heads, length, head_dim


class DeepPrefix(nn.Module):
    """Key/value prefixes for every layer; ``cache(batch)`` returns a cache pre-filled with them."""

    def __init__(self, start: torch.Tensor, config: Any, hidden_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.visible = True  # False: the prefix columns are masked (the probe)
        self.route = "cache"  # or "attention": through the attention interface (encoders that take no cache)
        self.mlp: nn.Sequential | None = None
        if hidden_size:
            generator = torch.Generator().manual_seed(seed)
            self.register_buffer("start", start.detach().clone().float())
            self.embedding = nn.Parameter(torch.randn(start.shape[3], hidden_size, generator=generator))
            width = start[:, :, :, 0].numel()  # layers * 2 * heads * head size
            self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, width))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            self.prefix = nn.Parameter(start.detach().clone().float())

    @property
    def length(self) -> int:
        return (self.start if self.mlp is not None else self.prefix).shape[3]

    def values(self) -> torch.Tensor:
        """(layers, 2, heads, P, head size): the prefixes, through the MLP while it exists."""
        if self.mlp is None:
            return self.prefix
        layers, two, heads, length, dim = self.start.shape
        delta = self.mlp(self.embedding)  # (P, layers * 2 * heads * dim)
        return self.start + delta.view(length, layers, two, heads, dim).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the prefixes it gives: what a save keeps."""
        if self.mlp is None:
            return
        value = self.values().detach().clone()
        del self.mlp, self.embedding, self.start
        self.mlp = None
        self.prefix = nn.Parameter(value)

    def cache(self, batch: int, dtype: torch.dtype) -> Any:
        """A fresh ``DynamicCache`` holding the prefixes for ``batch`` rows (caches are filled in place)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        kv = self.values().to(dtype)
        for layer in range(kv.shape[0]):
            keys = kv[layer, 0][None].expand(batch, -1, -1, -1)  # (B, heads, P, head size)
            values = kv[layer, 1][None].expand(batch, -1, -1, -1)
            cache.update(keys, values, layer)
        return cache

    def mask_columns(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(B, P) attention-mask columns for the prefix: ones, or zeros while the probe hides it."""
        return torch.full((batch, self.length), int(self.visible), dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------- prefixes through the attention interface
_WRAPPER = "promptcls_prefix_"  # + the implementation it wraps
_ACTIVE = threading.local()  # the prefixed forward running in this thread, if any


class _PrefixedForward:
    """One forward's state: the prefixes, whether they are visible, the layer count; or, with ``record``, the
    keys and values each layer computes (a prefix's start)."""

    def __init__(self, kv: torch.Tensor | None, visible: bool = True, record: bool = False) -> None:
        self.kv, self.visible, self.record = kv, visible, record
        self.layers = 0
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []


def _original_attention(name: str, module: nn.Module) -> Any:
    if name == "sdpa":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    return sys.modules[type(module).__module__].eager_attention_forward  # the model's own eager attention


def _widened(mask: torch.Tensor | None, length: int, visible: bool, query: torch.Tensor,
             key: torch.Tensor) -> torch.Tensor | None:
    """The attention mask with ``length`` prefix columns in front: visible, or hidden (the probe)."""
    if mask is None:
        if visible:
            return None
        mask = torch.ones(1, 1, query.shape[2], key.shape[2], dtype=torch.bool, device=query.device)
    if mask.dtype == torch.bool:
        fill: Any = visible
    else:
        fill = 0.0 if visible else torch.finfo(mask.dtype).min
    return torch.cat([mask.new_full((*mask.shape[:-1], length), fill), mask], -1)


def _wrapper(original: str) -> Any:
    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
        inner = _original_attention(original, module)
        call = getattr(_ACTIVE, "forward", None)
        if call is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        layer = call.layers
        call.layers += 1
        if call.record:
            call.recorded.append((key.detach(), value.detach()))
            return inner(module, query, key, value, attention_mask, **kwargs)
        if layer >= call.kv.shape[0]:
            raise ValueError(f"{type(module).__name__} ran attention more often than its config's "
                             f"{call.kv.shape[0]} layers: it cannot take key/value prefixes")
        b = key.shape[0]
        keys = call.kv[layer, 0].to(key.dtype)[None].expand(b, -1, -1, -1)  # (B, heads, P, head size)
        values = call.kv[layer, 1].to(value.dtype)[None].expand(b, -1, -1, -1)
        mask = _widened(attention_mask, keys.shape[2], call.visible, query, key)
        return inner(module, query, torch.cat([keys, key], 2), torch.cat([values, value], 2), mask, **kwargs)

    return attention


def _use_prefix_attention(lm: nn.Module) -> None:
    """Switch ``lm`` to the pass-through wrapper of its attention implementation (once)."""
    current = lm.config._attn_implementation
    if str(current).startswith(_WRAPPER):
        return
    name = type(lm).__name__
    if not getattr(lm, "_supports_attention_backend", False):
        raise ValueError(f"{name} cannot take key/value prefixes: its encoder takes no key/value cache and its "
                         "attention does not go through transformers' attention interface; use "
                         "train_mode='prompt' (soft tokens) or 'lora' instead")
    if current not in ("sdpa", "eager"):
        raise ValueError(f"{name} uses attn_implementation={current!r}; key/value prefixes on a model without a "
                         "key/value cache need 'sdpa' or 'eager': load it with attn_implementation='sdpa'")
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    wrapped = _WRAPPER + current
    old = lm.config  # our copy of the module tree gets its own config: the caller's model keeps its attention
    new = copy.deepcopy(old)
    for module in lm.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    if wrapped not in AttentionInterface._global_mapping:
        AttentionInterface.register(wrapped, _wrapper(current))
        AttentionMaskInterface.register(wrapped, ALL_MASK_ATTENTION_FUNCTIONS[current])  # the masks it had
    lm.set_attn_implementation(wrapped)
    if lm.config._attn_implementation != wrapped:
        raise ValueError(f"{name} cannot take key/value prefixes: it did not take the attention implementation "
                         f"{wrapped!r}; use train_mode='prompt' (soft tokens) or 'lora' instead")


@contextlib.contextmanager
def prefixed_attention(lm: nn.Module, kv: torch.Tensor | None = None, visible: bool = True,
                       record: bool = False) -> Iterator[_PrefixedForward]:
    """A forward of ``lm`` in this thread, inside the block, attends to the prefixes ``kv`` (layers, 2, heads,
    P, head size); with ``record`` it records each layer's keys and values instead. Afterwards the number
    of attention calls is checked against the prefix's layers."""
    _use_prefix_attention(lm)  # again each time: a user may have switched the implementation since
    call, earlier = _PrefixedForward(kv, visible, record), getattr(_ACTIVE, "forward", None)
    _ACTIVE.forward = call
    try:
        yield call
    finally:
        _ACTIVE.forward = earlier
    if kv is not None and call.layers != kv.shape[0]:
        raise ValueError(f"{type(lm).__name__} ran attention {call.layers} times in one forward, not once for each of "
                         f"its {kv.shape[0]} layers: it cannot take key/value prefixes")


def cache_argument(module: nn.Module) -> str | None:
    """The name under which ``module.forward`` takes a key/value cache, or None."""
    params = inspect.signature(module.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


class PrefixPart(Part):
    adds_parameters = True
    name = "prefix"
    side = "prompt"
    default_learning_rate = 1e-2

    def attach(self, model: nn.Module) -> None:
        length = int(self.options.get("prefix_length") or 16)
        hidden = self.options.get("prefix_hidden_size")
        lm = model.lm
        target = lm if model.family == "causal" else getattr(lm, "base_model", None)
        route = "cache"
        if target is None or cache_argument(target) is None:
            if model.family == "causal" or target is None:
                raise ValueError(
                    f"{type(lm).__name__} cannot take key/value prefixes: its model takes no key/value cache in this "
                    "transformers version; use train_mode='prompt' (soft tokens) or 'lora' instead"
                )
            route = "attention"
            _use_prefix_attention(lm)  # a clear error where the attention interface is not there either
        start = self._start(model, length, route)
        model.kv_prefix = DeepPrefix(start, lm.config, hidden, seed=int(self.options.get("seed", 0))).to(model.device)
        model.kv_prefix.route = route
        try:
            ok = self._probe(model)
        except Exception as e:  # an attention that does not read a pre-filled cache the way a decoder does
            logger.debug("prefix probe failed: %r", e)
            ok = False
        if not ok:
            model.kv_prefix = None
            raise ValueError(
                f"{type(lm).__name__} cannot take key/value prefixes: with the prefix masked out its scores differ "
                "from the model's own (its attention or positions do not follow a pre-filled cache); use "
                "train_mode='prompt' (soft tokens) or 'lora' instead"
            )

    @torch.no_grad()
    def _start(self, model: nn.Module, length: int, route: str = "cache") -> torch.Tensor:
        """The model's keys and values of ``length`` sampled ordinary tokens, (layers, 2, heads, P, head size)."""
        from transformers import DynamicCache

        tok = model.tokenizer
        vocab = model.lm.get_input_embeddings().weight.shape[0]
        special = set(tok.all_special_ids)
        ordinary = torch.tensor([i for i in range(vocab) if i not in special])
        generator = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        ids = ordinary[torch.randint(len(ordinary), (1, length), generator=generator)].to(model.device)
        lm = model.lm
        target = lm if model.family == "causal" else lm.base_model
        was_training = lm.training
        lm.eval()
        try:
            if route == "attention":
                with prefixed_attention(lm, record=True) as call:
                    target(input_ids=ids, attention_mask=torch.ones_like(ids))
                layers = call.recorded
            else:
                cache = DynamicCache(config=lm.config)
                target(input_ids=ids, attention_mask=torch.ones_like(ids), **{cache_argument(target): cache},
                       use_cache=True)
                layers = [(layer.keys, layer.values) for layer in cache.layers]
        finally:
            lm.train(was_training)
        shape = prefix_shape(lm.config, length)
        if len(layers) != shape[0]:
            raise ValueError(f"{type(lm).__name__} filled {len(layers)} cache layers, not {shape[0]}: it cannot take "
                             "key/value prefixes; use train_mode='prompt' or 'lora'")
        start = torch.stack([torch.stack([k[0], v[0]]) for k, v in layers]).float()  # (layers, 2, heads, P, d)
        if tuple(start.shape) != shape:
            raise ValueError(f"{type(lm).__name__}'s cache holds keys of shape {tuple(start.shape[2:])}, not "
                             f"{shape[2:]}: it cannot take key/value prefixes; use train_mode='prompt' or 'lora'")
        return start

    @torch.no_grad()
    def _probe(self, model: nn.Module) -> bool:
        """With its columns masked, does the prefix leave the scores of a padded batch as they were?"""
        if model.label_words is None:
            return True
        was_training = model.training
        model.eval()
        prefix = model.kv_prefix
        try:
            encoded = model.encode([{f: "a b c d" for f in model.template.fields}, {f: "a" for f in model.template.fields}])
            model.kv_prefix = None
            plain = model.class_scores(encoded)
            model.kv_prefix = prefix
            prefix.visible = False
            hidden = model.class_scores(encoded)
            prefix.visible = True
            shown = model.class_scores(encoded)
            return bool(torch.allclose(plain, hidden, atol=1e-4, rtol=1e-4) and torch.isfinite(shown).all()
                        and not torch.allclose(plain, shown, atol=1e-6, rtol=0))
        finally:
            model.kv_prefix = prefix
            prefix.visible = True
            model.train(was_training)

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"kv_prefix.{n}": p for n, p in model.kv_prefix.named_parameters()}

    def after_training(self, model: nn.Module) -> None:
        model.kv_prefix.fold()

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"prefix_length": model.kv_prefix.length, "shape": list(model.kv_prefix.values().shape),
                "route": model.kv_prefix.route,
                "prefix_hidden_size (folded after training)": self.options.get("prefix_hidden_size")}
