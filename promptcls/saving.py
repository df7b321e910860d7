"""Save only what was trained (safetensors) plus a JSON config; load it back onto the same base model.

A saved directory holds ``promptcls_config.json`` (template, verbalizer, settings, the base
model's id or path and a fingerprint of its config, vocabulary and weights, the promptcls
version) and ``trained.safetensors`` (the trained tensors, by name). Only ``full`` training
stores the whole model.

Crash safety: a save is written and flushed to a staging directory beside the target, then
swapped in. On Linux the swap is one atomic ``renameat2(RENAME_EXCHANGE)``: at every instant the
path holds the old save or the new one. Where the kernel or file system cannot exchange, the old
save is renamed aside first; a crash between the two renames leaves it in ``.NAME.old-*``, and
the next load or save of the path puts it back.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable
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
_FORMAT = 2
# settings that are not JSON (loaded objects) or are given again at load time
_NOT_SAVED = {"model", "tokenizer", "callbacks", "template", "verbalizer", "device", "progress"}
# settings a load may not change: the saved tensors were trained for them
_FIXED_AT_LOAD = {"template", "verbalizer", "train_mode", "value_range", "demonstrations", "prefix_length", "prefix_hidden_size", "proto_dim", "proto_ensemble", "word_calibration", "word_refinement", "lora_rank",
                  "lora_alpha", "lora_dropout", "lora_target_modules"}
_SAMPLES_PER_TENSOR = 64


def _weights_digests(model: PromptModel, exclude: Iterable[str]) -> dict[str, str]:
    """sha256 of an evenly spaced sample of every parameter (name, shape and values), at three precisions.

    The values are hashed as float32, and rounded to bfloat16 and to float16: the same weights loaded in a
    lower precision still match at that precision, while other weights of the same shape do not.
    """
    skip = set(exclude)
    names, samples = [], []
    for name, p in model.named_parameters():
        if name in skip or not name.startswith(model.lm_prefix + "."):
            continue
        flat = p.detach().reshape(-1)
        k = min(_SAMPLES_PER_TENSOR, flat.numel())
        idx = (torch.arange(k, dtype=torch.long) * (flat.numel() - 1) // max(k - 1, 1)).to(flat.device)  # exact ints
        names.append(f"{name.replace('.base_layer.', '.')}:{tuple(p.shape)}")  # as without peft's adapters
        samples.append(flat[idx].float().cpu())
    values = torch.cat(samples) if samples else torch.zeros(0)
    head = json.dumps(names).encode()
    out = {}
    for key, dtype in (("weights_sha256", torch.float32), ("weights_bf16_sha256", torch.bfloat16),
                       ("weights_fp16_sha256", torch.float16)):
        rounded = values.to(dtype).float().numpy().tobytes()
        out[key] = hashlib.sha256(head + rounded).hexdigest()
    return out


def fingerprint(model: PromptModel, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """What identifies the base model: config structure, vocabulary, and a sample of every weight.

    ``exclude``: parameters the checkpoint lacked (initialised at random, restored from the save).
    """
    config = model.lm.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_attn_implementation",
                "_attn_implementation_autoset", "output_hidden_states", "output_attentions", "return_dict"):
        config.pop(key, None)
    vocab = sorted(model.tokenizer.get_vocab().items())
    return {
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
        **_weights_digests(model, exclude),
    }


def same_weights(saved: dict[str, Any], got: dict[str, Any]) -> bool:
    """Do two fingerprints' weights match, at the precision they share?"""
    keys = ("weights_sha256", "weights_bf16_sha256", "weights_fp16_sha256")
    return any(saved.get(k) is not None and saved.get(k) == got.get(k) for k in keys)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in settings (np.int64(3), np.float32(0.1)) as plain JSON values."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"setting value {value!r} of type {type(value).__name__} cannot be saved as JSON")


