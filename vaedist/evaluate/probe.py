"""What the latent space holds about the classes, as numbers: a linear probe and k-NN accuracy (scikit-learn).

    loader = build_probe_loader(cfg, accelerator, batch_size)   # a bounded, seeded subset of the train split
    scores = probe_scores(train_mu, train_labels, val_mu, val_labels, cfg.probe)
    # {"val/probe_acc": 0.61, "val/knn_acc": 0.55, "val/probe_chance": 0.0099}

Both are fitted on the latent means of `probe.train_samples` training images (evaluation transform: no flip)
and scored on the first `probe.val_samples` validation images:
  val/probe_acc     logistic regression on standardised means (scikit-learn's lbfgs, multinomial)
  val/knn_acc       majority vote of the `probe.knn_k` nearest training means (Euclidean, the latent's own geometry)
  val/probe_chance  the accuracy of always answering the training subset's most frequent class
                    (scikit-learn's DummyClassifier): 1/C on a balanced dataset (Food-101: 1/101 = 0.0099)
A latent space that holds nothing about the classes scores the chance level; the tests check both ends.
"""
from __future__ import annotations

import numpy as np
import torch

from vaedist.config import Config, ProbeConfig
from vaedist.data import Loader, build_loader
from vaedist.shard.format import load_manifest

PROBE_KEYS = ("val/probe_acc", "val/knn_acc", "val/probe_chance")


def probe_subset(num_samples: int, count: int, seed: int) -> np.ndarray:
    """A seeded random choice of `count` of the split's `num_samples` indices, in the split's order."""
    if count >= num_samples:
        return np.arange(num_samples, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 0x9B0BE]).choice(num_samples, size=count, replace=False)).astype(np.int64)


def build_probe_loader(cfg: Config, accelerator, batch_size: int, bad_samples=None) -> Loader | None:
    """The probe's training images (an evaluation loader over a subset of data.train_split), or None when the
    dataset has no labels, the probe is off, or there is no training split. `bad_samples`: the training
    loader's record of the split's bad samples, shared (each is reported once)."""
    if cfg.probe.train_samples == 0:
        return None
    manifest = load_manifest(cfg.data.shards)
    split = manifest.splits.get(cfg.data.train_split)
    if not manifest.labelled or split is None or split.samples == 0:
        return None
    subset = probe_subset(split.samples, cfg.probe.train_samples, cfg.data.seed)
    return build_loader(cfg.data, cfg.data.train_split, train=False, batch_size=batch_size, accelerator=accelerator,
                        samples=subset, bad_samples=bad_samples)


def probe_scores(train_mu: torch.Tensor, train_labels: torch.Tensor, val_mu: torch.Tensor, val_labels: torch.Tensor,
                 cfg: ProbeConfig) -> dict[str, float]:
    """train_mu [N, D], train_labels [N], val_mu [M, D], val_labels [M] -> the three PROBE_KEYS.

    Rows that are not finite (an fp16 overflow) are left out; with fewer than two classes to learn from, or
    nothing to score, the result is empty (no number is better than a meaningless one).
    """
    # scikit-learn costs a second to import: only evaluations of labelled datasets need it
    from sklearn.dummy import DummyClassifier  # (sklearn: labelled datasets only)
    from sklearn.linear_model import LogisticRegression  # (sklearn: labelled datasets only)
    from sklearn.neighbors import KNeighborsClassifier  # (sklearn: labelled datasets only)
    from sklearn.pipeline import make_pipeline  # (sklearn: labelled datasets only)
    from sklearn.preprocessing import StandardScaler  # (sklearn: labelled datasets only)

    x, y = _finite(train_mu, train_labels)
    vx, vy = _finite(val_mu, val_labels)
    if len(np.unique(y)) < 2 or len(vy) == 0:
        return {}
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=cfg.max_iter))
    knn = KNeighborsClassifier(n_neighbors=min(cfg.knn_k, len(y)))
    chance = DummyClassifier(strategy="most_frequent")
    return {key: float(model.fit(x, y).score(vx, vy)) for key, model in zip(PROBE_KEYS, (linear, knn, chance))}


def _finite(mu: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = mu.detach().float().flatten(1).cpu().numpy().astype(np.float64)
    y = labels.detach().cpu().numpy()
    keep = np.isfinite(x).all(axis=1) & (y >= 0)
    return x[keep], y[keep]
