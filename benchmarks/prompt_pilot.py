"""Choose each task's template and label words on dev: every catalogue variant, scored on dev only.

The catalogue publishes several (template, verbalizer) variants per task (``fewshot.prompt_variants``:
LM-BFF's manual and automatically searched ones, PET's patterns, OpenPrompt's). Which one suits
all-MiniLM-L6-v2, which has no pretrained MLM head, is not what the papers measured on RoBERTa or
ALBERT, so this pilot asks the dev sets:

for every task x seed (the benchmark's K = 16 splits) x variant, ``train_mode="head"`` is trained on the
train split and its best per-epoch dev accuracy kept (``fewshot.fit_prompt``: the benchmark's own head
run, same epochs and learning rate). A task's variant is the one with the best mean dev accuracy over
the seeds; ties keep the catalogue default. No test example is scored.

Why ``head`` mode: it caches the frozen encoder's mask states, so a fit takes seconds and every
variant can be tried on all five seeds (about 200 fits in some ten minutes on 2 cores). Trying
variants with ``full`` mode would cost as much as the benchmark itself. The choice is a proxy for
the other modes: a template that puts more of the class into the mask state helps each of them.

Run (from the repository root)::

    python benchmarks/prompt_pilot.py --jobs 2 --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv
    python benchmarks/fewshot.py --budget --prompts-from benchmarks/results/prompt_pilot_runs.csv ...

Writes ``benchmarks/results/prompt_pilot.md`` and ``prompt_pilot_runs.csv`` (one row per fit).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewshot  # noqa: E402
from data import SEEDS, data_root, get_task, load_task  # noqa: E402

COLUMNS = ["task", "seed", "template", "verbalizer", "dev_accuracy", "fit_s", "n_train", "n_dev", "epochs", "lr", "cpu"]


def run_unit(task: str, seed: int, settings: fewshot.Settings, data_dir: str | None) -> list[dict[str, Any]]:
    """Every variant of one task x seed in ``head`` mode: its best dev accuracy."""
    train, dev, test = load_task(task, seed, k=16, data_dir=data_dir, max_test=1)  # the test split is never scored
    split = fewshot.Split(task, seed, 16, train, dev, test)
    catalogue = get_task(task).catalogue
    lr = settings.learning_rates.get("head", (None,))[0]
    rows = []
    for template, verbalizer in fewshot.prompt_variants(catalogue):
        variant = fewshot.dataclasses.replace(settings, prompts={catalogue: (template, verbalizer)})
        start = time.perf_counter()
        outcome = fewshot.fit_prompt(split, "head", variant, lr)
        rows.append({"task": task, "seed": seed, "template": template, "verbalizer": verbalizer,
                     "dev_accuracy": outcome.dev_score, "fit_s": round(time.perf_counter() - start, 2),
                     "n_train": len(train), "n_dev": len(dev), "epochs": settings.head_epochs, "lr": lr,
                     "cpu": fewshot.cpu_name()})
        print(f"{task} seed={seed} {template} / {verbalizer}: dev {outcome.dev_score:.3f}", flush=True)
    return rows


def choose(runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Benchmark task -> the (template, verbalizer) with the best mean dev accuracy; ties keep the first
    listed (``prompt_variants`` lists the catalogue default first)."""
    chosen = {}
    for task, group in runs.groupby("task", sort=False):
        means = group.groupby(["template", "verbalizer"], sort=False)["dev_accuracy"].mean()
        chosen[str(task)] = tuple(means.idxmax())  # idxmax: the first of equal maxima
    return chosen


def report(runs: pd.DataFrame, command: str) -> str:
    chosen = choose(runs)
    out = [
        "# Prompt pilot: each task's template and label words, chosen on dev",
        "",
        "Every catalogue variant in `train_mode=\"head\"` on the K = 16 train split of each seed; score: the best "
        "per-epoch dev accuracy (mean ± sample std over seeds, %). The chosen variant (**bold**) has the best mean; "
        "ties keep the catalogue default (listed first). No test example was scored. all-MiniLM-L6-v2 has no "
        "pretrained MLM head, so these choices are for this encoder; the catalogue defaults stay the papers' own.",
        "",
        "| task | template | verbalizer | dev accuracy | seeds |",
        "|---|---|---|---|---|",
    ]
    for task, group in runs.groupby("task", sort=False):
        for (template, verbalizer), scores in group.groupby(["template", "verbalizer"], sort=False)["dev_accuracy"]:
            cell = f"{100 * scores.mean():.1f} ± {100 * scores.std(ddof=1):.1f}" if len(scores) > 1 else f"{100 * scores.mean():.1f}"
            mark = "**" if chosen[str(task)] == (template, verbalizer) else ""
            out.append(f"| {task} | {mark}`{template}`{mark} | {mark}`{verbalizer}`{mark} | {cell} | {len(scores)} |")
    changed = [t for t, pair in chosen.items() if pair != fewshot.default_prompt(get_task(t).catalogue)]
    first = runs.iloc[0]
    out += [
        "",
        f"Chosen differently from the catalogue default: {', '.join(changed) or 'none'}.",
        "",
        f"- head mode, {int(first['epochs'])} epochs, learning rate {first['lr']:g}, best dev epoch kept; "
        f"{len(runs)} fits taking {runs['fit_s'].sum() / 60:.1f} min summed over the worker processes",
        f"- CPU: {', '.join(dict.fromkeys(runs['cpu']))}",  # recorded with the runs: --report-only stays true
        "",
        *fewshot.reproduce(command),
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(fewshot.BENCHMARK_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--lr-from", default=None, metavar="RUNS_CSV",
                        help="take head mode's learning rate from a fewshot.py pilot (default: fewshot's default)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out-dir", default=str(fewshot.RESULTS))
    parser.add_argument("--report-only", action="store_true", help="write the report from the runs file as it is")
    args = parser.parse_args(argv)
    fewshot.quiet_transformers()
    try:
        data_root(args.data_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"prompt_pilot.py: {error}") from None
    out_dir = Path(args.out_dir)
    runs_path = out_dir / "prompt_pilot_runs.csv"
    rates = fewshot.rates_from_pilot(args.lr_from)[0] if args.lr_from else {}
    settings = fewshot.Settings(fewshot.offline_encoder_path(), fewshot.FULL_DEFAULTS["epochs"], 256, "cpu", rates)
    threads = os.cpu_count() or 1
    command = "python benchmarks/prompt_pilot.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                              if a != "--report-only")
    start = time.perf_counter()
    if args.report_only:
        runs = pd.read_csv(runs_path)
    else:
        rows: list[dict[str, Any]] = []
        units = [(task, seed) for task in args.tasks for seed in args.seeds]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, initializer=fewshot._worker_init,
                                                    initargs=(max(1, threads // args.jobs),)) as pool:
            futures = [pool.submit(run_unit, task, seed, settings, args.data_dir) for task, seed in units]
            for future in concurrent.futures.as_completed(futures):
                rows += future.result()
        order = {unit: i for i, unit in enumerate(units)}
        runs = pd.DataFrame(rows, columns=COLUMNS)
        runs = runs.iloc[np.argsort([order[(t, s)] for t, s in zip(runs["task"], runs["seed"], strict=True)], kind="stable")]
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.to_csv(runs_path, index=False)
    elapsed = (time.perf_counter() - start) / 60
    (out_dir / "prompt_pilot.md").write_text(report(runs, command))
    print(f"wrote {out_dir / 'prompt_pilot.md'} ({elapsed:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
