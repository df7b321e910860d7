"""AdamW on CPU: torch's default (foreach) step against the fused kernel that promptcls uses.

What is measured, side by side in one process with one torch thread, alternating the two:

``step``  one ``optimizer.step()`` over every parameter of all-MiniLM-L6-v2 with its MLM head
          (22.7 M parameters, as ``train_mode="full"`` trains them), gradients set at random;
          ``--steps`` steps per variant, median seconds.
``fit``   ``PromptClassifier(train_mode="full", epochs=E).fit`` on the LM-BFF SST-2 split 16-13
          (32 texts, 4 steps per epoch), ``--repeats`` fits per variant, median seconds. The
          foreach fits run with ``torch.optim.AdamW`` patched to refuse ``fused=True``, which is the
          fallback path of ``promptcls.training._optimizer``. The largest difference between the
          weights the two variants train says whether they compute the same update.

Run (from the repository root)::

    python benchmarks/optimizer_speed.py

Writes ``benchmarks/results/optimizer_speed.md`` and ``optimizer_speed.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewshot  # noqa: E402
from data import load_task  # noqa: E402

VARIANTS = ("foreach", "fused")


def step_times(model: torch.nn.Module, steps: int) -> dict[str, list[float]]:
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"foreach": torch.optim.AdamW(params, lr=1e-5), "fused": torch.optim.AdamW(params, lr=1e-5, fused=True)}
    for optimizer in optimizers.values():
        optimizer.step()  # allocate the state
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(steps):
        for variant in VARIANTS:
            start = time.perf_counter()
            optimizers[variant].step()
            times[variant].append(time.perf_counter() - start)
    return times


def fit_once(variant: str, mlm, tokenizer, texts, labels, epochs: int):
    from promptcls import PromptClassifier

    plain = torch.optim.AdamW

    def foreach_only(groups, **kwargs):
        if kwargs.pop("fused", False):
            raise RuntimeError("fused AdamW refused for this measurement")
        return plain(groups, **kwargs)

    clf = PromptClassifier(mlm, "{text} It was [MASK].", {"0": ["terrible"], "1": ["great"]}, tokenizer=tokenizer,
                           train_mode="full", epochs=epochs, learning_rate=1e-4, random_state=0, progress=False)
    if variant == "foreach":
        torch.optim.AdamW = foreach_only
    try:
        start = time.perf_counter()
        clf.fit(texts, labels)
        seconds = time.perf_counter() - start
    finally:
        torch.optim.AdamW = plain
    return seconds, {n: p.detach().clone() for n, p in clf.model_.named_parameters()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out-dir", default=str(fewshot.RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fewshot.quiet_transformers()
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = fewshot.offline_encoder_path()
    mlm = fewshot.seeded_load(lambda: AutoModelForMaskedLM.from_pretrained(path), 0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in mlm.parameters())
    steps = step_times(mlm, args.steps)
    for p in mlm.parameters():
        p.grad = None

    train = load_task("sst2", 13, k=16, max_test=1)[0]
    texts, labels = train["text"].tolist(), [str(v) for v in train["label"]]
    fits: dict[str, list[float]] = {v: [] for v in VARIANTS}
    weights = {}
    fit_once("fused", mlm, tokenizer, texts, labels, 1)  # warm-up: imports, first allocations
    for _ in range(args.repeats):
        for variant in VARIANTS:
            seconds, weights[variant] = fit_once(variant, mlm, tokenizer, texts, labels, args.epochs)
            fits[variant].append(seconds)
    difference = max(float((weights["fused"][n] - weights["foreach"][n]).abs().max()) for n in weights["fused"])
    start = dict(mlm.named_parameters())  # the fits train copies; mlm keeps the starting weights
    moved = max(float((weights["fused"]["mlm." + n] - p.detach()).abs().max()) for n, p in start.items())

    median = {kind: {v: statistics.median(times[v]) for v in VARIANTS} for kind, times in (("step", steps), ("fit", fits))}
    rows = [
        f"| one AdamW step, {n_params / 1e6:.1f} M parameters | {median['step']['foreach']:.4f} | "
        f"{median['step']['fused']:.4f} | {median['step']['foreach'] / median['step']['fused']:.1f}x | {args.steps} |",
        f"| `fit`, train_mode=\"full\", {args.epochs} epochs ({args.epochs * 4} steps) | {median['fit']['foreach']:.2f} | "
        f"{median['fit']['fused']:.2f} | {median['fit']['foreach'] / median['fit']['fused']:.2f}x | {args.repeats} |",
    ]
    out = [
        "# AdamW on CPU: foreach (torch's default) against fused (promptcls)",
        "",
        "all-MiniLM-L6-v2 with its (randomly initialised) MLM head, one torch thread, the two variants alternating "
        "in one process. Seconds: medians over R.",
        "",
        "| what | foreach s | fused s | foreach / fused | R |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "- the fit is on the 32 texts of the LM-BFF SST-2 split 16-13, batch 8, learning rate 1e-4, `random_state=0`",
        f"- the weights the two variants train differ by at most {difference:.2e} (the largest weight change in a fit "
        f"is {moved:.2e}): the same update, computed in a different order",
        f"- CPU: {fewshot.cpu_name()}; torch {torch.__version__}; load average (1 min) at the end "
        f"{os.getloadavg()[0]:.1f}",
        "",
        *fewshot.reproduce("python benchmarks/optimizer_speed.py " + " ".join(sys.argv[1:])),
    ]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "optimizer_speed.md").write_text("\n".join(out))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, kind, unit in zip(axes, ("step", "fit"), ("s per step", "s per fit"), strict=True):
        ax.bar(VARIANTS, [median[kind][v] for v in VARIANTS], color=["#999999", "#1f77b4"])
        ax.set_title("one AdamW step" if kind == "step" else f"full-mode fit, {args.epochs} epochs")
        ax.set_ylabel(unit)
    fig.suptitle("AdamW on CPU, all-MiniLM-L6-v2 (median)")
    fig.tight_layout()
    fig.savefig(out_dir / "optimizer_speed.png", dpi=120)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
