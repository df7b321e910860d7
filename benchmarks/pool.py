"""Run a benchmark's fits one after another or side by side in worker processes, with a deadline.

``run_units(fn, units, jobs=..., threads=..., deadline_min=..., record=...)`` calls ``fn(*unit)`` for each unit
(in this process with ``jobs=1``, else in ``jobs`` spawned workers of ``threads`` torch threads each) and hands
each result to ``record`` as it comes. No unit starts after ``deadline_min`` minutes; the ones running finish.
Returns how many units did not run. ``run_and_record`` also keeps the rows in a runs file."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _worker_init(threads: int) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)


def run_units(fn: Callable[..., Any], units: Sequence[tuple], *, jobs: int, threads: int,
              deadline_min: float | None, record: Callable[[Any], None]) -> int:
    deadline = time.time() + 60 * deadline_min if deadline_min else None
    if jobs == 1:
        for i, unit in enumerate(units):
            if deadline and time.time() > deadline:
                return len(units) - i
            record(fn(*unit))
        return 0
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                                initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *unit) for unit in units]
        for future in concurrent.futures.as_completed(futures):
            if not future.cancelled():
                record(future.result())
            if deadline and time.time() > deadline:
                for f in futures:
                    f.cancel()  # those not started; the running ones finish
    return sum(f.cancelled() for f in futures)


def run_and_record(fn: Callable[..., dict], units: Sequence[tuple], *, rows: list[dict], runs_path: Path,
                   report: Callable[[list[dict]], None], jobs: int, threads: int, deadline_min: float | None) -> None:
    """``run_units`` for fits that return result rows: each row is printed; a row with an ``error`` goes to
    ``<runs>_errors.csv`` (next to the runs file), any other joins ``rows``, the runs file is rewritten whole
    (an interrupted write leaves the previous one) and ``report(rows)`` runs."""
    import json

    import pandas as pd

    errors: list[dict] = []

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if "error" in row:
            errors.append(row)
            return
        rows.append(row)
        staged = runs_path.with_suffix(".tmp")
        pd.DataFrame(rows).to_csv(staged, index=False)
        staged.replace(runs_path)
        report(rows)

    skipped = run_units(fn, units, jobs=jobs, threads=threads, deadline_min=deadline_min, record=record)
    print(f"{len(units) - skipped - len(errors)} fits done, {len(errors)} failed, {skipped} not run (deadline)",
          flush=True)
    if errors:
        pd.DataFrame(errors).to_csv(runs_path.with_name(runs_path.name.replace("_runs.csv", "_errors.csv")), index=False)
