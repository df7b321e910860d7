"""The default training settings, in one torch-free place: the Python API, the CLI and the demo read them.

They are the settings the few-shot benchmark's dev pilot chose (``benchmarks/results/fewshot_lr_pilot_runs.csv``,
the majority choice per method over SST-2, CR and SST-5 at K = 16, 20 epochs, best dev epoch kept).
"""

from __future__ import annotations

__all__ = ["EPOCHS", "LEARNING_RATES", "TRAIN_BATCH_SIZE"]

EPOCHS = 20
TRAIN_BATCH_SIZE = 8
# (model or head learning rate, prompt learning rate) per train_mode
LEARNING_RATES: dict[str, tuple[float | None, float | None]] = {
    "head": (1e-2, None),
    "prompt": (None, 3e-2),
    "head+prompt": (1e-2, 3e-3),
    "full": (1e-4, 3e-3),
}
