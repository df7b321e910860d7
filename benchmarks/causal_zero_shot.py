"""Zero-shot accuracy of SmolLM2-135M-Instruct (a real pretrained causal LM) on the nine benchmark tasks.

For every task and every catalogue template variant (with the verbalizer variant of the same name where
there is one, else the task's default label words), the test set is scored once; the calibrated accuracy
(contextual calibration, Zhao et al. 2021, content-free inputs "N/A" and "") comes from the same scores,
so both columns describe the same run. A variant with text after the slot is scored with
``score_suffix=True`` (the filled prompt's likelihood): a causal LM would not see that text otherwise.

The variant a causal-LM user gets by default (``default_causal`` in the catalogue) was fixed before this
run; the table also shows which variant the task's *dev* data (the seed-13 16-shot train + dev split,
labelled data a few-shot user has) would choose, and its test accuracy: test never chooses anything.

Beside it: LM-BFF's published prompt-based zero-shot row (RoBERTa-large, 355M parameters, a masked LM;
Gao et al. 2021, Table 3): SST-2 83.6, SST-5 35.0, MR 80.8, CR 79.5 (no zero-shot figure for the others).

Run (from the repository root)::

    python benchmarks/causal_zero_shot.py                   # test sets up to 2000
    python benchmarks/causal_zero_shot.py --max-test 500    # the committed run (the session's time budget)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("sst2", "sst5", "mr", "cr", "trec", "agnews", "rte", "cb", "boolq")
LMBFF_ZERO_SHOT = {"sst2": 83.6, "sst5": 35.0, "mr": 80.8, "cr": 79.5}


def variants(task: str):
    from promptcls.catalogue import task_entry

    entry = task_entry(task)
    words = entry["verbalizers"]["verbalizers"]
    for name, t in entry["templates"]["templates"].items():
        yield name, t, name if name in words else entry["verbalizers"]["default"]


def accuracy(scores: np.ndarray, labels: np.ndarray, classes: list) -> float:
    return float(np.mean(np.asarray(classes, dtype=object)[scores.argmax(1)] == labels))


def calibrate(scores: np.ndarray, free: np.ndarray) -> np.ndarray:
    def log_softmax(s):
        s = s - s.max(1, keepdims=True)
        return s - np.log(np.exp(s).sum(1, keepdims=True))

    prior = np.log(np.exp(log_softmax(free)).mean(0))
    return log_softmax(scores) - prior


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+",
                        help="only these template variants (the word 'default' is the task's own default); all if not given")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier run's results file and "
                                                                  "score only the (task, variant) pairs it lacks")
    parser.add_argument("--all-variants", action="store_true",
                        help="also the variants with text fields after the slot (scored as filled prompts: each "
                             "candidate re-reads the field, several times the cost)")
    parser.add_argument("--out", default=str(RESULTS / "causal_zero_shot"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from data import describe_split, load_task

    from promptcls import PromptClassifier, Template
    from promptcls.catalogue import load_verbalizer, task_entry
    from promptcls.loading import load_model
    from promptcls.template import Field, Mask

    lm, tok = load_model("smollm2")
    started = time.time()
    rows, skipped = [], []
    if args.resume and Path(f"{args.out}_runs.json").is_file():
        earlier = json.loads(Path(f"{args.out}_runs.json").read_text())
        rows, started = earlier["rows"], started - 60 * earlier["meta"]["minutes"]
        for r in rows:  # rows of files written before the size was kept per row
            r.setdefault("max_test", earlier["meta"]["max_test"])
    for task in args.tasks:
        train, dev, test = load_task(task, 13, max_test=args.max_test)
        pool = pd.concat([train, dev], ignore_index=True)
        default_causal = task_entry(task)["templates"].get("default_causal")
        task_default = task_entry(task)["templates"]["default"]
        for name, spec, words_name in variants(task):
            if args.variants and name not in args.variants and not ("default" in args.variants and name == task_default):
                continue
            if any(r["task"] == task and r["variant"] == name for r in rows):
                continue
            template = Template(spec["template"], prompt_encoder=spec.get("prompt_encoder", "none"))
            if template.has_soft_tokens:
                continue
            parts = [p for seg in template.segments for p in seg]
            slot = next(i for i, p in enumerate(parts) if isinstance(p, Mask))
            suffix = any(isinstance(p, Field) for p in parts[slot + 1:]) or any(
                getattr(p, "text", "").strip() for p in parts[slot + 1:])
            fields = list(template.fields)
            if any(f not in test.columns for f in fields):
                continue
            if not args.all_variants and any(isinstance(p, Field) for p in parts[slot + 1:]):
                skipped.append(f"{task} {name}")
                continue
            verbalizer = load_verbalizer(task, words_name)
            t0 = time.time()
            try:
                clf = PromptClassifier(lm, template, verbalizer, tokenizer=tok, batch_size=args.batch_size,
                                       score_suffix=bool(suffix), progress=False).fit()
            except ValueError as e:  # a label word the tokenizer cannot isolate, a template too long ...
                print(f"{task} {name}: skipped ({e})", flush=True)
                continue
            classes = list(clf.classes_)
            with torch.inference_mode():
                test_scores = clf.decision_function(test[fields])
                dev_scores = clf.decision_function(pool[fields])
                free = clf.decision_function([{f: t for f in fields} for t in ("N/A", "")])
            seconds = time.time() - t0
            row = {
                "task": task, "variant": name, "verbalizer": words_name, "family": spec.get("family", "masked"),
                "score_suffix": bool(suffix), "default_causal": name == default_causal,
                "n_test": len(test), "max_test": args.max_test, "n_dev": len(pool),
                "test": accuracy(test_scores, test["label"].to_numpy(dtype=object), classes),
                "test_calibrated": accuracy(calibrate(test_scores, free), test["label"].to_numpy(dtype=object), classes),
                "dev": accuracy(dev_scores, pool["label"].to_numpy(dtype=object), classes),
                "dev_calibrated": accuracy(calibrate(dev_scores, free), pool["label"].to_numpy(dtype=object), classes),
                "seconds": round(seconds, 1), "split": describe_split(task, 16),
            }
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("task", "variant", "test", "test_calibrated", "dev", "seconds")}),
                  flush=True)
            write_report(rows, args, started, skipped)
    write_report(rows, args, started, skipped)
    return 0


def write_report(rows, args, started, skipped=()) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = sorted({r.get("max_test", args.max_test) for r in rows} | {args.max_test})
    meta = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "minutes": round((time.time() - started) / 60, 1), "max_test": args.max_test,
            "command": f"python benchmarks/causal_zero_shot.py --max-test {args.max_test}"
            + (f" --tasks {' '.join(args.tasks)}" if list(args.tasks) != list(TASKS) else "")
            + (" --all-variants" if args.all_variants else "")
            + (f" --variants {' '.join(args.variants)}" if args.variants else ""), "skipped": list(skipped)}
    Path(f"{out}_runs.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    lines = [
        "# Zero-shot accuracy of SmolLM2-135M-Instruct (causal LM)", "",
        f"Command: `{meta['command']}` ({meta['minutes']} min on {meta['threads']} threads, {meta['cpu']}). Test sets "
        f"of at most {args.max_test} examples (`benchmarks/data.py`, a fixed subsample)"
        + (f"; rows kept from earlier invocations ran at most {' or '.join(map(str, sizes))} (the `n test` column "
           "gives each row's size; dev is the same for all)" if len(sizes) > 1 else "")
        + ". Accuracy in %; `cal.`: contextual calibration from the same scores. `dev`: the seed-13 16-shot train + "
        "dev examples.", "",
        "## Per task: the Calibrate-Before-Use prompt, the dev choice, LM-BFF's published zero-shot", "",
        "The catalogue's `default_causal` is the dev-chosen template variant of this table (`cbu` was the "
        "default before the run); `(default_causal)` in the second table marks the variant that was the default "
        "when the run was made.", "",
        "| task | `cbu` (Calibrate Before Use) | calibrated | dev-chosen variant | its test | calibrated | LM-BFF RoBERTa-large zero-shot |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        default = next((r for r in mine if r["variant"] == "cbu"), None)
        best = max(mine, key=lambda r: (max(r["dev"], r["dev_calibrated"]), r["variant"] == "cbu"))
        best_cal = best["dev_calibrated"] > best["dev"]
        ref = LMBFF_ZERO_SHOT.get(task)
        d = f"{100 * default['test']:.1f} | {100 * default['test_calibrated']:.1f}" if default else "- | -"
        lines.append(f"| {task} | {d} | {best['variant']}{' + cal.' if best_cal else ''} | {100 * best['test']:.1f} | "
                     f"{100 * best['test_calibrated']:.1f} | {ref if ref is not None else '-'} |")
    lines += ["", "## Every variant", "",
              "| task | variant | label words | scoring | n test | test | test cal. | dev | dev cal. | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scoring = "filled prompt" if r["score_suffix"] else "word"
        lines.append(f"| {r['task']} | {r['variant']}{' (default_causal)' if r['default_causal'] else ''} | "
                     f"{r['verbalizer']} | {scoring} | {r['n_test']} | {100 * r['test']:.1f} | "
                     f"{100 * r['test_calibrated']:.1f} | {100 * r['dev']:.1f} | {100 * r['dev_calibrated']:.1f} | "
                     f"{r['seconds']} |")
    if args.variants:
        ran = {(r["task"], r["variant"]) for r in rows}
        missing = [f"{t} {name}" for t in dict.fromkeys(r["task"] for r in rows) for name, *_ in variants(t)
                   if (t, name) not in ran]
        lines += ["", f"Only the variants `{' '.join(args.variants)}` ran in the last invocation; with `--resume` the rows "
                  "of an earlier invocation are kept (the second table lists every variant that ran). "
                  + (f"Not run: {', '.join(missing)}." if missing else "Every catalogue variant of these tasks has run.")]
    if skipped:
        lines += ["", f"Not run (text fields after the slot; `--all-variants` runs them): {', '.join(skipped)}."]
    note = Path(f"{out}_note.md")  # how the file was made, when it took several invocations: kept across reruns
    if note.is_file():
        lines += ["", note.read_text().strip()]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
