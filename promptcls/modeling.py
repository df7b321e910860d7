"""The prompt model of each model family, picked from the model itself.

``build_prompt_model`` binds a template and a verbalizer to a loaded transformers model: a masked LM
reads the answer slot through its MLM head at the mask rows (:mod:`promptcls.families.masked`), a
causal LM scores each label word as the continuation of the prompt (:mod:`promptcls.families.causal`).
"""

from __future__ import annotations

from .families import build_prompt_model, detect_family
from .families.masked import PromptModel, default_max_length, position_limit
from .views import structural_copy

__all__ = ["PromptModel", "build_prompt_model", "detect_family", "default_max_length", "position_limit",
           "structural_copy"]
