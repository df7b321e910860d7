"""The sklearn face: ``PromptClassifier`` loads the model, validates, batches, and predicts."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .encoding import length_batches
from .inputs import to_rows
from .modeling import PromptModel
from .saving import fingerprint, load_classifier, save_classifier
from .template import Template
from .verbalizer import Verbalizer

logger = logging.getLogger(__name__)

__all__ = ["PromptClassifier", "TrainMode", "resolve_device", "load_model"]

DEFAULT_CONTENT_FREE = ("N/A", "")


class TrainMode(str, Enum):
    """Which parameters ``fit`` updates."""

    NONE = "none"  # zero-shot: fit only validates and fixes classes_
    HEAD = "head"  # the MLM head (transform, layer norm, output bias)
    PROMPT = "prompt"  # soft-token embeddings (and the P-tuning encoder)
    HEAD_PROMPT = "head+prompt"
    FULL = "full"  # every parameter of the model, and the prompt


class Decoding(str, Enum):
    PARALLEL = "parallel"
    ITERATIVE = "iterative"


def _choice(enum: type[Enum], value: Any, name: str) -> Enum:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in enum)
        raise ValueError(f"{name}={value!r} is not one of {choices}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available: use device='cpu' or 'auto'")
    return device


def load_model(model: Any, tokenizer: Any = None, missing: list[str] | None = None) -> tuple[torch.nn.Module, Any]:
    """A masked LM and its tokenizer from a hub id, a local path, a loaded model, or a (model, tokenizer) pair.

    Names of parameters the checkpoint lacks (freshly initialised, e.g. the MLM head of an encoder saved
    without one) are appended to ``missing``.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

    if isinstance(model, tuple) and len(model) == 2:
        model, tokenizer = model
    if isinstance(model, str):
        mlm, info = AutoModelForMaskedLM.from_pretrained(model, output_loading_info=True)
        names = dict(mlm.named_parameters())
        absent = [k for k in info.get("missing_keys", ()) if k in names]
        if absent:
            logger.warning(
                "%s has no weights for %d parameters (%s, ...): they are initialised randomly, seeded by random_state, "
                "and saved with the classifier; zero-shot scores from an untrained head are not meaningful",
                model, len(absent), absent[0],
            )
        if missing is not None:
            missing.extend(absent)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model)
        return mlm, tokenizer
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise ValueError(
                f"a loaded {type(model).__name__} needs its tokenizer: PromptClassifier(model, ..., tokenizer=tok) "
                "or pass the hub id / local path instead"
            )
        if model.get_output_embeddings() is None:
            raise ValueError(
                f"{type(model).__name__} has no language-model head; load it with AutoModelForMaskedLM.from_pretrained"
            )
        return model, tokenizer
    raise TypeError(
        f"model must be a hub id, a local path, a loaded masked LM or a (model, tokenizer) pair, got {type(model).__name__}"
    )


