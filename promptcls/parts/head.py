"""The ``head`` part: the family's own head (a masked LM's transform, layer norm and output bias; a causal
LM's untied output layer). The encoder stays frozen and its input fixed, so a head trained alone lets
training compute the mask rows once (``keeps_encoder``)."""

from __future__ import annotations

from torch import nn

from . import Part


class HeadPart(Part):
    name = "head"
    keeps_encoder = True
    default_learning_rate = 1e-2

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return model.head_parameters()
