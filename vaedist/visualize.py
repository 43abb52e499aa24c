"""Pictures of a VAE at one evaluation: image grids, a 2-D projection of the latent means, KL per dimension.

Pure functions from tensors to images (uint8 HxWx3 numpy arrays): no W&B, no files. `vaedist.tracking`
decides where they go (PNG in the run dir, W&B), and `vaedist.compare` reads the PNGs back.
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display on training nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

# A latent dimension counts as "active" when its mean KL over the split exceeds this (nats). This is the
# KL form of Burda et al.'s (2016) activity criterion used by most VAE papers; 0.01 is the common threshold.
ACTIVE_UNIT_KL = 0.01

# Beyond this many classes a legend is unreadable (Food-101 has 101): a colour bar of class indices instead.
MAX_LEGEND_CLASSES = 20


def to_uint8_hwc(grid: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return grid.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 16) -> np.ndarray:
    """Rows of originals, each directly above the row of their reconstructions.

    originals, reconstructions: [K, 3, H, W] float in [0, 1] -> [H', W', 3] uint8.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} differ")
    originals, reconstructions = originals.cpu(), reconstructions.cpu()  # callers may pass device tensors
    count = originals.shape[0]
    per_row = max(1, min(per_row, count))
    rows = []
    for start in range(0, count, per_row):
        chunk_o = originals[start : start + per_row]
        chunk_r = reconstructions[start : start + per_row]
        pad = per_row - chunk_o.shape[0]
        if pad:  # keep the last pair of rows aligned with the others
            blank = torch.ones((pad, *chunk_o.shape[1:]), dtype=chunk_o.dtype)
            chunk_o, chunk_r = torch.cat([chunk_o, blank]), torch.cat([chunk_r, blank])
        rows += [chunk_o, chunk_r]
    grid = make_grid(torch.cat(rows).float().cpu(), nrow=per_row, padding=2, pad_value=1.0)
    return to_uint8_hwc(grid)


def interpolation_grid(strips: torch.Tensor) -> np.ndarray:
    """[P, T, 3, H, W] float in [0, 1] -> one row per pair, from the first image's reconstruction (left) to the
    second's (right): [H', W', 3] uint8."""
    pairs, steps = strips.shape[:2]
    return to_uint8_hwc(make_grid(strips.flatten(0, 1).float().cpu(), nrow=steps, padding=2, pad_value=1.0))


def sample_grid(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] float in [0, 1] -> a near-square grid [H', W', 3] uint8 (25 samples: 5 x 5, like the seed)."""
    per_row = max(1, math.ceil(math.sqrt(images.shape[0])))
    return to_uint8_hwc(make_grid(images.float().cpu(), nrow=per_row, padding=2, pad_value=1.0))


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project [M, D] points on their first two principal axes.

    Returns (coords [M, 2], explained variance ratio [2]). Signs are fixed so that the largest-magnitude
    loading of each axis is positive: the picture does not flip between evaluations for no reason.
    """
    x = points.detach().cpu().double()
    x = x - x.mean(dim=0, keepdim=True)
    # Full SVD of the centred data: exact, and cheap for M <= a few thousand, D = 128.
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]  # [2, D]
    if axes.shape[0] < 2:  # a single latent dimension or a single point: pad with a zero axis
        axes = torch.cat([axes, torch.zeros(2 - axes.shape[0], x.shape[1], dtype=x.dtype)])
        s = torch.cat([s, torch.zeros(2 - s.shape[0], dtype=s.dtype)])
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    axes = axes * signs[:, None]
    variance = s**2
    ratio = variance[:2] / variance.sum().clamp_min(1e-12)
    return (x @ axes.T).float(), ratio.float()


def _figure_to_array(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def latent_scatter(
    mu: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None, title: str = ""
) -> np.ndarray:
    """PCA scatter of latent means [M, D], coloured by class when labels [M] are given -> [H, W, 3] uint8."""
    coords, ratio = pca_2d(mu)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    xs, ys = coords[:, 0].numpy(), coords[:, 1].numpy()
    if labels is None:
        ax.scatter(xs, ys, s=12, alpha=0.6, color="tab:blue", linewidths=0)
    else:
        lab = labels.cpu().numpy()
        present = np.unique(lab)
        n_classes = len(class_names) if class_names else int(lab.max()) + 1
        cmap = plt.get_cmap("tab20" if n_classes <= 20 else "gist_ncar", max(n_classes, 1))
        if len(present) <= MAX_LEGEND_CLASSES:
            for c in present:
                keep = lab == c
                name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
                ax.scatter(xs[keep], ys[keep], s=14, alpha=0.7, color=cmap(int(c)), label=name, linewidths=0)
            ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            points = ax.scatter(xs, ys, s=12, alpha=0.7, c=lab, cmap=cmap, vmin=0, vmax=n_classes - 1, linewidths=0)
            fig.colorbar(points, ax=ax, label="class index (manifest order)")
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(title or f"Latent means, PCA ({mu.shape[0]} validation images)", fontsize=10)
    return _figure_to_array(fig)


def kl_per_dim_plot(kl_per_dim: torch.Tensor, title: str = "") -> np.ndarray:
    """Bar chart of the mean KL of each latent dimension, sorted, with the active-unit threshold -> uint8 image."""
    kl = kl_per_dim.detach().double().cpu()
    ordered = torch.sort(kl, descending=True).values.numpy()
    active = active_units(kl)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(np.arange(len(ordered)), ordered, width=1.0, color="tab:blue")
    ax.axhline(ACTIVE_UNIT_KL, color="tab:red", linewidth=1, linestyle="--", label=f"active: KL > {ACTIVE_UNIT_KL}")
    if ordered.size and ordered.max() > 0:
        ax.set_yscale("symlog", linthresh=ACTIVE_UNIT_KL)
    ax.set_xlabel("latent dimensions, sorted by KL")
    ax.set_ylabel("mean KL (nats)")
    ax.set_title(title or f"KL per latent dimension: {active}/{len(ordered)} active", fontsize=10)
    ax.legend(fontsize=8)
    return _figure_to_array(fig)


def active_units(kl_per_dim: torch.Tensor) -> int:
    """Latent dimensions whose mean KL exceeds ACTIVE_UNIT_KL nats."""
    return int((kl_per_dim > ACTIVE_UNIT_KL).sum())
