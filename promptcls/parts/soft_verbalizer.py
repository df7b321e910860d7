"""The ``verbalizer`` part: a soft verbalizer (WARP, Hambardzumyan et al. 2021) - trainable vectors in place of the
label words' rows of the output layer.

Each label word gets a vector and a bias, started from its (first) token's row of the model's output layer
and its output bias; the class scores are the verbalizer's aggregation of ``<state at the slot, vector> +
bias``. Before training this is the manual verbalizer's score of every single-token word up to one constant
per example (the vocabulary's normaliser), so the class probabilities are the same; a multi-token word
starts from its first token. The model's own output layer (tied to the input embeddings or not) is never
changed: the vectors are copies. The encoder is untouched, so a soft verbalizer trained alone caches the
mask rows as the head does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import Part


class SoftVerbalizer(nn.Module):
    """(W, E) vectors and (W,) biases, one per label word, standing in for the output layer's rows."""

    def __init__(self, vectors: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.vectors = nn.Parameter(vectors.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) head states -> (..., W) label-word logits."""
        return nn.functional.linear(x, self.vectors.to(x.dtype), self.bias.to(x.dtype))


def from_output_layer(output: nn.Module, first_tokens: list[int], what: str) -> SoftVerbalizer:
    """A soft verbalizer started from the output layer's rows (and bias) of each word's first token."""
    weight = getattr(output, "weight", None)
    if not isinstance(output, nn.Linear) or weight is None:
        raise ValueError(f"train_mode 'verbalizer' needs an output layer with a weight per vocabulary token; {what} "
                         f"has {type(output).__name__}: train the head or the prompt instead")
    ids = torch.tensor(first_tokens, device=weight.device)
    bias = output.bias[ids] if output.bias is not None else torch.zeros(len(first_tokens), device=weight.device)
    return SoftVerbalizer(weight[ids], bias)


class SoftVerbalizerPart(Part):
    name = "verbalizer"
    keeps_encoder = True
    adds_parameters = True
    default_learning_rate = 1e-2

    def attach(self, model: nn.Module) -> None:
        if model.label_words is None:
            raise ValueError("train_mode 'verbalizer' needs label words to start from")
        model.attach_soft_verbalizer()

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"soft_verbalizer.{n}": p for n, p in model.soft_verbalizer.named_parameters()}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"words": int(model.soft_verbalizer.vectors.shape[0]), "dim": int(model.soft_verbalizer.vectors.shape[1])}