class TextInputMixin:
    """sklearn tags for estimators whose X is text (strings, pairs, dicts, DataFrames), not a 2-D array."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class PromptClassifier(TextInputMixin, ClassifierMixin, BaseEstimator):
    """Prompt-based classifier on a masked LM (PET-style): template + verbalizer -> class scores.

    Zero-shot needs no labels::

        clf = PromptClassifier("roberta-base", "{text} It was [MASK].",
                               {"negative": ["terrible"], "positive": ["great"]}).fit()
        clf.predict(["A wonderful film."])

    Parameters
    ----------
    model : str, PreTrainedModel or (model, tokenizer)
        Hub id or local path of a masked LM, or a loaded ``AutoModelForMaskedLM``.
        A loaded model is never modified: training works on a copy.
    template : str, Template or dict
        The prompt, with ``{field}`` slots, one ``[MASK]`` and optional ``[SOFT]`` tokens.
    verbalizer : dict, list, Verbalizer
        Label words per class: ``{"negative": ["terrible"], "positive": ["great", "good"]}``.
    tokenizer : tokenizer, optional
        Required with a loaded model; loaded from ``model`` otherwise.
    train_mode : {"none", "head", "prompt", "head+prompt", "full"}
        What ``fit`` trains. ``"none"`` is zero-shot.
    columns : dict, optional
        Template field -> column name, for DataFrames, dicts and datasets.
    max_length : int, optional
        Longest prompt in tokens (default: the model's). Only text fields are truncated.
    batch_size : int
        Prompts per forward when scoring (and when caching head-mode states). On CPU a batch
        runs as micro-batches of similar length, so short prompts do not pay for a long one.
    decoding : {"parallel", "iterative"}
        Multi-token label words: one forward (``parallel``) or PET's max-first decoding.
    calibration : bool or list of str
        Contextual calibration (Zhao et al. 2021): divide by the class probabilities of
        content-free inputs (``True``: ``"N/A"`` and ``""``; or your own strings).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    random_state : int
        Seeds soft-prompt initialisation and training.
    progress : bool or None
        Progress bars; ``None`` shows them on a terminal only.

    Training (``train_mode`` other than ``"none"``; see :mod:`promptcls.training`):

    epochs, max_steps : int
        Passes over the data, or a number of optimiser steps (overrides ``epochs``).
    train_batch_size, gradient_accumulation_steps : int
        Examples per batch, batches per optimiser step. On CPU a batch runs as micro-batches
        of similar length with the same gradient (:func:`promptcls.encoding.length_groups`).
    learning_rate, prompt_learning_rate : float, optional
        For the model / head and for the soft prompt. Defaults per mode: head 1e-3,
        full 2e-5, prompt 3e-3.
    head_learning_rate : float, optional
        The MLM head's own parameters (transform, layer norm, output bias) train at this
        rate instead of ``learning_rate``. For ``full`` mode on a checkpoint that ships no
        MLM head (``initialised_parameters_`` lists what was initialised at random): a new
        head wants a larger rate than the pretrained encoder.
    warmup_ratio, weight_decay, max_grad_norm : float
        Linear warm-up then linear decay; AdamW decay (not on biases and norms); clipping.
    mixed_precision : {"no", "fp16", "bf16"}
        Autocast on CUDA.
    mlm_loss_weight : float, optional
        PET's auxiliary MLM loss on ``fit(..., unlabeled=texts)``: the classification loss
        gets this weight and the MLM loss ``1 - weight`` (PET: 0.9999, the default when
        unlabeled texts are given).
    callbacks : list of callables
        Each is called as ``callback(classifier, log)`` after every epoch.
    early_stopping_patience : int, optional
        With an ``eval_set``: stop once the dev accuracy has not improved for this many
        epochs (the best epoch is kept either way). ``None`` trains every epoch.

    ``fit(X, y, eval_set=(X_dev, y_dev))`` keeps the epoch with the best dev accuracy.
    """

    def __init__(
        self,
        model: Any = None,
        template: Any = "{text} It was [MASK].",
        verbalizer: Any = None,
        *,
        tokenizer: Any = None,
        train_mode: str = "none",
        columns: Mapping[str, str] | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        decoding: str = "parallel",
        calibration: bool | Sequence[str] = False,
        device: str = "auto",
        random_state: int = 0,
        progress: bool | None = None,
        epochs: int = 10,
        max_steps: int | None = None,
        train_batch_size: int = 8,
        gradient_accumulation_steps: int = 1,
        learning_rate: float | None = None,
        prompt_learning_rate: float | None = None,
        head_learning_rate: float | None = None,
        warmup_ratio: float = 0.06,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = 1.0,
        mixed_precision: str = "no",
        mlm_loss_weight: float | None = None,
        callbacks: Sequence[Any] | None = None,
        early_stopping_patience: int | None = None,
    ) -> None:
        self.model = model
        self.template = template
        self.verbalizer = verbalizer
        self.tokenizer = tokenizer
        self.train_mode = train_mode
        self.columns = columns
        self.max_length = max_length
        self.batch_size = batch_size
        self.decoding = decoding
        self.calibration = calibration
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.epochs = epochs
        self.max_steps = max_steps
        self.train_batch_size = train_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.learning_rate = learning_rate
        self.prompt_learning_rate = prompt_learning_rate
        self.head_learning_rate = head_learning_rate
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.mixed_precision = mixed_precision
        self.mlm_loss_weight = mlm_loss_weight
        self.callbacks = callbacks
        self.early_stopping_patience = early_stopping_patience

    # ------------------------------------------------------------------ sklearn plumbing
    def _validate(self) -> tuple[Template, Verbalizer]:
        if self.model is None:
            raise ValueError("model is required: a hub id, a local path or a loaded masked LM")
        if self.verbalizer is None:
            raise ValueError('verbalizer is required: label words per class, e.g. {"neg": ["bad"], "pos": ["good"]}')
        _choice(TrainMode, self.train_mode, "train_mode")
        _choice(Decoding, self.decoding, "decoding")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 4):
            raise ValueError(f"max_length must be an integer of at least 4, got {self.max_length!r}")
        for name in ("epochs", "train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of 'no', 'fp16', 'bf16'")
        patience = self.early_stopping_patience
        if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
            raise ValueError(f"early_stopping_patience must be a positive integer or None, got {patience!r}")
        for name in ("learning_rate", "prompt_learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        if self.mlm_loss_weight is not None and not 0.0 <= self.mlm_loss_weight <= 1.0:
            raise ValueError(f"mlm_loss_weight must lie in [0, 1], got {self.mlm_loss_weight!r}")
        return Template.coerce(self.template), Verbalizer.coerce(self.verbalizer)

    def _build(self, template: Template, verbalizer: Verbalizer, *, copy_model: bool) -> PromptModel:
        torch.manual_seed(self.random_state)  # before loading: weights a checkpoint lacks are initialised now
        missing: list[str] = []
        mlm, tokenizer = load_model(self.model, self.tokenizer, missing)
        self.initialised_parameters_ = [f"mlm.{name}" for name in missing]
        if copy_model and not isinstance(self.model, str):
            mlm = copy.deepcopy(mlm)  # never train the caller's model in place
        device = resolve_device(self.device)
        mlm.to(device)
        model = PromptModel(mlm, tokenizer, template, verbalizer, max_length=self.max_length, seed=self.random_state)
        return model.to(device).eval()  # training switches modes itself and switches back

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: Any = None,
        y: Any = None,
        *,
        eval_set: tuple[Any, Any] | None = None,
        unlabeled: Any = None,
        soft_labels: Any = None,
        temperature: float = 1.0,
    ) -> PromptClassifier:
        """Zero-shot (``train_mode="none"``): validate and fix ``classes_``; X and y may be omitted.

        Other modes train on ``(X, y)``: ``eval_set=(X_dev, y_dev)`` keeps the best epoch,
        ``unlabeled`` texts feed PET's auxiliary MLM loss. ``soft_labels`` ((n, C) class
        probabilities in the verbalizer's class order) replace ``y`` for distillation at
        ``temperature``. See :mod:`promptcls.training`.
        """
        template, verbalizer = self._validate()
        mode = TrainMode(self.train_mode)
        classes = list(verbalizer.classes)
        if y is not None:
            y = list(y)
            unknown = [label for label in dict.fromkeys(y) if label not in verbalizer.words]
            if unknown:
                raise ValueError(
                    f"label {unknown[0]!r} in y is not a verbalizer class; classes are {classes}: "
                    "add label words for it or map y to these classes"
                )
            if X is not None and len(y) != len(_len_check(X)):
                raise ValueError(f"X has {len(_len_check(X))} rows but y has {len(y)} labels")
        if mode != TrainMode.NONE and (X is None or (y is None and soft_labels is None)):
            raise ValueError(f"train_mode={mode.value!r} trains on labelled data: call fit(X, y)")
        if mode != TrainMode.NONE and self.early_stopping_patience is not None and eval_set is None:
            raise ValueError(f"early_stopping_patience={self.early_stopping_patience} watches the dev accuracy: "
                             "pass fit(X, y, eval_set=(X_dev, y_dev))")
        if self.head_learning_rate is not None and mode in (TrainMode.NONE, TrainMode.PROMPT):
            raise ValueError(f"head_learning_rate is set but train_mode={mode.value!r} does not train the MLM head: "
                             "use train_mode='head', 'head+prompt' or 'full', or leave head_learning_rate=None")
        self.model_ = self._build(template, verbalizer, copy_model=mode != TrainMode.NONE)
        self.template_ = template
        self.verbalizer_ = verbalizer
        self.classes_ = classes_array(verbalizer)
        self.base_fingerprint_ = fingerprint(self.model_)
        self.calibration_ = None
        self.trained_parameters_: list[str] = []
        if mode != TrainMode.NONE:
            from .training import train

            self.history_ = train(
                self, X, y, eval_set=eval_set, unlabeled=unlabeled, soft_labels=soft_labels, temperature=temperature
            )
        self.calibration_ = self._content_free_log_probs()
        return self

    # ------------------------------------------------------------------ predict
    def _content_free_log_probs(self) -> torch.Tensor | None:
        if self.calibration is False or self.calibration is None:
            return None
        texts = DEFAULT_CONTENT_FREE if self.calibration is True else tuple(self.calibration)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"calibration must be True, False or a list of content-free strings, got {self.calibration!r}")
        rows = [{f: t for f in self.template_.fields} for t in texts]
        scores = self._scores(rows, progress=False)
        return scores.softmax(-1).mean(0).log()  # (C,)

    def _scores(self, rows: list[dict[str, str]], progress: bool | None = None) -> torch.Tensor:
        """(n, C) class scores, batched by length, in the order of ``rows``."""
        model = self.model_
        encoded = model.encode(rows)
        out = torch.empty(len(rows), len(self.classes_))
        model.eval()
        show = self.progress if progress is None else progress
        batches = length_batches([len(e.input_ids) for e in encoded], self.batch_size, model.device)
        with torch.inference_mode():
            for idx in tqdm(batches, desc="scoring", unit="batch", disable=None if show is None else not show):
                out[idx] = model.class_scores([encoded[i] for i in idx], decoding=self.decoding).float().cpu()
        return out

    def decision_function(self, X: Any) -> np.ndarray:
        """(n, C) class scores (log-probability scale; calibrated when ``calibration`` is on)."""
        check_is_fitted(self, "model_")
        rows = to_rows(X, self.template_.fields, self.columns)
        if not rows:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        scores = self._scores(rows)
        if self.calibration_ is not None:
            scores = scores.log_softmax(-1) - self.calibration_
        return scores.numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, C) class probabilities: the softmax of the class scores."""
        scores = torch.from_numpy(self.decision_function(X))
        return scores.softmax(-1).numpy()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str) -> str:
        """Write the JSON config and only the trained tensors (safetensors) to ``directory``, atomically."""
        check_is_fitted(self, "model_")
        return str(save_classifier(self, directory))

    @classmethod
    def from_pretrained(cls, directory: str, model: Any = None, tokenizer: Any = None, **overrides: Any) -> PromptClassifier:
        """Load a saved classifier onto its base model (by its saved id/path, or ``model`` given here).

        ``overrides`` change settings such as ``device`` or ``batch_size``. A different base model,
        or a missing or corrupted file, raises a ``ValueError`` / ``FileNotFoundError`` saying so.
        """
        return load_classifier(directory, model=model, tokenizer=tokenizer, **overrides)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels, from ``classes_``."""
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(1)]


def classes_array(verbalizer: Verbalizer) -> np.ndarray:
    """The verbalizer's classes as an array (object dtype when label types are mixed)."""
    classes = list(verbalizer.classes)
    if len({type(c) for c in classes}) == 1:
        return np.asarray(classes)
    out = np.empty(len(classes), dtype=object)
    out[:] = classes
    return out


def _len_check(X: Any) -> Any:
    if isinstance(X, str):
        return [X]
    return X