# ---------------------------------------------------------------------- crash-safe directory swap
def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``); False where that is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _leftovers(target: Path, kind: str) -> list[Path]:
    """``.NAME.old-*`` (kind "old") or ``.NAME.new-*`` (kind "new") directories of earlier saves, newest first."""
    parent = target.parent
    if not parent.is_dir():
        return []
    found = list(parent.glob(f".{target.name}.{kind}-*"))
    if kind == "old":  # the layout of promptcls 0.1: .NAME.old.XXXX/save
        found += [p / "save" for p in parent.glob(f".{target.name}.old.*") if (p / "save").is_dir()]
    found = [p for p in found if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover(target: str | os.PathLike) -> bool:
    """Put back the save that a crash left renamed aside; True if one was restored."""
    target = Path(target)
    if target.exists():
        return False
    for old in _leftovers(target, "old"):
        if (old / CONFIG_NAME).is_file() and (old / WEIGHTS_NAME).is_file():
            os.replace(old, target)
            _fsync(target.parent)
            return True
    return False


def _clean_leftovers(target: Path) -> None:
    for path in _leftovers(target, "old") + _leftovers(target, "new"):
        shutil.rmtree(path.parent if path.name == "save" else path, ignore_errors=True)


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
    if getattr(clf, "word_priors_", None) is not None:  # KPT's word priors and the words refinement kept
        tensors["word_priors"] = torch.tensor(list(clf.word_priors_.values()))
        if clf.model_.label_words.keep is not None:
            tensors["word_keep"] = clf.model_.label_words.keep.to(torch.uint8)
    base = clf.model if isinstance(clf.model, (str, os.PathLike)) else getattr(model.lm, "name_or_path", "")
    params = {k: v for k, v in clf.get_params(deep=False).items() if k not in _NOT_SAVED}
    params["train_mode"] = clf.train_mode_
    params["random_state"] = clf.random_state_  # the seed this fit used (None or a generator resolve to it)
    config = {
        "format": _FORMAT,
        "promptcls_version": __version__,
        "estimator": type(clf).__name__,
        "template": clf.template_.to_dict(),
        "verbalizer": clf.verbalizer_.to_dict(),
        "params": params,
        "base_model": {"name_or_path": str(base or ""), **clf.base_fingerprint_},
        "trained_parameters": list(clf.trained_parameters_),
        "stored_parameters": stored,
        "initialised_parameters": list(getattr(clf, "initialised_parameters_", [])),
        "parts": {part.name: part.describe(model) for part in getattr(clf, "parts_", [])},
    }
    if getattr(clf, "demonstration_pool_", None) is not None:  # the labelled examples demonstrations come from
        config["demonstration_pool"] = clf.demonstration_pool_.to_dict()
    # fails before anything is written if a setting is not JSON
    text = json.dumps(config, indent=2, default=_json_default, allow_nan=False)

    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)  # a crash during an earlier save left the old one aside
    if target.exists() and not (target / CONFIG_NAME).exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not a promptcls save: choose another directory")
    staging = target.parent / f".{target.name}.new-{uuid.uuid4().hex[:12]}"
    os.mkdir(staging)  # mode 0o777 less the umask, like any other folder the user makes
    try:
        _write_bytes(staging / CONFIG_NAME, text.encode())
        save_file(tensors, staging / WEIGHTS_NAME, metadata={"format": "pt", "promptcls_version": __version__})
        os.chmod(staging / WEIGHTS_NAME, 0o666 & ~_umask())  # safetensors writes 0600; a save is an ordinary file
        _fsync(staging / WEIGHTS_NAME)
        _fsync(staging)
        if not target.exists():
            os.replace(staging, target)
        elif _exchange(staging, target):  # target is the new save, staging the old one
            shutil.rmtree(staging, ignore_errors=True)
        else:
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _clean_leftovers(target)
    return target


