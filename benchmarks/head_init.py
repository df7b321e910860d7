"""Does a better start for a missing MLM head help? An experiment on all-MiniLM-L6-v2.

all-MiniLM-L6-v2 ships no MLM head, so ``AutoModelForMaskedLM`` draws the head's transform
(dense + layer norm) and output bias at random; only the output matrix is real (tied to the input
embeddings). This compares that random start with an "identity" start (dense = identity, zero
biases, unit layer norm), which makes the label-word logits the dot product of the normalised
mask state with the word embeddings: zero-shot, and after ``train_mode="head"`` training
(20 epochs, batch 8, best dev epoch, learning rate from a dev grid of 1e-3 and 1e-2).

Run (from the repository root; writes ``benchmarks/results/head_init.md``)::

    python benchmarks/head_init.py --tasks sst2 cr --seeds 13 21 --max-test 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import load_task  # noqa: E402
from fewshot import offline_encoder_path, quiet_transformers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEARNING_RATES = (1e-3, 1e-2)


def identity_head(mlm) -> None:
    """Dense = identity, zero biases, unit layer norm: logits = LayerNorm(gelu(h)) . embeddings."""
    import torch

    transform = mlm.cls.predictions.transform
    with torch.no_grad():
        transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
        transform.dense.bias.zero_()
        transform.LayerNorm.weight.fill_(1.0)
        transform.LayerNorm.bias.zero_()
        mlm.cls.predictions.bias.zero_()


def run(task: str, seed: int, init: str, max_test: int, path: str, tokenizer) -> dict[str, float]:
    import torch
    from transformers import AutoModelForMaskedLM

    from promptcls import PromptClassifier, load_template, load_verbalizer

    train, dev, test = load_task(task, seed, max_test=max_test)
    fields = [c for c in train.columns if c != "label"]

    def model():
        torch.manual_seed(seed)
        mlm = AutoModelForMaskedLM.from_pretrained(path)
        if init == "identity":
            identity_head(mlm)
        return mlm

    def make(**kw):
        return PromptClassifier(model(), load_template(task), load_verbalizer(task), tokenizer=tokenizer,
                                progress=False, random_state=seed, **kw)

    zero = make().fit()
    out = {"zero-shot": float(np.mean(zero.predict(test[fields]) == test["label"].to_numpy()))}
    best = None
    for lr in LEARNING_RATES:
        clf = make(train_mode="head", epochs=20, train_batch_size=8, learning_rate=lr)
        clf.fit(train[fields], train["label"].tolist(), eval_set=(dev[fields], dev["label"].tolist()))
        dev_acc = max(h["eval_accuracy"] for h in clf.history_)
        if best is None or dev_acc > best[0]:
            best = (dev_acc, clf)
    out["head"] = float(np.mean(best[1].predict(test[fields]) == test["label"].to_numpy()))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 21])
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS / "head_init.md"))
    args = parser.parse_args(argv)
    quiet_transformers()
    from transformers import AutoTokenizer

    path = offline_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = time.perf_counter()
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for init in ("random", "identity"):
                scores = run(task, seed, init, args.max_test, path, tokenizer)
                rows.append((task, seed, init, scores))
                print(task, seed, init, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    lines = [
        "# MLM head start for an encoder without one (all-MiniLM-L6-v2)",
        "",
        "Test accuracy (%) per task x seed; `head` trained 20 epochs, best dev epoch, learning rate "
        f"{' or '.join(f'{lr:g}' for lr in LEARNING_RATES)} chosen on dev. Test sets: at most {args.max_test} examples.",
        "",
        "| task | seed | random: zero-shot | identity: zero-shot | random: head | identity: head |",
        "|---|---|---|---|---|---|",
    ]
    by = {(t, s, i): sc for t, s, i, sc in rows}
    for task in args.tasks:
        for seed in args.seeds:
            r, i = by[(task, seed, "random")], by[(task, seed, "identity")]
            lines.append(f"| {task} | {seed} | {100 * r['zero-shot']:.1f} | {100 * i['zero-shot']:.1f} | "
                         f"{100 * r['head']:.1f} | {100 * i['head']:.1f} |")
    means = {(i, m): 100 * np.mean([sc[m] for _, _, ii, sc in rows if ii == i]) for i in ("random", "identity")
             for m in ("zero-shot", "head")}
    lines += [
        f"| mean | | {means['random', 'zero-shot']:.1f} | {means['identity', 'zero-shot']:.1f} | "
        f"{means['random', 'head']:.1f} | {means['identity', 'head']:.1f} |",
        "",
        f"Wall time {(time.perf_counter() - start) / 60:.1f} min. Reproduce: "
        f"`python benchmarks/head_init.py --tasks {' '.join(args.tasks)} --seeds {' '.join(map(str, args.seeds))} "
        f"--max-test {args.max_test}`",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
