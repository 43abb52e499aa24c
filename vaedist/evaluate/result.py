"""`EvalResult`: what one evaluation hands on (to vaedist.tracking), apart from the engine that computes it."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "val/mse", "val/psnr", "val/ssim", "val/pcc", "val/kl" (+ anything else "val/...")
    kl_per_dim: torch.Tensor  # [latent] mean KL per latent dimension over the split (all ranks)
    mu: torch.Tensor  # [M, latent] latent means of the split, flattened (all ranks, CPU, float32), M bounded by config
    labels: torch.Tensor | None  # [M] class index per row of mu, None for unlabelled datasets
    thumbnails: torch.Tensor  # [T, 3, H, W] uint8 images of the first T rows of mu (T <= logging.table_rows)
    originals: torch.Tensor  # [K, 3, H, W] float in [0, 1]: the fixed validation images (same every time)
    reconstructions: torch.Tensor  # [K, 3, H, W] float in [0, 1]: their reconstructions (decoded from mu)
    # [P, T, 3, H, W] float in [0, 1]: strip i decodes T points from mu of validation image 2i to that of 2i+1
    interpolations: torch.Tensor | None = None