def _corrupted(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is corrupted ({why}); save the classifier again")


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The saved config, checked for the shape ``save_classifier`` writes."""
    recover(directory)
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory} does not exist or is not a folder: give the folder save_pretrained wrote")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved PromptClassifier (save_pretrained writes it)")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _corrupted(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _corrupted(path, f"not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise _corrupted(path, f"a JSON {type(config).__name__}, not an object")
    shapes = {"template": dict, "verbalizer": dict, "base_model": dict, "trained_parameters": list}
    for key, kind in shapes.items():
        if key not in config:
            raise _corrupted(path, f"the key {key!r} is missing")
        if not isinstance(config[key], kind):
            raise _corrupted(path, f"{key!r} is a {type(config[key]).__name__}, not a JSON {kind.__name__}")
    for key, kind in (("params", dict), ("stored_parameters", list), ("initialised_parameters", list)):
        if key in config and not isinstance(config[key], kind):
            raise _corrupted(path, f"{key!r} is a {type(config[key]).__name__}, not a JSON {kind.__name__}")
    for key in ("trained_parameters", "stored_parameters", "initialised_parameters"):
        if not all(isinstance(n, str) for n in config.get(key, [])):
            raise _corrupted(path, f"{key!r} must list parameter names")
    base = config["base_model"]
    if not all(isinstance(base.get(k), str) for k in ("config_sha256", "vocab_sha256")):
        raise _corrupted(path, "the base model's fingerprint is missing")
    fmt = config.get("format", 1)
    if isinstance(fmt, int) and fmt > _FORMAT:
        import warnings

        warnings.warn(f"{directory} was saved by a newer promptcls (format {fmt}); loading it as format {_FORMAT}",
                      stacklevel=3)
    return config


def _replace_parameters(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put new parameters holding ``tensors`` in every slot of ``model``'s tree that holds the named ones.

    Slots, not values: a parameter tied to another (input and output embeddings) stays tied, and the module
    tree of a structural copy changes while the model it shares its other weights with does not.
    """
    named = dict(model.named_parameters())
    slots: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in model.modules():
        for leaf, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, leaf))
    for name, value in tensors.items():
        old = named[name]
        new = torch.nn.Parameter(value.to(dtype=old.dtype, device=old.device), requires_grad=False)
        for module, leaf in slots[id(old)]:
            module._parameters[leaf] = new


