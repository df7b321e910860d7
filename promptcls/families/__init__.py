"""Model families: how a family reads the answer slot. ``build_prompt_model`` picks one from the model.

- ``masked`` (BERT, RoBERTa, DeBERTa, ModernBERT, ...): the encoder's states at the mask rows, then the
  MLM head on those rows only (:mod:`promptcls.families.masked`).
- ``causal`` (GPT-2, Llama, Qwen, SmolLM, ...): the label word as the continuation of the prompt, the
  prompt run once and its key/value cache shared by every candidate (:mod:`promptcls.families.causal`).

The family is read from the model, never from a table of class names: a loaded model that can
generate text (``can_generate()``) is causal, and a checkpoint's config is causal when transformers'
own auto classes load it as a causal LM and not as a masked LM.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAMILIES", "detect_family", "build_prompt_model", "joint_class_scores"]

FAMILIES = ("masked", "causal")


def detect_family(model: Any) -> str:
    """``"masked"`` or ``"causal"`` for a loaded model or a config."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING, PretrainedConfig

    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is an encoder-decoder model: promptcls takes masked or causal LMs")
    if not isinstance(model, PretrainedConfig):
        can_generate = getattr(model, "can_generate", None)
        return "causal" if callable(can_generate) and can_generate() else "masked"
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return "masked"
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "causal"
    raise ValueError(f"transformers loads {type(config).__name__} neither as a masked LM nor as a causal LM")


def build_prompt_model(lm: Any, tokenizer: Any, template: Any, verbalizer: Any, *, max_length: int | None = None,
                       seed: int = 0, family: str = "auto", score_suffix: bool = False, chat_template: bool = False,
                       keep: str = "head"):
    """The prompt model of ``lm``'s family (or the ``family`` given)."""
    family = detect_family(lm) if family == "auto" else family
    if family == "causal":
        from .causal import CausalPromptModel

        return CausalPromptModel(lm, tokenizer, template, verbalizer, max_length=max_length, seed=seed,
                                 score_suffix=score_suffix, chat_template=chat_template, keep=keep)
    if score_suffix or chat_template:
        what = "score_suffix" if score_suffix else "chat_template"
        raise ValueError(f"{what}=True is for causal LMs; {type(lm).__name__} is a masked LM, which reads the whole "
                         "filled prompt at once: leave it False")
    from .masked import PromptModel

    return PromptModel(lm, tokenizer, template, verbalizer, max_length=max_length, seed=seed, keep=keep)


def joint_class_scores(chunks):
    """(B_t, C_t) class scores of several tasks' prompts ``[(prompt model, encoded prompts), ...]`` in one forward.

    The models must have one ``joint_key()`` (one family, the same shared tensors)."""
    if chunks[0][0].family == "causal":
        from .causal import joint_class_scores as joint
    else:
        from .masked import joint_class_scores as joint
    return joint(chunks)
