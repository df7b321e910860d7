"""Few-shot training: one loop over the parameters of the parts ``train_mode`` names, with callbacks.

What is trained comes from :mod:`promptcls.parts` (``head``, ``prompt``, ``prefix``, ``lora``, ``ia3``,
``full`` and their combinations); this loop only sees named parameters and their learning rates.
A head trained alone on a frozen encoder (``head``) has a fixed input, so the mask rows are
computed once and later epochs never run the encoder.

Loss: cross-entropy over the class scores (multi-token words scored in parallel). Optionally
PET's auxiliary MLM loss on unlabeled texts: ``alpha * ce + (1 - alpha) * mlm``.

On CPU each batch runs as micro-batches of prompts of similar length (``encoding.length_groups``),
each padded only to its own longest prompt, with their losses weighted by their share of the batch:
the gradient is the batch's, and random few-shot batches stop paying for padding (1.4x to 2.3x the
real tokens on the benchmark tasks; ``benchmarks/results/micro_batch_speed.md``). Dropout masks
differ from a run of the whole padded batch, as they would with any other batch shape.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .defaults import LEARNING_RATES
from .encoding import Encoded, length_batches, micro_batches
from .inputs import to_rows
from .modeling import PromptModel
from .parts import Part

if TYPE_CHECKING:
    from .estimator import PromptClassifier

logger = logging.getLogger(__name__)

__all__ = ["train", "trainable_parameters", "DEFAULT_LEARNING_RATES"]

# (model or head learning rate, prompt learning rate) per mode: few-shot defaults (promptcls.defaults)
DEFAULT_LEARNING_RATES = LEARNING_RATES


def head_parameters(model: PromptModel) -> dict[str, torch.nn.Parameter]:
    """The parameters ``train_mode="head"`` trains: the family's own head."""
    return model.head_parameters()


def _is_prompt_side(name: str) -> bool:
    return name.startswith(("soft_prompt.", "kv_prefix."))


def trainable_parameters(model: PromptModel, parts: Sequence[Part]) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """(model-side, prompt-side) parameters that ``parts`` train, by name in ``model``.

    Prompt side: the soft prompt and the key/value prefixes (``prompt_learning_rate``); model side:
    everything else (``learning_rate``).
    """
    if not parts:
        raise ValueError("train_mode='none' does not train")
    trained = {n: p for part in parts for n, p in part.parameters(model).items()}
    return ({n: p for n, p in trained.items() if not _is_prompt_side(n)},
            {n: p for n, p in trained.items() if _is_prompt_side(n)})


def learning_rates(mode: str, parts: Sequence[Part], model: PromptModel, lr: float | None, prompt_lr: float | None,
                   head_lr: float | None) -> dict[str, float]:
    """The learning rate of every trained parameter, by name.

    The shorthands of earlier versions keep their tuned pairs (``DEFAULT_LEARNING_RATES``); other
    combinations start each part at its own default. ``learning_rate`` sets every model-side part,
    ``prompt_learning_rate`` every prompt-side part, ``head_learning_rate`` the head alone.
    """
    table = DEFAULT_LEARNING_RATES.get(mode)
    rates: dict[str, float] = {}
    beside_head = any(p.side == "model" and p.name != "head" for p in parts)  # e.g. head+lora
    for part in parts:
        for name in part.parameters(model):
            if _is_prompt_side(name):
                default = table[1] if table and table[1] is not None else (
                    part.default_learning_rate if part.side == "prompt" else 3e-3)  # the prompt inside 'full'
                rates[name] = prompt_lr if prompt_lr is not None else default
            else:
                default = table[0] if table and table[0] is not None else part.default_learning_rate
                rates[name] = lr if lr is not None else default
                if part.name == "head" and beside_head and lr is None:
                    rates[name] = part.default_learning_rate  # a head beside LoRA: the head's own rate
    if head_lr is not None:
        for name in head_parameters(model) if any(p.name in ("head", "full") for p in parts) else ():
            if name in rates:
                rates[name] = head_lr
    return rates


