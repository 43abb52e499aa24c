"""Reconstruction metrics with one stated definition each, in torch (GPU), reduced across ranks.

Per image i (x the original, y its reconstruction, both [3, S, S] in [0, 1]; n = 3 * S * S values):
    mse_i  = mean over the n values of (x - y)^2
    psnr_i = 10 * log10(1 / mse_i)                      data range 1; mse_i floored at 1e-10 (at most 100 dB)
    ssim_i = scikit-image's structural_similarity(x_i, y_i, channel_axis=0, data_range=1,
             gaussian_weights=True, sigma=1.5, use_sample_covariance=False) — Wang et al. 2004: Gaussian
             window of 11 taps (sigma 1.5, truncated at 3.5 sigma), K1 0.01, K2 0.03, population
             covariances; the SSIM map averaged over its valid interior only (the 5-pixel border, where the
             window would leave the image, is left out) and over the channels
    pcc_i  = Pearson correlation of the n values of x_i with the n values of y_i
Over a split each is reported as the mean over images with its standard deviation over images (ddof=0),
the way the SD-VAE and LDM tables give "PSNR 24.1 ± 3.9". An image whose original or reconstruction is
exactly constant (a flat grey original) has no PCC; it is left out of the PCC mean and standard deviation.

Why our own code instead of a library's metric object: torchmetrics' SSIM changed definition between
releases (1.9 averages a reflect-padded map, border included: -0.044 to +0.021 from scikit-image's value
per 64x64 photograph in tests/test_metrics.py's pairs), so the number depended on the installed version. Here the definition is this
file, and tests/test_metrics.py holds it to scikit-image (within 1e-4) and numpy on real photographs.
torchmetrics serves only as the reducer: `Metric` states summed over ranks at `compute()`.

How they relate to the seed's (`train_utils.py`): the seed computes PCC over all values of a whole batch
(`PearsonCorrelation.forward`), SSIM with zero padding and the whole map averaged
(`StructuralSimilarity.forward`: `F.conv2d(img, window, padding=pad)`, `ssim_score.mean()`), and MSE with
`nn.MSELoss` on the [-1, 1] images during training (4x ours); it reports no PSNR. README, "Reproducing
the seed", gives the measured differences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's value with gaussian_weights=True: an 11-tap window at sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MSE_FLOOR = 1e-10  # PSNR of an exact reconstruction: 100 dB instead of infinity
NAMES = ("mse", "psnr", "ssim", "pcc")


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """[2r + 1] float64 weights summing to 1, r = int(truncate * sigma + 0.5): scipy.ndimage's Gaussian kernel,
    which scikit-image's SSIM filters with (r = 5 at sigma 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y: [N, C, H, W] in [0, 1] (H, W >= 11) -> [N] float32: the definition in the module docstring.

    Filtering only the valid positions ("valid" convolution) gives exactly the interior of scikit-image's
    reflect-filtered maps, which is all its mean keeps; so no padding mode enters the definition.
    """
    n, c, h, w = x.shape
    window = gaussian_window()
    if min(h, w) < window.numel():
        raise ValueError(f"SSIM needs images of at least {window.numel()} x {window.numel()} pixels, got {h} x {w}")
    x, y = x.float(), y.float()
    # Variances as E[x^2] - E[x]^2 cancel badly in float32 where a patch is flat; taking the moments of x and y
    # minus their channel means (variances do not change, the means are added back) keeps the result within
    # 1e-6 of scikit-image's float64 value on photographs (3e-5 without, on an 11x11 image).
    x_offset, y_offset = x.mean(dim=(2, 3), keepdim=True), y.mean(dim=(2, 3), keepdim=True)
    x, y = x - x_offset, y - y_offset
    # The five local moments of every channel at once: one separable depthwise filter over [N, 5C, H, W].
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    taps = window.to(device=x.device, dtype=torch.float32)
    channels = stack.shape[1]
    stack = F.conv2d(stack, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    stack = F.conv2d(stack, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    ux, uy, uxx, uyy, uxy = stack.split(c, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    ux, uy = ux + x_offset, uy + y_offset
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.double().mean(dim=(1, 2, 3)).float()


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N, ...] x2 -> [N] float64: mean squared error over each image's values."""
    return (x.double() - y.double()).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """[N] per-image MSE (data range 1) -> [N] PSNR in dB."""
    return 10 * torch.log10(1 / mse.clamp(min=MSE_FLOOR))


def pcc_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N, ...] x2 -> [N] float64 Pearson correlation of each image's values; NaN where either is constant."""
    xc = x.double().flatten(1)
    yc = y.double().flatten(1)
    xc = xc - xc.mean(1, keepdim=True)
    yc = yc - yc.mean(1, keepdim=True)
    denominator = (xc.pow(2).sum(1) * yc.pow(2).sum(1)).sqrt()
    return torch.where(denominator > 0, (xc * yc).sum(1) / denominator, torch.full_like(denominator, float("nan")))


class ReconstructionMetrics(torchmetrics.Metric):
    """Per-image MSE, PSNR, SSIM and PCC over a split, on every rank; `compute()` sums the states of all
    ranks and returns {"mse": mean, "mse_std": std, "psnr": ..., "psnr_std": ..., ...}.

    States are float64 sums of the values, of their squares, and counts, so the mean and the standard
    deviation over the whole split come out of one all-reduce whatever the split across ranks.
    """

    full_state_update = False

    def __init__(self, ssim: bool = True):
        super().__init__()
        self.names = NAMES if ssim else tuple(name for name in NAMES if name != "ssim")
        for name in self.names:
            self.add_state(f"{name}_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_sumsq", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x01: torch.Tensor, rec01: torch.Tensor) -> None:
        """x01 (originals), rec01 (reconstructions): [n, 3, S, S] in [0, 1]."""
        mse = mse_per_image(x01, rec01)
        values = {"mse": mse, "psnr": psnr_from_mse(mse), "pcc": pcc_per_image(x01, rec01)}
        if "ssim" in self.names:
            values["ssim"] = ssim_per_image(x01, rec01).double()
        for name, value in values.items():
            value = value[~value.isnan()]
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + value.sum())
            setattr(self, f"{name}_sumsq", getattr(self, f"{name}_sumsq") + value.pow(2).sum())
            setattr(self, f"{name}_count", getattr(self, f"{name}_count") + value.numel())

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.names:
            count = getattr(self, f"{name}_count")
            mean = getattr(self, f"{name}_sum") / count.clamp(min=1)
            variance = (getattr(self, f"{name}_sumsq") / count.clamp(min=1) - mean.pow(2)).clamp(min=0)
            out[name] = float(mean) if count > 0 else float("nan")
            out[f"{name}_std"] = float(variance.sqrt()) if count > 0 else float("nan")
        return out
