"""The ``prompt`` part: the template's soft tokens and their P-tuning encoder (:mod:`promptcls.prompts`).

The soft prompt belongs to the template (``[SOFT]`` slots score as their initialisation before any
training), so this part builds nothing: it trains what the template made, and errs when there is none.
"""

from __future__ import annotations

from torch import nn

from . import Part


class SoftPromptPart(Part):
    name = "prompt"
    side = "prompt"
    default_learning_rate = 3e-2

    def attach(self, model: nn.Module) -> None:
        if model.soft_prompt is None:
            raise ValueError(
                f"train_mode={self.options.get('train_mode', 'prompt')!r} trains soft prompt tokens, but template "
                f"{model.template.source!r} has none: "
                "add [SOFT] slots, or train another part ('head', 'prefix', 'lora', 'full')"
            )

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"soft_prompt.{n}": p for n, p in model.soft_prompt.named_parameters()}