def _distributed() -> tuple[int, int]:
    """(rank, world size). Under ``accelerate launch`` or ``torchrun`` (WORLD_SIZE > 1) joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            # NCCL runs its collectives on the current device: each process must first select its own GPU,
            # or every rank's all-reduce lands on cuda:0 (the same GPU as resolve_device's 'auto' picks)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="gloo")
        atexit.register(_leave_process_group)
    return dist.get_rank(), dist.get_world_size()


def _leave_process_group() -> None:
    """At a clean exit, leave the process group promptcls joined. Left to the interpreter's teardown, gloo's worker
    threads can outlive it and abort the process ('terminate called without an active exception', exit -6).
    After an uncaught exception the group is left alone: NCCL's destroy waits for the other ranks, which may hang."""
    import sys

    import torch.distributed as dist

    if dist.is_initialized() and getattr(sys, "last_value", None) is None:
        dist.destroy_process_group()


def _all_reduce_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of every process (each loss is already scaled by its share of the batch)."""
    import torch.distributed as dist

    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def _diverged(epoch: int, step: int, what: str, clf: PromptClassifier) -> str:
    return (
        f"training diverged at epoch {epoch + 1}, optimiser step {step}: {what}; lower learning_rate "
        f"(now {clf.learning_rate!r}, None is the mode's default) or prompt_learning_rate, or set max_grad_norm"
    )


def _label_indices(y: Sequence[Any], classes: Sequence[Any]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[label] for label in y], dtype=torch.long)


def _optimizer(model_params, prompt_params, rates: dict[str, float], weight_decay: float):
    """AdamW groups, one per learning rate: model parameters with weight decay except on biases and norms,
    the prompt side (soft prompt, prefixes) without."""
    groups = []
    for rate in dict.fromkeys(rates[n] for n in model_params):
        decay = [p for n, p in model_params.items() if rates[n] == rate and p.ndim > 1]
        no_decay = [p for n, p in model_params.items() if rates[n] == rate and p.ndim <= 1]  # biases and norms
        if decay:
            groups.append({"params": decay, "lr": rate, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": rate, "weight_decay": 0.0})
    for rate in dict.fromkeys(rates[n] for n in prompt_params):
        groups.append({"params": [p for n, p in prompt_params.items() if rates[n] == rate], "lr": rate,
                       "weight_decay": 0.0})
    try:
        # the same update as the default (foreach) AdamW, in one kernel per step instead of a dozen
        # elementwise passes over every parameter (CPU timings: benchmarks/optimizer_speed.md)
        return torch.optim.AdamW(groups, fused=True)
    except RuntimeError:  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups)


def _linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _HeadCache:
    """Mask rows of a frozen encoder, computed once: {n: (N, n, H)} per label-word length."""

    def __init__(self, model: PromptModel, encoded: Sequence[Encoded], batch_size: int) -> None:
        # batched as scoring is (by length, micro-batched on CPU); rows are put back in input order
        batches = length_batches([len(e.input_ids) for e in encoded], batch_size, model.device, model.packs)
        parts: dict[int, list[torch.Tensor]] = {n: [] for n in model.slot_widths()}
        with torch.no_grad():
            for idx in batches:
                for n in parts:
                    parts[n].append(model.mask_hidden(model.batch([encoded[i] for i in idx], n)))
        placed = torch.tensor([i for idx in batches for i in idx], dtype=torch.long)
        where = torch.empty_like(placed)
        where[placed] = torch.arange(len(placed))
        self.rows = {n: torch.cat(p)[where.to(p[0].device)] for n, p in parts.items()}

    def class_scores(self, model: PromptModel, idx: torch.Tensor) -> torch.Tensor:
        return model.relative_class_scores(rows={n: rows[idx] for n, rows in self.rows.items()})

    def slot_states(self, model: PromptModel, idx: torch.Tensor) -> torch.Tensor:
        return model.slot_states(rows={n: rows[idx] for n, rows in self.rows.items()})


class _StateCache:
    """Slot states of a frozen causal LM, computed once (prototypes trained alone): (N, H)."""

    def __init__(self, model: PromptModel, encoded: Sequence[Encoded], batch_size: int) -> None:
        batches = length_batches([len(e.input_ids) for e in encoded], batch_size, model.device, model.packs)
        states = torch.empty(len(encoded), model.hidden_size(), device=model.device)
        with torch.no_grad():
            for idx in batches:
                states[torch.tensor(idx, device=model.device)] = model.slot_states([encoded[i] for i in idx]).float()
        self.states = states

    def slot_states(self, model: PromptModel, idx: torch.Tensor) -> torch.Tensor:
        return self.states[idx]


def _class_weights(clf: PromptClassifier, targets: torch.Tensor) -> torch.Tensor | None:
    """(C,) loss weights per class from ``clf.class_weight``, or None."""
    spec = clf.class_weight
    if spec is None:
        return None
    if targets.ndim != 1:
        raise ValueError("class_weight weighs the labels y; with soft_labels leave it None")
    classes = clf.classes_.tolist()
    if spec == "balanced":
        counts = torch.bincount(targets.cpu(), minlength=len(classes)).float()
        return torch.where(counts > 0, len(targets) / (len(classes) * counts.clamp(min=1)), torch.zeros_like(counts))
    unknown = [c for c in spec if c not in classes]
    if unknown:
        raise ValueError(f"class_weight names class {unknown[0]!r}, which the verbalizer does not have; classes are "
                         f"{classes}")
    return torch.tensor([float(spec.get(c, 1.0)) for c in classes])


def _loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float,
          class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on class indices (``mean(w[y] * CE)`` with class weights), or PET's distillation loss."""
    if targets.ndim == 1:
        if class_weights is None:
            return torch.nn.functional.cross_entropy(scores, targets)
        ce = torch.nn.functional.cross_entropy(scores, targets, reduction="none")
        return (class_weights.to(ce.device)[targets] * ce).mean()
    log_q = (scores / temperature).log_softmax(-1)
    return torch.nn.functional.kl_div(log_q, targets, reduction="batchmean") * temperature**2


