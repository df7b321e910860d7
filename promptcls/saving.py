"""Save only what was trained (safetensors) plus a JSON config; load it back onto the same base model.

A saved directory holds ``promptcls_config.json`` (template, verbalizer, settings, the base
model's id or path and a fingerprint of its config, vocabulary and input embeddings, the
promptcls version) and ``trained.safetensors`` (the trained tensors, by name). Only ``full``
training stores the whole model. Writes go to a temporary directory that replaces the target
in one rename, so a failure never leaves a half-written directory or destroys an earlier save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .estimator import PromptClassifier
    from .modeling import PromptModel

__all__ = ["save_classifier", "load_classifier", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "promptcls_config.json"
WEIGHTS_NAME = "trained.safetensors"
_FORMAT = 1
# settings that are not JSON (loaded objects) or are given again at load time
_NOT_SAVED = {"model", "tokenizer", "callbacks", "template", "verbalizer", "device", "progress"}


def fingerprint(model: PromptModel) -> dict[str, Any]:
    """What identifies the base model: config structure, vocabulary, a sample of input embeddings."""
    config = model.mlm.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_attn_implementation",
                "_attn_implementation_autoset", "output_hidden_states", "output_attentions", "return_dict"):
        config.pop(key, None)
    vocab = sorted(model.tokenizer.get_vocab().items())
    table = model.mlm.get_input_embeddings().weight.detach()
    rows = torch.linspace(0, table.shape[0] - 1, 8).long()
    return {
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
        "embedding_sample": table[rows.to(table.device), :4].float().cpu().flatten().tolist(),
    }


def save_classifier(clf: PromptClassifier, directory: str | os.PathLike) -> Path:
    from . import __version__

    target = Path(directory)
    model = clf.model_
    named = dict(model.named_parameters())
    # trained tensors, and those the base checkpoint lacked (initialised at random when it was loaded)
    stored = sorted(set(clf.trained_parameters_) | set(getattr(clf, "initialised_parameters_", [])))
    tensors = {name: named[name].detach().contiguous().cpu() for name in stored}
    if clf.calibration_ is not None:
        tensors["calibration"] = clf.calibration_.detach().cpu()
    base = clf.model if isinstance(clf.model, str) else getattr(model.mlm, "name_or_path", "")
    params = {k: v for k, v in clf.get_params(deep=False).items() if k not in _NOT_SAVED}
    config = {
        "format": _FORMAT,
        "promptcls_version": __version__,
        "template": clf.template_.to_dict(),
        "verbalizer": clf.verbalizer_.to_dict(),
        "params": params,
        "base_model": {"name_or_path": str(base or ""), **clf.base_fingerprint_},
        "trained_parameters": list(clf.trained_parameters_),
        "stored_parameters": stored,
    }
    text = json.dumps(config, indent=2)  # fails before anything is written if a setting is not JSON

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (staging / CONFIG_NAME).write_text(text)
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt", "promptcls_version": __version__})
        if target.exists():
            if not (target / CONFIG_NAME).exists() and any(target.iterdir()):
                raise FileExistsError(f"{target} exists and is not a promptcls save: choose another directory")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "save")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved PromptClassifier (save_pretrained writes it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupted (not valid JSON: {e}); save the classifier again") from None


def load_classifier(directory: str | os.PathLike, model: Any = None, tokenizer: Any = None, **overrides: Any) -> PromptClassifier:
    import warnings

    from .estimator import PromptClassifier, classes_array

    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the save in {directory} is incomplete; save it again")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is corrupted ({e}); save the classifier again") from None

    params = dict(config.get("params", {}))
    known = set(PromptClassifier().get_params())
    unknown = sorted(set(params) - known)
    if unknown:
        warnings.warn(f"{directory}: ignoring settings unknown to this promptcls version: {unknown}", stacklevel=2)
    params = {k: v for k, v in params.items() if k in known}
    saved_base = config["base_model"]
    if model is None:
        model = saved_base.get("name_or_path")
        if not model:
            raise ValueError(f"{directory} was saved from a model without a name or path: pass it, from_pretrained(dir, model=...)")
    params.update(overrides)
    clf = PromptClassifier(
        model=model,
        template=config["template"],
        verbalizer=config["verbalizer"],
        tokenizer=tokenizer,
        **params,
    )
    template, verbalizer = clf._validate()
    stored = config.get("stored_parameters", config["trained_parameters"])
    clf.model_ = clf._build(template, verbalizer, copy_model=bool(stored) and not isinstance(model, str))
    got = fingerprint(clf.model_)
    for key, what in (("config_sha256", "config"), ("vocab_sha256", "vocabulary")):
        if got[key] != saved_base[key]:
            raise ValueError(
                f"{directory} was trained on base model {saved_base.get('name_or_path')!r}; the model given has a "
                f"different {what}: load it with the base model it was trained on"
            )
    if not torch.allclose(
        torch.tensor(got["embedding_sample"]), torch.tensor(saved_base["embedding_sample"]), atol=1e-3
    ):
        raise ValueError(
            f"{directory} was trained on base model {saved_base.get('name_or_path')!r}; the model given has different "
            "input embeddings (other weights): load it with the base model it was trained on"
        )
    named = dict(clf.model_.named_parameters())
    missing = [n for n in stored if n not in tensors]
    if missing:
        raise ValueError(f"{weights} lacks trained tensors {missing[:3]}: the save is corrupted; save it again")
    with torch.no_grad():
        for name in stored:
            if name not in named or named[name].shape != tensors[name].shape:
                raise ValueError(f"{weights}: tensor {name!r} does not fit this model; load it with the model it was trained on")
            named[name].copy_(tensors[name])
    clf.template_ = template
    clf.verbalizer_ = verbalizer
    clf.classes_ = classes_array(verbalizer)
    clf.base_fingerprint_ = got
    clf.trained_parameters_ = list(config["trained_parameters"])
    clf.calibration_ = tensors.get("calibration")
    return clf
