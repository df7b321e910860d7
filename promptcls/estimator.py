"""The sklearn face: ``PromptClassifier`` loads the model, validates, batches, and predicts."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .defaults import EPOCHS, TRAIN_BATCH_SIZE
from .encoding import length_batches, pad_ids
from .inputs import to_rows
from .loading import load_model
from .modeling import PromptModel, build_prompt_model, structural_copy
from .parts import build_parts, count_parameters, parse_train_mode
from .saving import fingerprint, load_classifier, save_classifier
from .template import Template
from .verbalizer import Verbalizer

logger = logging.getLogger(__name__)

__all__ = ["PromptClassifier", "TrainMode", "resolve_device", "load_model", "TrainingDiverged"]

DEFAULT_CONTENT_FREE = ("N/A", "")


class TrainMode(str, Enum):
    """Shorthands for ``train_mode``; any parts joined by ``+`` work too (:mod:`promptcls.parts`)."""

    NONE = "none"  # zero-shot: fit only validates and fixes classes_
    HEAD = "head"  # the MLM head (transform, layer norm, output bias)
    PROMPT = "prompt"  # soft-token embeddings (and the P-tuning encoder)
    HEAD_PROMPT = "head+prompt"
    FULL = "full"  # every parameter of the model, and the prompt
    PREFIX = "prefix"  # key/value prefixes at every layer (P-tuning v2)
    LORA = "lora"  # low-rank updates of the blocks' linear layers (peft)
    IA3 = "ia3"  # IA3 scaling vectors (peft)


class Decoding(str, Enum):
    PARALLEL = "parallel"
    ITERATIVE = "iterative"


def _choice(enum: type[Enum], value: Any, name: str) -> Enum:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in enum)
        raise ValueError(f"{name}={value!r} is not one of {choices}") from None


class TrainingDiverged(FloatingPointError, ValueError):
    """Training produced a loss or weights that are not finite (NaN or infinity)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` picks cuda (under ``accelerate launch``, the process's own GPU: ``cuda:LOCAL_RANK``), then mps,
    then cpu."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun: one GPU per process
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available: use device='cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for but MPS is not available: use device='cpu' or 'auto'")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r} is not supported: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def resolve_seed(random_state: Any) -> int:
    """An int seed from ``random_state``: an int, None (a fresh seed) or a numpy RandomState / Generator."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ValueError(f"random_state must be an integer, None or a numpy RandomState/Generator, got {random_state!r}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded within the block and restored after it: the caller's random state is kept."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def is_on(model: torch.nn.Module, device: torch.device) -> bool:
    """Are ``model``'s weights on ``device`` (any index of its type where ``device`` names none)?"""
    on = model.get_input_embeddings().weight.device
    return on.type == device.type and (device.index is None or on.index == device.index)


def _integer(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {need}{' or None' if optional else ''}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float = math.inf, *, optional: bool = False,
            low_open: bool = False, high_open: bool = True) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if low == 0 and not math.isfinite(high):
            need = "a positive finite number" if low_open else "a finite number >= 0"
        else:
            lo = f"{'(' if low_open else '['}{low:g}"
            hi = f"{high:g}{')' if high_open else ']'}"
            need = f"a number in {lo}, {hi}"
        raise ValueError(f"{name} must be {need}{' or None' if optional else ''}, got {value!r}")


class TextInputMixin:
    """sklearn tags for estimators whose X is text (strings, pairs, dicts, DataFrames), not a 2-D array."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


class PromptClassifier(TextInputMixin, ClassifierMixin, BaseEstimator):
    """Prompt-based classifier on a masked or causal LM (PET-style): template + verbalizer -> class scores.

    Zero-shot needs no labels::

        clf = PromptClassifier("roberta-base", "{text} It was [MASK].",
                               {"negative": ["terrible"], "positive": ["great"]}).fit()
        clf.predict(["A wonderful film."])

    Parameters
    ----------
    model : str, PreTrainedModel or (model, tokenizer)
        Hub id or local path of a masked or causal LM, a ``.gguf`` file, ``"smollm2"`` (the
        embedded SmolLM2-135M-Instruct), or a loaded ``AutoModelForMaskedLM`` /
        ``AutoModelForCausalLM``.
        A loaded model is never modified: training works on a copy.
    template : str, Template or dict
        The prompt, with ``{field}`` slots, one ``[MASK]`` and optional ``[SOFT]`` tokens.
    verbalizer : dict, list, Verbalizer
        Label words per class: ``{"negative": ["terrible"], "positive": ["great", "good"]}``.
    tokenizer : tokenizer, optional
        Required with a loaded model; loaded from ``model`` otherwise.
    train_mode : str
        What ``fit`` trains: ``"none"`` (zero-shot), or parts joined by ``+`` (:mod:`promptcls.parts`):
        ``"head"``, ``"verbalizer"`` (a soft verbalizer, WARP), ``"proto"`` (class prototypes, ProtoVerb),
        ``"prompt"`` (the template's soft tokens), ``"prefix"`` (key/value prefixes at every
        layer), ``"lora"``, ``"ia3"`` (adapters through ``peft``), ``"full"``; e.g. ``"head+prompt"``,
        ``"head+lora"``, ``"prompt+lora"``. ``trainable_parameters_`` gives the count and share trained.
    word_calibration : bool
        KPT's contextualized calibration (Hu et al. 2022): each label word's probability is divided by its
        mean probability at the slot over a support set of unlabeled texts - the ``X`` given to ``fit`` (its
        labels are not used), or ``unlabeled`` when ``fit`` gets no X - before the words are aggregated. For
        verbalizers of many words per class (:func:`promptcls.expand_label_words`).
    word_refinement : float, optional
        KPT's frequency refinement: drop the label words whose first token's mean probability over the
        support set is among the lowest ``word_refinement`` share of the vocabulary (KPT: 0.5).
        ``label_words_kept_`` lists the words left.
    proto_dim : int
        ``proto``: the width of the space the slot states are projected into (ProtoVerb's 64).
    proto_ensemble : bool
        ``proto``: average the z-scored prototype and label-word scores (OpenPrompt's ``multi_verb="multi"``;
        three or more classes); False: the prototypes alone.
    prefix_length : int
        ``prefix``: key/value pairs per layer.
    prefix_hidden_size : int, optional
        ``prefix``: train through Li and Liang's MLP of this width, folded away after training.
    lora_rank, lora_alpha, lora_dropout : int, float, float
        ``lora``: the rank of the update, its scale ``alpha / rank``, dropout on its input.
    lora_target_modules : list of str or str, optional
        ``lora`` / ``ia3``: the layers to adapt, in ``peft``'s forms; None: every linear layer in the
        model's blocks.
    columns : dict, optional
        Template field -> column name, for DataFrames, dicts and datasets.
    max_length : int, optional
        Longest prompt in tokens (default: the model's). Only text fields are truncated.
    truncation : {"head", "tail", "chunks"}
        A text too long for ``max_length``: keep its start (``"head"``), its end (``"tail"``), or score it in
        windows that fit (``"chunks"``: the longest field cut into windows overlapping by half a window, their
        class log-probabilities averaged). Training reads each text as ``"head"`` does with ``"chunks"``.
    demonstrations : {None, "random", "similar"}
        LM-BFF's demonstrations (:mod:`promptcls.demonstrations`): one labelled example per class, from the
        data ``fit`` was given, rendered at the template's ``[DEMOS]`` slot (without one: after the prompt, or
        before it for a causal LM: in-context learning), picked at random or among the most similar.
    demonstration_sets : int
        Prediction averages the class log-probabilities over this many draws of demonstrations.
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
        For the model / head and for the soft prompt. Defaults per mode (``promptcls.defaults``,
        chosen on dev by the few-shot benchmark): head 1e-2, full 1e-4 (prompt 3e-3),
        prompt 3e-2, head+prompt 1e-2 (prompt 3e-3).
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
    class_weight : "balanced", dict or None
        Weights of the classes in the loss, ``(1 / N) * sum_i w[y_i] * CE_i`` over a batch of N:
        ``"balanced"`` gives ``w[c] = n / (C * n_c)`` from the training labels (sklearn's rule), a dict
        gives them by class (missing classes weigh 1).
    sampling : {"shuffle", "balanced"}
        How each epoch draws its examples: a shuffle of all of them, or (``"balanced"``) as many draws
        with replacement, each class equally likely.

    Causal LMs (:mod:`promptcls.families.causal`):

    family : {"auto", "masked", "causal"}
        The model family; ``"auto"`` reads it from the model or its config.
    gguf_file : str, optional
        A GGUF file inside the folder ``model`` names (or give the ``.gguf`` path as ``model``).
    score_suffix : bool
        Causal LMs: also score the text after the answer slot (the filled prompt's likelihood)
        instead of the label word alone.
    chat_template : bool
        Causal LMs: wrap the prompt in the tokenizer's chat template, the answer opening the
        assistant's turn (instruction-tuned models).

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
        epochs: int = EPOCHS,
        max_steps: int | None = None,
        train_batch_size: int = TRAIN_BATCH_SIZE,
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
        class_weight: str | Mapping[Any, float] | None = None,
        sampling: str = "shuffle",
        family: str = "auto",
        gguf_file: str | None = None,
        score_suffix: bool = False,
        chat_template: bool = False,
        word_calibration: bool = False,
        word_refinement: float | None = None,
        proto_dim: int = 64,
        proto_ensemble: bool = False,
        prefix_length: int = 16,
        prefix_hidden_size: int | None = None,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_target_modules: Sequence[str] | str | None = None,
        truncation: str = "head",
        demonstrations: str | None = None,
        demonstration_sets: int = 1,
    ) -> None:
        self.truncation = truncation
        self.demonstrations = demonstrations
        self.demonstration_sets = demonstration_sets
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
        self.class_weight = class_weight
        self.sampling = sampling
        self.family = family
        self.gguf_file = gguf_file
        self.score_suffix = score_suffix
        self.chat_template = chat_template
        self.word_calibration = word_calibration
        self.word_refinement = word_refinement
        self.proto_dim = proto_dim
        self.proto_ensemble = proto_ensemble
        self.prefix_length = prefix_length
        self.prefix_hidden_size = prefix_hidden_size
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules

    # ------------------------------------------------------------------ sklearn plumbing
    def _validate(self) -> tuple[Template, Verbalizer]:
        if self.model is None:
            raise ValueError("model is required: a hub id, a local path or a loaded masked LM")
        if self.verbalizer is None:
            raise ValueError('verbalizer is required: label words per class, e.g. {"neg": ["bad"], "pos": ["good"]}')
        parse_train_mode(self.train_mode)
        if self.demonstrations not in (None, "random", "similar"):
            raise ValueError(f"demonstrations={self.demonstrations!r} is not one of None, 'random', 'similar'")
        _integer("demonstration_sets", self.demonstration_sets, 1)
        if self.truncation not in ("head", "tail", "chunks"):
            raise ValueError(f"truncation={self.truncation!r} is not one of 'head', 'tail', 'chunks'")
        if self.sampling not in ("shuffle", "balanced"):
            raise ValueError(f"sampling={self.sampling!r} is not one of 'shuffle', 'balanced'")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, Mapping)):
            raise ValueError(f"class_weight must be 'balanced', a dict of class -> weight or None, got {self.class_weight!r}")
        if isinstance(self.class_weight, Mapping):
            for c, w in self.class_weight.items():
                _number(f"class_weight[{c!r}]", w, 0.0)
        _integer("prefix_length", self.prefix_length, 1)
        _integer("proto_dim", self.proto_dim, 1)
        if not isinstance(self.word_calibration, (bool, np.bool_)):
            raise TypeError(f"word_calibration must be True or False, got {self.word_calibration!r}")
        if self.word_refinement is not None:
            _number("word_refinement", self.word_refinement, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(self.proto_ensemble, (bool, np.bool_)):
            raise TypeError(f"proto_ensemble must be True or False, got {self.proto_ensemble!r}")
        _integer("prefix_hidden_size", self.prefix_hidden_size, 1, optional=True)
        _integer("lora_rank", self.lora_rank, 1)
        _number("lora_alpha", self.lora_alpha, 0.0, low_open=True)
        _number("lora_dropout", self.lora_dropout, 0.0, 1.0)
        targets = self.lora_target_modules
        if targets is not None and not isinstance(targets, str) and not (
                isinstance(targets, Sequence) and targets and all(isinstance(t, str) for t in targets)):
            raise TypeError(f"lora_target_modules must be module names (a list of str), a regex or None, got {targets!r}")
        _choice(Decoding, self.decoding, "decoding")
        _integer("batch_size", self.batch_size, 1)
        _integer("max_length", self.max_length, 4, optional=True)
        for name in ("epochs", "train_batch_size", "gradient_accumulation_steps"):
            _integer(name, getattr(self, name), 1)
        _integer("max_steps", self.max_steps, 1, optional=True)
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of 'no', 'fp16', 'bf16'")
        _integer("early_stopping_patience", self.early_stopping_patience, 1, optional=True)
        if self.family not in ("auto", "masked", "causal"):
            raise ValueError(f"family={self.family!r} is not one of 'auto', 'masked', 'causal'")
        if self.gguf_file is not None and not isinstance(self.gguf_file, str):
            raise TypeError(f"gguf_file must be a file name, got {self.gguf_file!r}")
        for name in ("score_suffix", "chat_template"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("learning_rate", "prompt_learning_rate", "head_learning_rate"):
            _number(name, getattr(self, name), 0.0, optional=True, low_open=True)
        _number("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _number("weight_decay", self.weight_decay, 0.0)
        _number("max_grad_norm", self.max_grad_norm, 0.0, optional=True, low_open=True)
        _number("mlm_loss_weight", self.mlm_loss_weight, 0.0, 1.0, optional=True, high_open=False)
        if self.columns is not None and not isinstance(self.columns, Mapping):
            raise TypeError(f"columns must be a dict of template field -> column name, got {self.columns!r}")
        if self.callbacks is not None and not all(callable(c) for c in self.callbacks):
            raise TypeError(f"callbacks must be callables callback(classifier, log), got {self.callbacks!r}")
        if not isinstance(self.random_state, (np.random.RandomState, np.random.Generator)):
            resolve_seed(self.random_state)  # raises on a bad value
        return Template.coerce(self.template), Verbalizer.coerce(self.verbalizer)

    @property
    def train_mode_(self) -> str:
        """``train_mode`` as its canonical string: its parts in a fixed order (``"lora+head"`` -> ``"head+lora"``)."""
        return "+".join(parse_train_mode(self.train_mode)) or "none"

    def _part_options(self) -> dict[str, Any]:
        return {"prefix_length": self.prefix_length, "prefix_hidden_size": self.prefix_hidden_size,
                "proto_dim": self.proto_dim, "proto_ensemble": bool(self.proto_ensemble),
                "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "lora_target_modules": self.lora_target_modules, "seed": self.random_state_,
                "train_mode": self.train_mode_}

    def _build(self, template: Template, verbalizer: Verbalizer, *, copy_model: bool,
               covered: frozenset[str] = frozenset()) -> PromptModel:
        """Load (or take) the model and bind the template and verbalizer to it.

        A loaded model passed in is never changed: training works on a deep copy, zero-shot scoring on a
        structural copy that shares its weights (its own modes, so ``eval()`` stays ours). ``covered``:
        parameters a save will restore, so their random start is not worth a warning.
        """
        device = resolve_device(self.device)
        self.random_state_ = resolve_seed(self.random_state)
        missing: list[str] = []
        with seeded(self.random_state_, device):  # weights a checkpoint lacks are initialised while loading
            mlm, tokenizer = load_model(self.model, self.tokenizer, missing, family=self.family, gguf_file=self.gguf_file)
        passed_in = not isinstance(self.model, (str, os.PathLike))
        if passed_in:
            if copy_model or not is_on(mlm, device):
                mlm = copy.deepcopy(mlm)  # never train (or move) the caller's model in place
            else:
                mlm = structural_copy(mlm)  # shares the weights; eval() below switches only our copy
        mlm.to(device)
        if self.demonstrations and not template.has_demonstrations:  # LM-BFF: after the prompt; a causal LM: before
            from .families import detect_family

            causal = (detect_family(mlm) if self.family == "auto" else self.family) == "causal"
            source = f"[DEMOS]\n{template.source}" if causal else f"{template.source} [DEMOS]"
            template = Template(source, prompt_encoder=template.prompt_encoder, soft_init=template.soft_init)
        with seeded(self.random_state_, device):  # a P-tuning encoder's layers start from random_state too
            model = build_prompt_model(mlm, tokenizer, template, verbalizer, max_length=self.max_length,
                                       seed=self.random_state_, family=self.family, score_suffix=self.score_suffix,
                                       chat_template=self.chat_template,
                                       keep="tail" if self.truncation == "tail" else "head")
        self.initialised_parameters_ = [f"{model.lm_prefix}.{name}" for name in missing]
        uncovered = [n for n in self.initialised_parameters_ if n not in covered]
        if uncovered:
            logger.warning(
                "%s ships no weights for %d parameters (%s): they start at random (seeded by random_state); "
                "scores from them mean nothing until they are trained (train_mode='head' or 'full')",
                _model_name(self.model), len(uncovered), ", ".join(n.split(".", 1)[1] for n in uncovered[:3])
                + (", ..." if len(uncovered) > 3 else ""),
            )
        if model.family == "causal" and Decoding(self.decoding) == Decoding.ITERATIVE:
            raise ValueError("decoding='iterative' is PET's decoding for masked LMs; a causal LM scores multi-token "
                             "words exactly, left to right: leave decoding='parallel'")
        self.parts_ = build_parts(parse_train_mode(self.train_mode), self._part_options())
        with seeded(self.random_state_, device):
            for part in self.parts_:
                part.attach(model)
        return model.to(device).eval()  # training switches modes itself and switches back

    def _fingerprint(self) -> dict[str, Any]:
        """The base model's fingerprint: without the tensors the checkpoint lacked or a part added."""
        added = [n for part in self.parts_ if part.adds_parameters for n in part.parameters(self.model_)]
        return fingerprint(self.model_, exclude=[*self.initialised_parameters_, *added])

    def _count_trainable(self) -> None:
        trained = {n: p for part in self.parts_ for n, p in part.parameters(self.model_).items()}
        self.trainable_parameters_ = count_parameters(self.model_, trained)

    def merge_adapters(self) -> PromptClassifier:
        """Fold trained LoRA updates into the model's weights for inference (the same scores, no extra cost).

        Only this classifier's copy of the model changes; a save still holds the adapter tensors alone.
        """
        check_is_fitted(self, "model_")
        if not any(p.name == "lora" for p in self.parts_):
            raise ValueError(f"train_mode={self.train_mode_!r} has no LoRA adapters to merge")
        from .parts.lora import merge_adapters

        merge_adapters(self.model_.lm)
        return self

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
        mode = self.train_mode_
        classes = list(verbalizer.classes)
        X = materialize(X, "X")
        unlabeled = materialize(unlabeled, "unlabeled")
        if y is not None:
            y = [_plain(label) for label in materialize(y, "y")]
            unknown = [label for label in dict.fromkeys(y) if label not in verbalizer.words]
            if unknown:
                raise ValueError(
                    f"label {unknown[0]!r} in y is not a verbalizer class; classes are {classes}: "
                    "add label words for it or map y to these classes"
                )
            if X is not None and len(y) != n_rows(X):
                raise ValueError(f"X has {n_rows(X)} rows but y has {len(y)} labels")
        if mode != TrainMode.NONE:
            if X is None or (y is None and soft_labels is None):
                raise ValueError(f"train_mode={mode!r} trains on labelled data: call fit(X, y)")
            if n_rows(X) == 0:
                raise ValueError(f"train_mode={mode!r} needs at least one training example; X is empty")
        if unlabeled is not None and n_rows(unlabeled) == 0:
            raise ValueError("unlabeled is empty: pass unlabeled texts for PET's auxiliary loss, or leave it None")
        if eval_set is not None:
            if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
                raise ValueError("eval_set must be a pair (X_dev, y_dev)")
            eval_set = (materialize(eval_set[0], "eval_set X"), [_plain(v) for v in materialize(eval_set[1], "eval_set y")])
            if n_rows(eval_set[0]) == 0:
                raise ValueError("eval_set is empty: give dev examples, or leave eval_set None")
        _number("temperature", temperature, 0.0, low_open=True)
        if soft_labels is not None:
            soft_labels = check_soft_labels(soft_labels, len(classes), n_rows(X) if X is not None else None)
        if mode != TrainMode.NONE and self.early_stopping_patience is not None and eval_set is None:
            raise ValueError(f"early_stopping_patience={self.early_stopping_patience} watches the dev accuracy: "
                             "pass fit(X, y, eval_set=(X_dev, y_dev))")
        if self.head_learning_rate is not None and not {"head", "full"} & set(mode.split("+")):
            raise ValueError(f"head_learning_rate is set but train_mode={mode!r} does not train the MLM head: "
                             "add 'head' to train_mode (or use 'full'), or leave head_learning_rate=None")
        if self.demonstrations and (X is None or y is None):
            raise ValueError(f"demonstrations={self.demonstrations!r} draws from labelled examples: call fit(X, y) "
                             "(with train_mode='none' for in-context learning)")
        word_priors = self.word_calibration or self.word_refinement is not None
        if word_priors:
            if X is None and unlabeled is None:
                raise ValueError("word_calibration / word_refinement estimate each label word's prior on unlabeled "
                                 "texts: call fit(X) (labels are not needed) or fit(unlabeled=texts)")
            if verbalizer.aggregation == "mean_logit":
                raise ValueError("word_calibration / word_refinement work on word probabilities; aggregation="
                                 "'mean_logit' averages raw logits: use aggregation='mean'")
            if {"verbalizer", "proto"} & set(mode.split("+")):
                raise ValueError(f"word_calibration / word_refinement weigh the label words; train_mode={mode!r} "
                                 "scores with learned vectors instead: use one or the other")
        self.model_ = self._build(template, verbalizer, copy_model=mode != TrainMode.NONE)
        template = self.model_.template  # with the [DEMOS] slot where demonstrations are asked for
        self.template_ = template
        self.verbalizer_ = verbalizer
        self.demonstration_pool_ = None
        if self.demonstrations:
            self._set_pool(to_rows(X, template.fields, self.columns), y)
        self.verbalizer_ = verbalizer
        self.classes_ = classes_array(verbalizer)
        self.base_fingerprint_ = self._fingerprint()
        self._count_trainable()
        self.calibration_ = None
        self.trained_parameters_: list[str] = []
        self.history_: list[dict[str, float]] = []
        self.best_epoch_ = self.best_dev_accuracy_ = None
        try:
            if mode != TrainMode.NONE:
                from .training import train

                with seeded(self.random_state_, self.model_.device):
                    self.history_ = train(
                        self, X, y, eval_set=eval_set, unlabeled=unlabeled, soft_labels=soft_labels,
                        temperature=temperature,
                    )
            self.word_priors_ = self.label_words_kept_ = None
            if word_priors:
                support = X if X is not None else unlabeled
                self._set_word_priors(to_rows(support, self.template_.fields, self.columns))
            self.calibration_ = self._content_free_log_probs()
        except BaseException:
            for name in ("model_", "template_", "verbalizer_", "classes_", "calibration_", "base_fingerprint_", "parts_",
                         "trainable_parameters_", "demonstration_pool_", "word_priors_", "label_words_kept_"):
                self.__dict__.pop(name, None)  # a failed fit leaves no half-fitted classifier behind
            raise
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

    @torch.no_grad()
    def _set_word_priors(self, rows: list[dict[str, str]]) -> None:
        """KPT's priors on the support ``rows``: each word's mean probability at the slot (``word_priors_``,
        subtracted as log-priors with ``word_calibration``), and with ``word_refinement`` the words kept."""
        model = self.model_
        words = model.label_words
        words.offsets = words.keep = None
        filled = self._demonstrated(rows)[0]
        encoded = model.encode(filled)
        word_sum = torch.zeros(len(words.token_ids), dtype=torch.float64)
        vocab_sum = None
        model.eval()
        for idx in length_batches([len(e.input_ids) for e in encoded], self.batch_size, model.device,
                                  model.packs):
            chunk = [encoded[i] for i in idx]
            word_sum += model.word_scores(chunk).double().exp().sum(0).cpu()
            if self.word_refinement is not None:
                probs = model.slot_log_probs(chunk).double().exp().sum(0).cpu()
                vocab_sum = probs if vocab_sum is None else vocab_sum + probs
        prior = (word_sum / len(encoded)).clamp_min(1e-300).log().float()  # (W,) log mean probability
        self.word_priors_ = {w: float(p) for w, p in zip(words.words_in_order(), prior)}
        if self.word_refinement is not None:
            dropped = set(torch.argsort(vocab_sum)[: int(self.word_refinement * len(vocab_sum))].tolist())
            words.keep = torch.tensor([ids[0] not in dropped for ids in words.token_ids])
            kept = words.kept_words()
            empty = [c for c, ws in kept.items() if not ws]
            if empty:
                words.keep = None
                raise ValueError(f"word_refinement={self.word_refinement} drops every label word of class {empty[0]!r} "
                                 "(all are rare at the slot on these texts): lower word_refinement or give the class "
                                 "more common words")
            self.label_words_kept_ = kept
        if self.word_calibration:
            words.offsets = prior

    def _set_pool(self, rows: list[dict[str, str]], labels: Sequence[Any]) -> None:
        from .demonstrations import DemonstrationPool

        answers = {c: self.verbalizer_.words[c][0] for c in self.verbalizer_.classes}
        separator = "\n" if self.model_.family == "causal" else " "
        self.demonstration_pool_ = DemonstrationPool(self.template_, rows, [_plain(v) for v in labels], answers,
                                                     self.demonstrations, self.random_state_, separator,
                                                     embed=self._sentence_embeddings)

    @torch.no_grad()
    def _sentence_embeddings(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden states of the classifier's own encoder (for ``demonstrations="similar"``)."""
        model = self.model_
        out = []
        for start in range(0, len(texts), self.batch_size):
            with model.encoding._lock:
                ids = model.tokenizer(texts[start:start + self.batch_size], truncation=True,
                                      max_length=min(512, model.encoding.max_length))["input_ids"]
            # padded here: many causal tokenizers have no pad token (the mask hides whichever id fills the rows)
            input_ids, attention_mask = pad_ids(ids, model.tokenizer.pad_token_id or 0)
            batch = {"input_ids": input_ids.to(model.device), "attention_mask": attention_mask.to(model.device)}
            hidden = model.lm.base_model(**batch)[0].float()  # (B, L, H)
            mask = batch["attention_mask"][..., None].float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
        return np.concatenate(out)

    def _demonstrated(self, rows: list[dict[str, str]], sets: int = 1) -> tuple[list[dict[str, str]], list[int]]:
        """Rows with their demonstrations (``sets`` draws each), and the row each comes from."""
        pool = getattr(self, "demonstration_pool_", None)
        if pool is None:
            return rows, list(range(len(rows)))
        return pool.fill(rows, sets)

    def _scores(self, rows: list[dict[str, str]], progress: bool | None = None) -> torch.Tensor:
        """(n, C) class scores, batched by length, in the order of ``rows``; the mean class log-probabilities of
        several draws of demonstrations (``demonstration_sets``) or of a long text's windows (``"chunks"``)."""
        sets = self.demonstration_sets if getattr(self, "demonstration_pool_", None) is not None else 1
        filled, owner = self._demonstrated(rows, sets)
        if len(filled) > len(rows):
            return _pooled(self._windowed_scores(filled, progress), owner, len(rows))
        return self._windowed_scores(filled, progress)

    def _windowed_scores(self, rows: list[dict[str, str]], progress: bool | None = None) -> torch.Tensor:
        if getattr(self, "truncation", "head") == "chunks":
            from .chunking import chunk_rows

            windows, owner = chunk_rows(self.model_.encoding, rows)
            if len(windows) > len(rows):
                return _pooled(self._raw_scores(windows, progress), owner, len(rows))
        return self._raw_scores(rows, progress)

    def _raw_scores(self, rows: list[dict[str, str]], progress: bool | None = None) -> torch.Tensor:
        model = self.model_
        encoded = model.encode(rows)
        out = torch.empty(len(rows), len(self.classes_))
        model.eval()
        show = self.progress if progress is None else progress
        batches = length_batches([len(e.input_ids) for e in encoded], self.batch_size, model.device,
                                  model.packs)
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
        return self._finish(self._scores(rows))

    def _finish(self, scores: torch.Tensor) -> np.ndarray:
        """(n, C) raw class scores -> the decision function: checked finite, calibrated when asked."""
        finite = torch.isfinite(scores).all(1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise FloatingPointError(
                f"the class scores of row {i} are not finite ({scores[i].tolist()}): the model's weights hold NaN or "
                "infinite values; retrain with a lower learning rate or reload the model"
            )
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
        return load_classifier(directory, model=model, tokenizer=tokenizer, cls=cls, **overrides)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels, from ``classes_``."""
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(1)]


def _pooled(raw: torch.Tensor, owner: Sequence[int], n: int) -> torch.Tensor:
    """(N, C) scores of N rows made from n (``owner``: nondecreasing, each row's made rows together) -> (n, C): the
    mean class log-probabilities of each row's own; a row made into one keeps its scores, whatever else is in
    the batch."""
    owner = torch.tensor(owner)
    counts = torch.bincount(owner, minlength=n)
    pooled = torch.zeros(n, raw.shape[1], dtype=raw.dtype).index_add(0, owner, raw.log_softmax(-1))
    pooled /= counts[:, None].to(raw.dtype)
    first = torch.cumsum(counts, 0) - counts  # each row's made rows are contiguous, in order
    return torch.where((counts == 1)[:, None], raw[first.clamp(max=len(owner) - 1)], pooled)


def _model_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(model, tuple):
        model = model[0]
    return getattr(model, "name_or_path", "") or type(model).__name__


def classes_array(verbalizer: Verbalizer) -> np.ndarray:
    """The verbalizer's classes as an array (object dtype when label types are mixed)."""
    classes = list(verbalizer.classes)
    if len({type(c) for c in classes}) == 1:
        return np.asarray(classes)
    out = np.empty(len(classes), dtype=object)
    out[:] = classes
    return out


def _plain(value: Any) -> Any:
    """numpy scalars as Python scalars (labels and class keys compare and serialise as plain values)."""
    return value.item() if isinstance(value, np.generic) else value


def materialize(X: Any, name: str) -> Any:
    """``X`` as something with a length: generators and other one-pass iterables become lists."""
    if X is None or isinstance(X, (str, Sequence, Mapping)) or hasattr(X, "__len__"):
        return X
    try:
        return list(X)
    except TypeError:
        raise TypeError(f"{name} must be texts (a list, a DataFrame, a dataset ...), got {type(X).__name__}: {X!r}") from None


def n_rows(X: Any) -> int:
    """The number of rows ``to_rows`` will make of ``X``."""
    if isinstance(X, str):
        return 1
    if isinstance(X, Mapping):
        values = list(X.values())
        if values and all(isinstance(v, str) for v in values):
            return 1  # one row as a dict
        return len(values[0]) if values else 0
    return len(X)


def check_soft_labels(soft_labels: Any, n_classes: int, n: int | None) -> np.ndarray:
    """(n, C) class distributions: finite, non-negative, each row with some mass; rows normalised to 1."""
    try:
        P = np.asarray(soft_labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"soft_labels must be an (n, {n_classes}) array of class probabilities") from None
    if P.ndim != 2 or P.shape[1] != n_classes:
        raise ValueError(f"soft_labels must be an (n, {n_classes}) array of class probabilities, got shape {P.shape}")
    if n is not None and P.shape[0] != n:
        raise ValueError(f"X has {n} rows but soft_labels has {P.shape[0]}")
    bad = ~np.isfinite(P).all(1) | (P < 0).any(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"soft_labels row {i} is not a probability distribution (NaN, infinite or negative): {P[i]}")
    empty = P.sum(1) <= 0
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ValueError(f"soft_labels row {i} sums to 0: each row needs some probability mass")
    return P / P.sum(1, keepdims=True)