def train(
    clf: PromptClassifier,
    X: Any,
    y: Any,
    eval_set: tuple[Any, Any] | None = None,
    unlabeled: Any = None,
    soft_labels: Any = None,
    temperature: float = 1.0,
) -> list[dict[str, float]]:
    """Train ``clf.model_`` in place per ``clf.train_mode``; returns the per-epoch log.

    With ``soft_labels`` ((N, C) class distributions, as PET's ensemble gives) the loss is the
    distillation loss ``T^2 * KL(soft || softmax(scores / T))`` instead of cross-entropy on ``y``.
    """
    model: PromptModel = clf.model_
    from .estimator import TrainingDiverged

    mode = clf.train_mode_
    train_parts = clf.parts_
    seed = clf.random_state_  # the caller seeded torch's generators (dropout) and restores them after
    generator = torch.Generator().manual_seed(seed)

    model_params, prompt_params = trainable_parameters(model, train_parts)
    rates = learning_rates(mode, train_parts, model, clf.learning_rate, clf.prompt_learning_rate, clf.head_learning_rate)
    trained = {**model_params, **prompt_params}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained.values():
        p.requires_grad_(True)

    rows = to_rows(X, model.template.fields, clf.columns)
    if soft_labels is not None:
        targets = torch.as_tensor(np.asarray(soft_labels, dtype=np.float32)).to(model.device)  # checked by fit
    else:
        targets = _label_indices(list(y), clf.classes_.tolist()).to(model.device)
    if len(rows) != len(targets):
        raise ValueError(f"X has {len(rows)} rows but there are {len(targets)} labels")
    encoded = model.encode(clf._demonstrated(rows)[0])  # one draw of demonstrations per example, if asked for
    unlabeled_encoded = model.encode(to_rows(unlabeled, model.template.fields, clf.columns)) if unlabeled is not None else None
    alpha = clf.mlm_loss_weight
    if unlabeled_encoded is not None and alpha is None:
        alpha = 0.9999  # PET's weighting of the classification loss
    if alpha is not None and unlabeled_encoded is None:
        raise ValueError("mlm_loss_weight is set but fit got no unlabeled texts: fit(X, y, unlabeled=texts)")

    class_weights = _class_weights(clf, targets)
    own_loss = any(part.own_loss for part in train_parts)
    if own_loss and targets.ndim != 1:
        raise ValueError("train_mode 'proto' trains prototypes on labels y with its contrastive loss; it does not "
                         "take soft_labels (PET's distillation): distil into another train_mode")
    sample_weights = None
    if clf.sampling == "balanced":
        if targets.ndim != 1:
            raise ValueError("sampling='balanced' draws by class label: it needs y, not soft_labels")
        counts = torch.bincount(targets.cpu(), minlength=len(clf.classes_)).float()
        sample_weights = (1.0 / counts)[targets.cpu()]  # every class equally likely per draw
    batch_size = clf.train_batch_size
    accumulation = clf.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(len(encoded) / batch_size) / accumulation)
    total_steps = clf.max_steps if clf.max_steps is not None else steps_per_epoch * clf.epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = _optimizer(model_params, prompt_params, rates, clf.weight_decay)
    scheduler = _linear_schedule(optimizer, int(clf.warmup_ratio * total_steps), total_steps)

    device_type = model.device.type
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(clf.mixed_precision)
    if amp_dtype is not None and device_type != "cuda":
        logger.warning("mixed_precision=%r needs a CUDA device; training in float32 on %s", clf.mixed_precision, device_type)
        amp_dtype = None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    cache = eval_cache = None
    patience = clf.early_stopping_patience  # fit checked that an eval_set comes with it
    if eval_set is not None:
        eval_rows = to_rows(eval_set[0], model.template.fields, clf.columns)
        eval_y = np.asarray(list(eval_set[1]))
        if len(eval_rows) != len(eval_y):
            raise ValueError(f"eval_set has {len(eval_rows)} rows but {len(eval_y)} labels")
    if all(part.keeps_encoder for part in train_parts) and getattr(model, "split_head", False):
        model.eval()  # frozen encoder, fixed input: deterministic mask rows
        cache = _HeadCache(model, encoded, clf.batch_size)
        # the dev set's mask rows are fixed too; iterative decoding of multi-token words needs the encoder
        if eval_set is not None and (str(getattr(clf.decoding, "value", clf.decoding)) == "parallel" or set(model.label_words.groups) == {1}):
            eval_cache = _HeadCache(model, model.encode(clf._demonstrated(eval_rows)[0]), clf.batch_size)
    elif own_loss and all(part.keeps_encoder for part in train_parts) and model.family == "causal":
        model.eval()  # prototypes alone on a frozen causal LM: its slot states are fixed too
        cache = _StateCache(model, encoded, clf.batch_size)
    else:
        model.train()

    rank, world = _distributed()
    masking = torch.Generator().manual_seed(seed + 7919 * (rank + 1))  # per process: MLM masks
    if world > 1 and rank == 0:
        logger.info("data-parallel training on %d processes", world)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    best_epoch = 0
    show = clf.progress if rank == 0 else False
    step = 0
    callbacks: list[Callable[..., Any]] = list(clf.callbacks or [])
    with tqdm(total=total_steps, desc=f"training ({mode})", unit="step", disable=None if show is None else not show) as bar:
        for epoch in range(epochs):
            if sample_weights is None:
                order = torch.randperm(len(encoded), generator=generator)
            else:
                order = torch.multinomial(sample_weights, len(encoded), replacement=True, generator=generator)
            losses = []
            optimizer.zero_grad(set_to_none=True)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            for b, batch_idx in enumerate(batches):
                # every process draws the same batch and takes its shard; losses are scaled by the shard's
                # share, so summed gradients equal the whole batch's
                idx = batch_idx.tensor_split(world)[rank]
                share = len(idx) / len(batch_idx)
                pick = torch.randint(len(unlabeled_encoded), (len(batch_idx),), generator=generator) if alpha else None
                if len(idx):
                    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                    if cache is not None:
                        parts = [idx]
                    else:
                        parts = [idx[g] for g in micro_batches([len(encoded[i].input_ids) for i in idx.tolist()], model.device,
                                                                     model.packs)]
                    weight = 1.0 if alpha is None else alpha
                    total = 0.0
                    for part in parts:  # each part's mean loss, weighted by its share of the batch
                        with autocast:
                            if own_loss:  # ProtoVerb: its contrastive loss on the slot states
                                states = (cache.slot_states(model, part.to(model.device)) if cache is not None
                                          else model.slot_states([encoded[i] for i in part.tolist()]))
                                loss = model.prototypes.loss(states, targets[part.to(targets.device)], class_weights)
                            else:
                                if cache is not None:
                                    scores = cache.class_scores(model, part.to(model.device))
                                else:
                                    scores = model.relative_class_scores([encoded[i] for i in part.tolist()])
                                loss = _loss(scores.float(), targets[part.to(targets.device)], temperature,
                                             class_weights)
                            loss = loss * (weight * len(part) / len(idx))
                        total += loss.item()
                        if not math.isfinite(total) and scaler is None:
                            raise TrainingDiverged(_diverged(epoch, step, f"the loss is {total}", clf))
                        loss = loss * share / accumulation
                        (scaler.scale(loss) if scaler else loss).backward()
                    if alpha is not None:
                        mine = pick.tensor_split(world)[rank].tolist()
                        with autocast:
                            loss = (1 - alpha) * model.auxiliary_loss([unlabeled_encoded[i] for i in mine], masking)
                        total += loss.item()
                        loss = loss * share / accumulation
                        (scaler.scale(loss) if scaler else loss).backward()
                    losses.append(total)
                if (b + 1) % accumulation and b + 1 != len(batches):
                    continue
                if world > 1:
                    _all_reduce_gradients(list(trained.values()))
                if scaler:
                    scaler.unscale_(optimizer)
                if clf.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(list(trained.values()), clf.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if not all(bool(torch.isfinite(p).all()) for p in trained.values()):
                    raise TrainingDiverged(_diverged(epoch, step, "the trained weights are not finite", clf))
                bar.update(1)
                if step >= total_steps:
                    break
            log = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses))}
            if eval_set is not None:
                if eval_cache is not None:
                    with torch.no_grad():
                        everything = torch.arange(len(eval_y), device=model.device)
                        predicted = clf.classes_[eval_cache.class_scores(model, everything).argmax(1).cpu().numpy()]
                else:
                    predicted = clf.predict(eval_set[0])
                log["eval_accuracy"] = float(np.mean(predicted == eval_y))
                if cache is None:
                    model.train()
                if best is None or log["eval_accuracy"] > best[0]:
                    best = (log["eval_accuracy"], {n: p.detach().clone() for n, p in trained.items()})
                    best_epoch = epoch + 1
                log["best_epoch"], log["best_eval_accuracy"] = best_epoch, best[0]
            logger.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in log.items()})
            history.append(log)
            for callback in callbacks:
                callback(clf, log)
            if step >= total_steps:
                break
            if patience is not None and epoch + 1 - best_epoch >= patience:
                # every process sees the same dev accuracy, so all stop at the same epoch
                logger.info("no better eval accuracy for %d epochs: stopped after epoch %d of %d", patience, epoch + 1, epochs)
                break

    if best is not None:
        with torch.no_grad():
            for name, value in best[1].items():
                trained[name].copy_(value)
        clf.best_epoch_, clf.best_dev_accuracy_ = best_epoch, best[0]
        logger.info("kept epoch %d of %d, the best eval accuracy (%.4f)", best_epoch, len(history), best[0])
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    for part in train_parts:
        part.after_training(model)  # e.g. the prefix MLP folded into the prefixes
    clf.trained_parameters_ = sorted(n for part in train_parts for n in part.parameters(model))
    return history
