"""Two few-shot runs files side by side: what a setting changes in accuracy and in wall time.

``fewshot.py`` writes one runs file per invocation. To see what a setting (``--patience``, say)
buys, run the same units twice at the same time on the same machine, each invocation with one
torch thread, then compare::

    python benchmarks/fewshot.py --tasks sst2 trec cb --seeds 13 21 --methods prompt head+prompt full finetune \\
        --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv --threads 1 --name patience_off &
    python benchmarks/fewshot.py --tasks sst2 trec cb --seeds 13 21 --methods prompt head+prompt full finetune \\
        --lr-from benchmarks/results/fewshot_lr_pilot_runs.csv --threads 1 --name patience_5 --patience 5 &
    wait
    python benchmarks/compare_runs.py benchmarks/results/patience_off_runs.csv benchmarks/results/patience_5_runs.csv \\
        --name fewshot_patience

Only the runs present in both files (task x K x seed x method) are compared. Accuracy: mean
difference, second minus first, in points. Time: the ratio of summed wall times, second over
first, and the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import RESULTS, headline, k_label, read_meta, read_runs, reproduce  # noqa: E402

KEY = ["task", "k", "seed", "method"]


def paired(first: Path, second: Path) -> pd.DataFrame:
    """The runs of both files, one row per task x K x seed x method, columns suffixed _a and _b."""
    a, b = read_runs(first), read_runs(second)
    for path, runs in ((first, a), (second, b)):
        if runs.empty:
            raise SystemExit(f"compare_runs.py: no runs in {path}")
    both = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    if both.empty:
        raise SystemExit(f"compare_runs.py: {first} and {second} share no task x K x seed x method run")
    both["score_a"] = [row[headline(row["task"]) + "_a"] for _, row in both.iterrows()]
    both["score_b"] = [row[headline(row["task"]) + "_b"] for _, row in both.iterrows()]
    return both


def table(both: pd.DataFrame, by: list[str]) -> list[str]:
    lines = [f"| {' | '.join(by)} | runs | score, first | score, second | difference (points) | time, first (s) "
             "| time, second (s) | time ratio |", "|---" * (len(by) + 7) + "|"]
    for key, group in both.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if by == ["task", "k"]:
            key = (key[0], k_label(*key))
        diff = 100 * (group["score_b"] - group["score_a"]).mean()
        ta, tb = group["total_s_a"].sum(), group["total_s_b"].sum()
        lines.append(f"| {' | '.join(map(str, key))} | {len(group)} | {100 * group['score_a'].mean():.1f} "
                     f"| {100 * group['score_b'].mean():.1f} | {diff:+.1f} | {ta:.0f} | {tb:.0f} | {tb / ta:.2f} |")
    return lines


def machine_line(path: Path) -> str:
    """Where and when a runs file's invocation ran, from its ``_meta.json`` if there is one."""
    info = read_meta(path)
    if info is None:
        return f"- `{path.name}`: no record of its machine"
    return (f"- `{path.name}`: {info['cpu']}, {info['threads']} torch thread(s), {info['elapsed_min']:.1f} min, "
            f"finished {info['date']}")


def describe(runs: pd.DataFrame) -> str:
    """The settings of one side's runs: epochs, patience, test sizes, prompts (where they vary, every value)."""
    def values(column: str) -> str:
        if column not in runs.columns:
            return "none"
        seen = sorted({str(v) for v in runs[column]}, key=lambda v: (len(v), v))
        return "/".join(v if v != "" else "none" for v in seen)

    chosen = int((runs["prompt"] != "").sum()) if "prompt" in runs.columns else 0
    return (f"epochs={values('epochs')}, patience={values('patience')}, test n up to {int(runs['n_test'].max())}, "
            f"{chosen} runs with a dev-chosen prompt instead of the catalogue default")


def report(both: pd.DataFrame, first: Path, second: Path, command: str) -> str:
    ratio = both["total_s_b"].sum() / both["total_s_a"].sum()
    median = float(np.median(both["total_s_b"] / both["total_s_a"]))
    diff = 100 * (both["score_b"] - both["score_a"]).mean()
    settings = {
        name: describe(runs)
        for name, runs in (("first", both.filter(regex="_a$").rename(columns=lambda c: c[:-2])),
                           ("second", both.filter(regex="_b$").rename(columns=lambda c: c[:-2])))
    }
    machines = {info.get("cpu") for path in (first, second) if (info := read_meta(path)) is not None}
    caveat = (["", "**The two files ran on different CPUs** (below): the time ratio compares the machines as well "
               "as the settings."] if len(machines) > 1 else [])
    return "\n".join([
        f"# `{second.name}` against `{first.name}`",
        "",
        f"First: `{first.name}` ({settings['first']}). Second: `{second.name}` ({settings['second']}).",
        f"{len(both)} runs in both. Score: each task's headline metric, %.",
        "",
        f"- score: second minus first, mean over runs: **{diff:+.1f} points**",
        f"- wall time: second / first, summed over runs: **{ratio:.2f}**; median of the per-run ratios {median:.2f}",
        *caveat,
        "",
        "## Machines",
        "",
        machine_line(first),
        machine_line(second),
        "",
        "## Per method",
        "",
        *table(both, ["method"]),
        "",
        "## Per task",
        "",
        *table(both, ["task", "k"]),
        "",
        *reproduce(command),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="runs file (the reference)")
    parser.add_argument("second", type=Path, help="runs file (the change)")
    parser.add_argument("--name", required=True, help="writes <out-dir>/<name>.md")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    both = paired(args.first, args.second)
    command = "python benchmarks/compare_runs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = args.out_dir / f"{args.name}.md"
    path.write_text(report(both, args.first, args.second, command))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
