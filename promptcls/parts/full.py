"""The ``full`` part: every weight of the model, and the soft prompt if the template has one (prompt-based
fine-tuning, PET and LM-BFF)."""

from __future__ import annotations

from torch import nn

from . import Part


class FullPart(Part):
    name = "full"
    default_learning_rate = 1e-4

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = {f"{model.lm_prefix}.{n}": p for n, p in model.lm.named_parameters()}
        if model.soft_prompt is not None:
            params.update({f"soft_prompt.{n}": p for n, p in model.soft_prompt.named_parameters()})
        return params
