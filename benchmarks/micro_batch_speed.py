"""Micro-batches by length on CPU: what promptcls saves by not running the padding of random batches.

Few-shot training draws batches at random, and a batch pads to its longest prompt. On CPU every
padded token costs as much as a real one, so promptcls runs each batch as the micro-batches of
similar length that ``promptcls.encoding.length_groups`` picks (the gradient stays the batch's).
Two measurements, on each task's LM-BFF / FewGLUE split of seed 13 (K = 16):

``padding``  tokens the encoder runs per real prompt token over 20 epochs of the batch orders
             that ``fit`` draws (batch 8, ``random_state`` = 13), for the whole padded batch and
             for its micro-batches, and how many passes each takes. Counted, not timed: the same
             on any machine.
``timing``   ``fit`` in ``prompt`` and ``full`` mode (``--epochs`` epochs, the benchmark's
             template and label words) and ``predict`` on the dev set, with micro-batches off
             (``CPU_PASS_OVERHEAD`` set so high that every batch stays whole) and on, the two
             alternating in one process with one torch thread, ``--repeats`` times. Median seconds
             and the ratio.

Run (from the repository root)::

    python benchmarks/micro_batch_speed.py

Writes ``benchmarks/results/micro_batch_speed.md`` and ``micro_batch_speed.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewshot  # noqa: E402
from data import load_task  # noqa: E402

import promptcls.encoding  # noqa: E402
from promptcls.encoding import length_groups  # noqa: E402
from promptcls.inputs import to_rows  # noqa: E402

VARIANTS = ("whole", "micro")
TIMED_TASKS = ("sst2", "agnews", "rte", "boolq")
MODES = ("prompt", "full")
SEED = 13
BATCH = fewshot.TRAIN_BATCH


def prompt_lengths(split: fewshot.Split, method: str, settings: fewshot.Settings, mlm, tokenizer) -> list[int]:
    """Tokens of each train prompt as ``fit`` encodes it for ``method``."""
    clf = fewshot.prompt_classifier(split, method, None, settings, mlm, tokenizer)
    clf.set_params(train_mode="none").fit()
    rows = to_rows(split.train[split.fields], clf.model_.template.fields, None)
    return [len(e.input_ids) for e in clf.model_.encode(rows)]


def padding(lengths: list[int], epochs: int = 20) -> dict[str, float]:
    """Run tokens per real token, and passes, over ``epochs`` of ``fit``'s batch orders."""
    generator = torch.Generator().manual_seed(SEED)
    real = whole = micro = 0
    passes = {"whole": 0, "micro": 0}
    for _ in range(epochs):
        order = torch.randperm(len(lengths), generator=generator).tolist()
        for start in range(0, len(order), BATCH):
            batch = [lengths[i] for i in order[start : start + BATCH]]
            real += sum(batch)
            whole += len(batch) * max(batch)
            groups = length_groups(batch, promptcls.encoding.CPU_PASS_OVERHEAD)
            micro += sum(len(g) * max(batch[i] for i in g) for g in groups)
            passes["whole"] += 1
            passes["micro"] += len(groups)
    return {"whole": whole / real, "micro": micro / real, "passes_whole": passes["whole"] / epochs,
            "passes_micro": passes["micro"] / epochs}


def timed(variant: str, work, *args) -> float:
    saved = promptcls.encoding.CPU_PASS_OVERHEAD
    promptcls.encoding.CPU_PASS_OVERHEAD = 1e12 if variant == "whole" else saved
    try:
        start = time.perf_counter()
        work(*args)
        return time.perf_counter() - start
    finally:
        promptcls.encoding.CPU_PASS_OVERHEAD = saved


