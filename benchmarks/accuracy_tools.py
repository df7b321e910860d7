"""The accuracy toolbox on real data: learned verbalizers, demonstrations, regression, class imbalance.

Each experiment compares promptcls options against the manual verbalizer without demonstrations, on the
LM-BFF K = 16 splits (``benchmarks/data.py``; seeds 13, 21, 42, 87, 100), each fit keeping its best epoch on
the dev set (``eval_set``); test (at most ``--max-test`` examples) is scored once and chooses nothing.

``verbalizers`` (SST-2, TREC, AG News)
    MiniLM (no MLM head: the head trains in every method): ``head`` with the catalogue's label words, against
    ``head+verbalizer`` (a soft verbalizer, WARP, started from the same words), and ``proto`` (ProtoVerb:
    prototypes of the frozen encoder's mask states; no MLM head needed). SmolLM2: zero-shot, ``prompt`` (four
    soft tokens, the manual words), ``prompt+verbalizer`` (WARP), ``proto`` and ``prompt+proto`` (ProtoVerb),
    and ``zero-shot, kpt`` (KPT: 50 words per class from ``expand_label_words``, ``word_refinement=0.5`` and
    ``word_calibration`` on the 16-shot training texts without their labels; KPT's published settings, not
    tuned). KPT on MiniLM would score words with a random MLM head, so it is not run there.
``demonstrations`` (SST-2, CR, RTE)
    MiniLM: ``head`` without demonstrations, with ``random`` and with ``similar`` ones (one per class from the
    16-shot train set). SmolLM2: zero-shot without and with demonstrations (in-context learning, no training),
    averaged over 4 draws at test, and random ones with contextual calibration (content-free inputs with the
    same demonstrations).
``regression`` (STS-B, scores in [0, 5])
    ``PromptRegressor`` between "No" and "Yes": zero-shot, and trained (MiniLM ``head``, SmolLM2 ``prompt``);
    Pearson and Spearman correlation on test. The dev set picks the epoch by its loss-free proxy (the last
    epoch: regression has no dev accuracy), so every fit runs the same epochs.
``imbalance`` (CR re-sampled: 16 negative and 4 positive training examples)
    ``full`` (MiniLM) / ``prompt`` (SmolLM2) plainly, with ``class_weight="balanced"`` and with
    ``sampling="balanced"``; every fit runs all its epochs (the dev accuracy of an imbalanced dev set would
    choose the epoch that predicts the majority class); macro-F1 and accuracy on the (balanced) test set.

Run (from the repository root; writes ``benchmarks/results/accuracy_tools_<model>.md`` and ``_runs.csv``)::

    python benchmarks/accuracy_tools.py --model minilm --max-test 500
    python benchmarks/accuracy_tools.py --model smollm2 --experiments demonstrations --seeds 13 21
    # on a GPU, fits side by side, none started after 3 minutes (as accuracy_tools_smollm2.md was made):
    python benchmarks/accuracy_tools.py --model smollm2 --max-test 500 --device cuda --jobs 5 --threads 1 \
        --deadline-min 3

Fits run seed by seed, so a run cut short covers every method with its first seeds; ``--resume`` runs only the
missing ones. Failed fits are listed in ``accuracy_tools_<model>_errors.csv``; ``accuracy_tools_<model>_note.md``,
where there is one, follows the tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SEEDS, data_root, load_task  # noqa: E402
from methods import device_name, model_folder, note  # noqa: E402
from pool import run_and_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENTS = {
    "verbalizers": ("sst2", "trec", "agnews"),
    "demonstrations": ("sst2", "cr", "rte"),
    "regression": ("stsb",),
    "imbalance": ("cr",),
}
METHODS = {
    ("minilm", "verbalizers"): ("head", "head+verbalizer", "proto"),
    ("smollm2", "verbalizers"): ("zero-shot", "prompt", "prompt+verbalizer", "proto", "prompt+proto", "zero-shot, kpt"),
    ("minilm", "demonstrations"): ("head", "head, random demos", "head, similar demos"),
    ("smollm2", "demonstrations"): ("zero-shot", "zero-shot, random demos", "zero-shot, similar demos",
                                    "zero-shot, random demos, calibrated"),
    ("minilm", "regression"): ("zero-shot", "head"),
    ("smollm2", "regression"): ("zero-shot", "prompt"),
    ("minilm", "imbalance"): ("full", "full, class_weight=balanced", "full, sampling=balanced"),
    ("smollm2", "imbalance"): ("prompt", "prompt, class_weight=balanced", "prompt, sampling=balanced"),
}


def load_stsb(seed: int, max_test: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    folder = data_root() / "lm-bff" / "STS-B"

    def read(path: Path) -> pd.DataFrame:
        import csv

        frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        return pd.DataFrame({"sentence1": frame["sentence1"], "sentence2": frame["sentence2"],
                             "label": frame["score"].astype(float)})

    test = read(folder / "test.tsv")
    if len(test) > max_test:
        test = test.sample(n=max_test, random_state=0).reset_index(drop=True)
    return read(folder / f"16-{seed}" / "train.tsv"), read(folder / f"16-{seed}" / "dev.tsv"), test


def imbalanced(frame: pd.DataFrame, seed: int, minority: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pos = frame[frame["label"] == 1]
    keep = pos.iloc[rng.choice(len(pos), size=min(minority, len(pos)), replace=False)]
    return pd.concat([frame[frame["label"] == 0], keep]).reset_index(drop=True)


def prompt_for(task: str, causal: bool) -> tuple[str, dict]:
    from promptcls.catalogue import load_template, load_verbalizer

    family = "causal" if causal else None
    template = load_template(task, family=family)
    return template.source, load_verbalizer(task, family=family)


def run_one(model: str, experiment: str, task: str, seed: int, method: str, args, folder: str) -> dict:
    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from promptcls import PromptClassifier, PromptRegressor

    causal = model == "smollm2"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)  # MiniLM's missing MLM head starts from this seed
    lm = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(folder)
    common = dict(tokenizer=tokenizer, max_length=256, random_state=seed, progress=False, train_batch_size=8,
                  epochs=args.epochs, device=args.device)
    if experiment == "regression":
        train, dev, test = load_stsb(seed, args.max_test)
        template = ("{sentence1}\n{sentence2}\nDo these two sentences mean the same? Answer: [MASK]" if causal
                    else "{sentence1} [MASK] , {sentence2}")
        mode = "none" if method == "zero-shot" else method
        if mode == "prompt":
            template = "[SOFT*4] " + template
        reg = PromptRegressor(lm, template, ("No", "Yes"), value_range=(0, 5), train_mode=mode, **common)
        fields = ["sentence1", "sentence2"]
        reg.fit(train[fields], train["label"].tolist()) if mode != "none" else reg.fit()
        predicted = reg.predict(test[fields])
        dev_pred = reg.predict(dev[fields])
        from scipy.stats import pearsonr, spearmanr

        return {"dev": float(pearsonr(dev_pred, dev["label"])[0]), "test": float(pearsonr(predicted, test["label"])[0]),
                "test_spearman": float(spearmanr(predicted, test["label"])[0]), "n_test": len(test)}
    train, dev, test = load_task(task, seed, max_test=args.max_test)
    if experiment == "imbalance":
        train, dev = imbalanced(train, seed), imbalanced(dev, seed + 1)
    template, words = prompt_for(task, causal)
    base = method.split(",")[0].strip()
    mode = "none" if base == "zero-shot" else base
    if "prompt" in mode.split("+"):
        template = "[SOFT*4] " + template
    extra = {}
    if "demos" in method:
        extra.update(demonstrations=method.split(",")[1].split()[0], demonstration_sets=4 if mode == "none" else 1)
    if "class_weight" in method:
        extra["class_weight"] = "balanced"
    if "sampling" in method:
        extra["sampling"] = "balanced"
    if "calibrated" in method:
        extra["calibration"] = True
    if "kpt" in method:
        from promptcls import expand_label_words

        words = expand_label_words(lm, words, tokenizer, per_class=50)
        extra.update(word_refinement=0.5, word_calibration=True)
    fields = [c for c in train.columns if c != "label"]
    clf = PromptClassifier(lm, template, words, train_mode=mode, **common, **extra)
    if mode == "none":
        clf.fit(train[fields], train["label"].tolist()) if extra else clf.fit()
    elif experiment == "imbalance":  # dev accuracy on 16 + 4 examples would pick the all-negative epoch: no eval_set
        clf.fit(train[fields], train["label"].tolist())
    else:
        clf.fit(train[fields], train["label"].tolist(), eval_set=(dev[fields], dev["label"].tolist()))
    predicted = clf.predict(test[fields])
    dev_acc = float(np.mean(clf.predict(dev[fields]) == dev["label"].to_numpy()))
    out = {"dev": dev_acc, "test": float(np.mean(predicted == test["label"].to_numpy())), "n_test": len(test),
           "epoch": getattr(clf, "best_epoch_", None)}
    if experiment == "imbalance":
        out["test_macro_f1"] = float(f1_score(test["label"], predicted, average="macro"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "smollm2"], required=True)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--tasks", nargs="+", help="only these of each experiment's tasks")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (of each worker with --jobs)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--jobs", type=int, default=1, help="fits side by side in worker processes")
    parser.add_argument("--deadline-min", type=float, help="start no fit after this many minutes")
    parser.add_argument("--resume", action="store_true", help="keep the rows of the runs file and skip them")
    args = parser.parse_args(argv)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    folder, _ = model_folder(args.model)
    out = RESULTS / f"accuracy_tools_{args.model}"
    runs_path = Path(f"{out}_runs.csv")
    rows = pd.read_csv(runs_path).to_dict("records") if args.resume and runs_path.is_file() else []
    rows = [r for r in rows if not isinstance(r.get("error"), str)]
    done = {(r["experiment"], r["task"], r["seed"], r["method"]) for r in rows}
    started = time.time()
    todo = [(experiment, task, seed, method)
            for seed in args.seeds  # seed-major: a run cut short covers every method with its first seeds
            for experiment in args.experiments for task in EXPERIMENTS[experiment] if not args.tasks or task in args.tasks
            for method in METHODS[(args.model, experiment)] if (experiment, task, seed, method) not in done]
    run_and_record(run_row, [(args.model, *unit, args, folder) for unit in todo], rows=rows, runs_path=runs_path,
                   report=lambda rows: report(pd.DataFrame(rows), out, args, time.time() - started),
                   jobs=args.jobs, threads=args.threads, deadline_min=args.deadline_min)
    return 0


def run_row(model: str, experiment: str, task: str, seed: int, method: str, args, folder: str) -> dict:
    """One fit as a results row (``error`` set where it failed: the other fits run on)."""
    import traceback

    row = {"model": model, "experiment": experiment, "task": task, "seed": seed, "method": method}
    t0 = time.time()
    try:
        scores = run_one(model, experiment, task, seed, method, args, folder)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        return {**row, "error": f"{type(error).__name__}: {error}"[:300]}
    return {**row, **scores, "seconds": round(time.time() - t0, 1), "device": device_name(args.device)}


def report(runs: pd.DataFrame, out: Path, args, seconds: float) -> None:
    model = runs["model"].iloc[0]
    lines = [f"# The accuracy toolbox on {model}: K = 16, dev-chosen epochs", "",
             f"Command: `python benchmarks/accuracy_tools.py --model {model} --epochs {args.epochs} --max-test "
             f"{args.max_test}` (+ `--experiments`, `--seeds`, `--device`, `--jobs` as run; the last invocation: "
             f"{device_name(args.device)}, {args.threads} thread(s){f' x {args.jobs} workers' if args.jobs > 1 else ''}; "
             f"this invocation {seconds / 60:.1f} min). Mean +- standard deviation over the seeds run (n). The first "
             "method of each table is the baseline: the manual verbalizer without demonstrations. `dev`: the same "
             "measure on the 16-shot dev set (the regression's dev is Pearson's r); `*` marks the method with the "
             "best mean dev score, the one a user choosing on dev would take.", ""]
    measures = {"verbalizers": [("test", "accuracy %", 100)], "demonstrations": [("test", "accuracy %", 100)],
                "regression": [("test", "Pearson r", 1), ("test_spearman", "Spearman r", 1)],
                "imbalance": [("test_macro_f1", "macro-F1 %", 100), ("test", "accuracy %", 100)]}
    for experiment in dict.fromkeys(runs["experiment"]):
        mine = runs[runs["experiment"] == experiment]
        tasks = list(dict.fromkeys(mine["task"]))
        lines += [f"## {experiment}", "", "| method | " + " | ".join(f"{t} {label}" for t in tasks
                                                                     for _, label, _ in measures[experiment]) + " |",
                  "|---|" + "---|" * (len(tasks) * len(measures[experiment]))]
        for method in dict.fromkeys(mine["method"]):
            cells = []
            for t in tasks:
                sel = mine[(mine["method"] == method) & (mine["task"] == t)]
                others = mine[mine["task"] == t].groupby("method")["dev"].mean()
                star = "*" if len(others) > 1 and others.idxmax() == method else ""
                for col, _, scale in measures[experiment]:
                    v = scale * sel[col].astype(float)
                    fmt = ".1f" if scale == 100 else ".3f"
                    cells.append("-" if v.empty else f"{v.mean():{fmt}} +- {v.std(ddof=1) if len(v) > 1 else 0:{fmt}} "
                                 f"(n={len(v)}){star if col == measures[experiment][0][0] else ''}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    Path(f"{out}.md").write_text("\n".join(lines) + note(out))


if __name__ == "__main__":
    sys.exit(main())