def load_classifier(directory: str | os.PathLike, model: Any = None, tokenizer: Any = None, *, cls: Any = None,
                    **overrides: Any) -> PromptClassifier:
    """A save loaded as ``cls`` (``PromptClassifier`` or a subclass such as ``PromptRegressor``)."""
    import warnings

    from .estimator import PromptClassifier, classes_array
    from .template import Template
    from .verbalizer import Verbalizer

    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the save in {directory} is incomplete; save it again")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise _corrupted(weights, str(e)) from None

    cls = cls or PromptClassifier
    saved_as = config.get("estimator", "PromptClassifier")
    if saved_as != cls.__name__:
        raise ValueError(f"{directory} holds a {saved_as}: load it with {saved_as}.from_pretrained")
    known = set(cls().get_params())
    fixed = sorted(set(overrides) & _FIXED_AT_LOAD)
    if fixed:
        raise ValueError(
            f"from_pretrained cannot change {fixed}: the saved tensors were trained for the saved "
            f"{' and '.join(fixed)}; build a new PromptClassifier for another one"
        )
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"from_pretrained got unknown settings {bad}; PromptClassifier takes {sorted(known - _FIXED_AT_LOAD)}")
    params = dict(config.get("params", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        warnings.warn(f"{directory}: ignoring settings unknown to this promptcls version: {unknown}", stacklevel=3)
    params = {k: v for k, v in params.items() if k in known}
    saved_base = config["base_model"]
    if model is None:
        model = saved_base.get("name_or_path")
        if not model:
            raise ValueError(f"{directory} was saved from a model without a name or path: pass it, from_pretrained(dir, model=...)")
    params.update(overrides)
    try:
        template, verbalizer = Template.from_dict(config["template"]), Verbalizer.from_dict(config["verbalizer"])
    except (ValueError, TypeError, KeyError) as e:
        raise _corrupted(directory / CONFIG_NAME, f"its template or verbalizer does not load: {e}") from None
    try:
        clf = cls(model=model, template=template, verbalizer=verbalizer, tokenizer=tokenizer, **params)
    except TypeError as e:
        raise _corrupted(directory / CONFIG_NAME, f"its settings do not load: {e}") from None
    clf._validate()
    stored = config.get("stored_parameters", config["trained_parameters"])
    # a model passed in is shared, not copied: the saved tensors replace its parameters in this classifier's own
    # module tree only (below), so several saves loaded onto one model hold its other weights once
    clf.model_ = clf._build(template, verbalizer, copy_model=False, covered=frozenset(stored))
    for part in clf.parts_:
        part.after_training(clf.model_)  # the save holds the folded form (the prefix without its MLP)
    # weights the base checkpoint lacked when the save was made are restored from it: not part of the base's
    # identity, though a model passed in (loaded by someone else) has other random values there
    clf.initialised_parameters_ = sorted(set(clf.initialised_parameters_) | set(config.get("initialised_parameters", [])))
    got = clf._fingerprint()
    for key, what in (("config_sha256", "config"), ("vocab_sha256", "vocabulary")):
        if got[key] != saved_base[key]:
            raise ValueError(
                f"{directory} was trained on base model {saved_base.get('name_or_path')!r}; the model given has a "
                f"different {what}: load it with the base model it was trained on"
            )
    if "embedding_sample" in saved_base and "weights_sha256" not in saved_base:  # saves of promptcls format 1
        table = clf.model_.lm.get_input_embeddings().weight.detach()
        rows = torch.linspace(0, table.shape[0] - 1, 8).long()
        sample = table[rows.to(table.device), :4].float().cpu().flatten()
        matches = torch.allclose(sample, torch.tensor(saved_base["embedding_sample"]), atol=1e-3)
    else:
        matches = same_weights(saved_base, got)
    if not matches:
        raise ValueError(
            f"{directory} was trained on base model {saved_base.get('name_or_path')!r}; the model given has the "
            "same config and vocabulary but other weights: load it with the base model it was trained on"
        )
    named = dict(clf.model_.named_parameters())
    missing = [n for n in stored if n not in tensors]
    if missing:
        raise _corrupted(weights, f"it lacks trained tensors {missing[:3]}")
    for name in stored:
        if name not in named or named[name].shape != tensors[name].shape:
            raise ValueError(f"{weights}: tensor {name!r} does not fit this model; load it with the model it was trained on")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise _corrupted(weights, f"tensor {name!r} holds NaN or infinite values")
    _replace_parameters(clf.model_, {name: tensors[name] for name in stored})
    clf.template_ = template
    clf.verbalizer_ = verbalizer
    clf.classes_ = classes_array(verbalizer)
    clf.demonstration_pool_ = None
    if clf.demonstrations:
        pool = config.get("demonstration_pool")
        if not isinstance(pool, dict) or not {"rows", "labels"} <= set(pool):
            raise _corrupted(directory / CONFIG_NAME, "demonstrations are on but it holds no demonstration pool")
        clf._set_pool(pool["rows"], pool["labels"])
    clf.base_fingerprint_ = got
    clf.trained_parameters_ = list(config["trained_parameters"])
    clf._count_trainable()
    clf.history_ = []
    clf.best_epoch_ = clf.best_dev_accuracy_ = None
    clf.word_priors_ = clf.label_words_kept_ = None
    words = clf.model_.label_words
    if "word_priors" in tensors:
        names = words.words_in_order()
        prior = tensors["word_priors"].float()
        if prior.shape != (len(names),):
            raise _corrupted(weights, f"its word priors have shape {tuple(prior.shape)}, not ({len(names)},)")
        clf.word_priors_ = {w: float(v) for w, v in zip(names, prior)}
        if clf.word_calibration:
            words.offsets = prior
        if "word_keep" in tensors:
            words.keep = tensors["word_keep"].bool()
            clf.label_words_kept_ = words.kept_words()
    if "calibration" in overrides:  # asked for at load time: computed for the setting given
        clf.calibration_ = clf._content_free_log_probs()
    else:
        calibration = tensors.get("calibration")
        if calibration is not None and calibration.shape != (len(clf.classes_),):
            raise _corrupted(weights, f"its calibration has shape {tuple(calibration.shape)}, not ({len(clf.classes_)},)")
        clf.calibration_ = calibration
    return clf