def plot(pad: dict[str, dict[str, float]], median: dict[tuple[str, str], dict[str, float]], repeats: int,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tasks = list(pad)
    xs = np.arange(len(tasks))
    axes[0].bar(xs - 0.2, [pad[t]["whole"] for t in tasks], 0.4, label="whole batch", color="#999999")
    axes[0].bar(xs + 0.2, [pad[t]["micro"] for t in tasks], 0.4, label="micro-batches", color="#1f77b4")
    axes[0].axhline(1.0, color="black", lw=0.8)
    axes[0].set_xticks(xs, tasks, rotation=30)
    axes[0].set_ylabel("tokens run per real token")
    axes[0].set_title("padding in random batches of 8")
    axes[0].legend()
    keys = list(median)
    axes[1].bar(np.arange(len(keys)), [median[k]["whole"] / median[k]["micro"] for k in keys], color="#1f77b4")
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set_xticks(np.arange(len(keys)), [f"{t} {w}" for t, w in keys], rotation=50, ha="right", fontsize=8)
    axes[1].set_ylabel("time whole / micro")
    axes[1].set_title(f"speed-up (median of {repeats}), one CPU thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TIMED_TASKS), help="tasks to time (padding: every task)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-dir", default=str(fewshot.RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fewshot.quiet_transformers()
    from transformers import AutoModelForMaskedLM

    began = time.perf_counter()
    load_before = os.getloadavg()
    path = fewshot.offline_encoder_path()
    settings = fewshot.Settings(path, args.epochs, 256, "cpu", {})
    mlm = fewshot.seeded_load(lambda: AutoModelForMaskedLM.from_pretrained(path), 0)
    tokenizer = fewshot.tokenizer_for(settings)
    splits = {}
    for task in fewshot.BENCHMARK_TASKS:
        train, dev, test = load_task(task, SEED, k=16, max_test=1)
        splits[task] = fewshot.Split(task, SEED, 16, train, dev, test)

    pad = {task: padding(prompt_lengths(split, "full", settings, mlm, tokenizer)) for task, split in splits.items()}

    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    loss_ratio: dict[tuple[str, str], float] = {}
    for task in args.tasks:
        split = splits[task]
        x, y = split.train[split.fields], split.train["label"].tolist()
        for mode in MODES:
            times[task, mode] = {v: [] for v in VARIANTS}
            trained = {}
            for _ in range(args.repeats):
                for variant in VARIANTS:
                    clf = fewshot.prompt_classifier(split, mode, None, settings, mlm, tokenizer)
                    times[task, mode][variant].append(timed(variant, clf.fit, x, y))
                    trained[variant] = clf
            # dropout draws differ between the variants, so the trained models differ; their losses agree
            # in size (the gradient of a batch is the same sum)
            loss_ratio[task, mode] = trained["micro"].history_[-1]["loss"] / trained["whole"].history_[-1]["loss"]
        times[task, "predict dev"] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                times[task, "predict dev"][variant].append(
                    timed(variant, trained["micro"].predict, split.dev[split.fields]))
        print(task, {m: {v: round(statistics.median(t[v]), 2) for v in VARIANTS} for (tk, m), t in times.items()
                     if tk == task}, flush=True)

    median = {key: {v: statistics.median(t[v]) for v in VARIANTS} for key, t in times.items()}
    lines = [
        "# Micro-batches by length: padding and time on CPU",
        "",
        f"all-MiniLM-L6-v2 (its MLM head randomly initialised), seed-{SEED} splits at K = 16 (FewGLUE: 32 examples), "
        f"batch {BATCH}, max length 256, one torch thread. `CPU_PASS_OVERHEAD` = "
        f"{promptcls.encoding.CPU_PASS_OVERHEAD} padded tokens per pass.",
        "",
        "## Padding (counted)",
        "",
        "Tokens the encoder runs per real prompt token, over 20 epochs of the batch orders `fit` draws; passes per "
        "epoch. Full-mode prompts (the benchmark's template for each task).",
        "",
        "| task | train prompts | mean / max tokens | whole batches: tokens run per real token | micro-batches | "
        "passes per epoch, whole / micro |",
        "|---|---|---|---|---|---|",
    ]
    for task, split in splits.items():
        lengths = prompt_lengths(split, "full", settings, mlm, tokenizer)
        p = pad[task]
        lines.append(f"| {task} | {len(lengths)} | {np.mean(lengths):.0f} / {max(lengths)} | {p['whole']:.2f} | "
                     f"{p['micro']:.2f} | {p['passes_whole']:.0f} / {p['passes_micro']:.1f} |")
    lines += [
        "",
        "## Time (measured side by side)",
        "",
        f"`fit` for {args.epochs} epochs (no dev set) and `predict` on the dev set, medians over R = {args.repeats} "
        "alternating runs. whole: every batch padded to its longest prompt; micro: promptcls's default on CPU. "
        "Loss ratio: the last epoch's training loss, micro / whole (the dropout draws differ, the objective does not).",
        "",
        "| task | what | whole s | micro s | whole / micro | loss ratio |",
        "|---|---|---|---|---|---|",
    ]
    for (task, what), m in median.items():
        loss = f"{loss_ratio[task, what]:.2f}" if (task, what) in loss_ratio else "-"
        lines.append(f"| {task} | {what} | {m['whole']:.2f} | {m['micro']:.2f} | {m['whole'] / m['micro']:.2f}x | {loss} |")
    load_after = os.getloadavg()
    lines += [
        "",
        f"- CPU: {fewshot.cpu_name()}; torch {torch.__version__}; load average (1 min) at start and end "
        f"{load_before[0]:.1f}, {load_after[0]:.1f}; {(time.perf_counter() - began) / 60:.1f} min in all",
        "- The timing includes each fit's set-up (copying the model, building the prompt model, encoding), which "
        "micro-batches do not change.",
        "",
        *fewshot.reproduce("python benchmarks/micro_batch_speed.py " + " ".join(sys.argv[1:])),
    ]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "micro_batch_speed.md").write_text("\n".join(lines) + "\n")

    plot(pad, median, args.repeats, out_dir / "micro_batch_speed.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
