"""Which way is better for each scalar vaedist logs: the one home of that fact.

Used by the Tracker (W&B `define_metric` summaries, so that W&B's run table shows each run's best value),
by `vaedist.compare` (ranking, the best cell of a column) and by `vaedist.sweep` (a sweep's best point).
Words as in W&B sweep files (`metric.goal: minimize | maximize`). Standard library only: compare and the
sweep runner import it without torch.
"""
from __future__ import annotations

from typing import Literal

Goal = Literal["minimize", "maximize"]

# The reconstruction-quality metrics of every evaluation. W&B keeps their best value as the run summary.
# Not listed, on purpose: val/kl (a low KL is a collapsed posterior as much as a good one), val/active_units
# (a count that is a property of the model, not a score), val/images: their summary stays the last value.
EVALUATION_GOALS: dict[str, Goal] = {
    "val/mse": "minimize",
    "val/psnr": "maximize",
    "val/ssim": "maximize",
    "val/pcc": "maximize",
    "val/probe_acc": "maximize",  # labelled datasets only (vaedist.evaluate.probe)
    "val/knn_acc": "maximize",
}

# By the last part of a key, for everything else (train/*, metrics of other splits: train/mse from
# `vaedist.evaluate --split train`, ...).
_BY_NAME: dict[str, Goal] = {
    "mse": "minimize",
    "psnr": "maximize",
    "ssim": "maximize",
    "pcc": "maximize",
    "loss_encoder": "minimize",
    "loss_decoder": "minimize",
    "images_per_s": "maximize",
    "data_wait": "minimize",
}


def goal(key: str) -> Goal | None:
    """'minimize', 'maximize', or None where neither is better (KL, learning rates, counts)."""
    if key in EVALUATION_GOALS:
        return EVALUATION_GOALS[key]
    return _BY_NAME.get(key.rsplit("/", 1)[-1])


def best(values: list[float], direction: Goal) -> float:
    return min(values) if direction == "minimize" else max(values)
