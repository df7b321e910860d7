"""The ``lora`` and ``ia3`` parts: adapters from the ``peft`` library inside the frozen model.

``lora`` (Hu et al. 2021) adds a low-rank update ``B A`` (rank ``lora_rank``, scaled by
``lora_alpha / lora_rank``, ``B`` starting at zero) to linear layers; ``ia3`` (Liu et al. 2022) scales
their outputs (inputs, for the feed-forward layers) by learned vectors starting at one. Both start
as the base model exactly, and both work under any template and the verbalizer, for masked and
causal LMs: ``peft`` replaces the layers in place (``inject_adapter_in_model``) and promptcls's own
forward path runs unchanged.

The layers adapted by default are found from the model, not from a table of architectures: every
linear layer inside the model's repeated blocks (the ``ModuleList`` of its layers), attention and
feed-forward alike (QLoRA, Dettmers et al. 2023, found all of them needed to match fine-tuning); the
output layer, the embeddings and the MLM head are left alone. ``lora_target_modules`` takes ``peft``'s
own forms instead (module-name suffixes such as ``["query", "value"]``, a regex, ``"all-linear"``).

A save holds only the adapter tensors (``lora_A``/``lora_B``, or ``ia3_l``) and their ``peft`` config.
``PromptClassifier.merge_adapters()`` folds LoRA into the weights for inference (no extra cost per
forward); scores equal the unmerged ones to float precision.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..views import module_path
from . import Part

__all__ = ["LoraPart", "IA3Part", "block_linear_layers", "merge_adapters", "unmerge_adapters"]


def block_linear_layers(lm: nn.Module) -> list[str]:
    """Full names (in ``lm``) of the linear layers inside the model's repeated blocks."""
    from transformers.pytorch_utils import Conv1D

    base = getattr(lm, "base_model", lm)
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    n_layers = getattr(config, "num_hidden_layers", None)
    lists = [(name, m) for name, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    blocks = [x for x in lists if len(x[1]) == n_layers] or sorted(lists, key=lambda x: len(x[1]))[-1:]
    outer = module_path(lm, base)
    names = []
    for block_name, block in blocks[:1]:
        for name, m in block.named_modules():
            if isinstance(m, (nn.Linear, Conv1D)):
                names.append(".".join(p for p in (outer, block_name, name) if p))
    return names


def _adapter_layers(lm: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]


def merge_adapters(lm: nn.Module) -> int:
    """Fold every LoRA update into its layer's weight; returns how many layers were merged."""
    layers = [m for m in _adapter_layers(lm) if not m.merged]
    for m in layers:
        base = m.get_base_layer()  # its own weight first: the base model may be shared with other classifiers
        base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        m.merge()
    return len(layers)


def unmerge_adapters(lm: nn.Module) -> int:
    layers = [m for m in _adapter_layers(lm) if m.merged]
    for m in layers:
        m.unmerge()
    return len(layers)


def _transposed(lm: nn.Module, targets: Any) -> bool:
    """Are the layers adapted GPT-2-style ``Conv1D``s, which store their weight transposed (peft's fan_in_fan_out)?"""
    from transformers.pytorch_utils import Conv1D

    names = set(targets) if isinstance(targets, list) else set()
    return any(isinstance(m, Conv1D) for n, m in lm.named_modules() if n in names)


class _PeftPart(Part):
    adds_parameters = True
    """A ``peft`` tuner injected into the transformers model; trains the parameters named ``prefix...``."""

    key: str  # the tuner's parameter-name marker in peft ("lora_", "ia3_")

    def _targets(self, model: nn.Module) -> Any:
        given = self.options.get("lora_target_modules")
        if given is not None:
            return list(given) if not isinstance(given, str) else given
        found = block_linear_layers(model.lm)
        if not found:
            raise ValueError(f"{type(model.lm).__name__}: no linear layers found in its repeated blocks to adapt; "
                             "name them with lora_target_modules=[...]")
        return found

    def peft_config(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def attach(self, model: nn.Module) -> None:
        from peft import inject_adapter_in_model

        if any(self.key in n for n, _ in model.lm.named_parameters()):
            raise ValueError(f"{type(model.lm).__name__} already holds {self.name} adapters: pass the base model")
        config = self.peft_config(model)
        try:
            inject_adapter_in_model(config, model.lm)
        except ValueError as e:  # peft names what it could not match
            raise ValueError(f"{self.name}: {e}") from None
        self.config_dict = config.to_dict()
        for p in model.lm.parameters():
            p.requires_grad_(False)  # peft marks its own as trainable; training decides

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"{model.lm_prefix}.{n}": p for n, p in model.lm.named_parameters() if self.key in n}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        config = dict(getattr(self, "config_dict", {}))
        for k, v in list(config.items()):
            if isinstance(v, set):
                config[k] = sorted(v)
        config.pop("target_modules", None)  # found from the model again at load; can be hundreds of names
        return {"peft": config, "target_modules": self.options.get("lora_target_modules") or "blocks' linear layers"}


class LoraPart(_PeftPart):
    name = "lora"
    key = "lora_"
    default_learning_rate = 1e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import LoraConfig

        targets = self._targets(model)
        return LoraConfig(r=int(self.options.get("lora_rank") or 8), lora_alpha=float(self.options.get("lora_alpha") or 16),
                          lora_dropout=float(self.options.get("lora_dropout") or 0.0), target_modules=targets,
                          bias="none", fan_in_fan_out=_transposed(model.lm, targets))


class IA3Part(_PeftPart):
    name = "ia3"
    key = "ia3_"
    default_learning_rate = 3e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import IA3Config

        targets = self._targets(model)
        if isinstance(targets, str):
            feedforward = []
        else:  # the feed-forward layers: outside the attention modules
            feedforward = [t for t in targets if "attn" not in t.lower() and "attention" not in t.lower()]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward,
                         fan_in_fan_out=_transposed(model.lm, targets))
