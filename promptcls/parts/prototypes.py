"""The ``proto`` part: a prototypical verbalizer (ProtoVerb, Cui et al. 2022) - class prototypes of the states
at the answer slot, trained with a contrastive loss.

A linear projection (no bias, ``proto_dim`` wide) maps the model's last hidden state at the slot (a masked
LM's mask position; a causal LM's last prompt position, the state that predicts the answer) into a small
space, where each class has a prototype vector. The class scores are the cosine similarities between the
projected state and the prototypes. Training minimises the sum of ProtoVerb's two losses over each batch:

- instance-prototype: cross-entropy over the cosine similarities, each state against every prototype;
- instance-instance: for every pair (i, j) of one class, ``-log(exp s_ij / sum_k exp s_ik)`` over the
  batch's states k (cosine similarities, as the paper writes it), averaged over the pairs.

The scores are cosines in [-1, 1] with no temperature, as in the paper, so ``predict_proba`` is flat; the
argmax is the prototype's choice. ``proto_ensemble=True`` averages the z-scored (per example, over
classes) cosines with the z-scored manual-verbalizer scores, OpenPrompt's ``multi_verb="multi"``. With two
classes that average is a vote that ties whenever the two disagree, so it is refused there.

The encoder is untouched, so prototypes trained alone cache the slot states as the head does; with
``prompt``, ``lora`` or ``prefix`` the contrastive loss trains those parts too. The save holds the
projection and the prototypes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import Part


class Prototypes(nn.Module):
    """(dim, H) projection and (C, dim) class prototypes."""

    def __init__(self, hidden: int, classes: int, dim: int = 64, ensemble: bool = False, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / hidden**0.5  # nn.Linear's default start, drawn from our own generator
        self.projection = nn.Linear(hidden, dim, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.empty(dim, hidden).uniform_(-bound, bound, generator=generator))
        limit = (6.0 / (classes + dim)) ** 0.5  # Xavier-uniform prototypes
        self.prototypes = nn.Parameter(torch.empty(classes, dim).uniform_(-limit, limit, generator=generator))
        self.ensemble = ensemble

    def embed(self, states: torch.Tensor) -> torch.Tensor:
        """(B, H) slot states -> (B, dim) unit vectors."""
        return F.normalize(self.projection(states.float()), dim=-1)

    def similarities(self, states: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine similarity of each projected state to each prototype."""
        return self.embed(states) @ F.normalize(self.prototypes, dim=-1).T

    def scores(self, states: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) class scores: the cosines, or (with the ensemble) their z-scored mean with ``manual``'s."""
        cosines = self.similarities(states)
        if not self.ensemble:
            return cosines
        return (_standardised(cosines) + _standardised(manual.float())) / 2

    def loss(self, states: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """ProtoVerb's instance-prototype plus instance-instance loss over one batch of (B, H) slot states."""
        v = self.embed(states)
        cosines = v @ F.normalize(self.prototypes, dim=-1).T  # (B, C)
        if class_weights is None:
            to_prototypes = F.cross_entropy(cosines, targets)
        else:
            weights = class_weights.to(cosines.device)[targets]
            to_prototypes = (weights * F.cross_entropy(cosines, targets, reduction="none")).mean()
        pairs = v @ v.T  # (B, B)
        same = (targets[:, None] == targets[None]).float()
        log_p = pairs - pairs.logsumexp(1, keepdim=True)
        between = -(log_p * same).sum() / same.sum()
        return to_prototypes + between


def _standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-12)


class PrototypePart(Part):
    name = "proto"
    keeps_encoder = True
    adds_parameters = True
    default_learning_rate = 1e-2
    #: trains with its own loss (``model.prototypes.loss``) instead of cross-entropy over class scores
    own_loss = True

    def attach(self, model: nn.Module) -> None:
        if model.label_words is None:
            raise ValueError("train_mode 'proto' needs a verbalizer: its classes get the prototypes")
        classes = len(model.label_words.verbalizer.classes)
        ensemble = bool(self.options.get("proto_ensemble", False))
        if ensemble and classes < 3:
            raise ValueError(f"proto_ensemble=True averages z-scored prototype and label-word scores; with {classes} "
                             "classes each z-score is +-0.71, so the average ties whenever the two disagree: leave "
                             "proto_ensemble=False")
        dim = int(self.options.get("proto_dim") or 64)
        model.attach_prototypes(Prototypes(model.hidden_size(), classes, dim, ensemble,
                                           seed=int(self.options.get("seed", 0))))

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"prototypes.{n}": p for n, p in model.prototypes.named_parameters()}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        p = model.prototypes
        return {"classes": int(p.prototypes.shape[0]), "proto_dim": int(p.prototypes.shape[1]),
                "proto_ensemble": p.ensemble}
