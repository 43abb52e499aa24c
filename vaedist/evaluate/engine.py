"""The evaluation engine: the seed's metrics (SPEC.md) over a whole split with torchmetrics, on every rank.

    result = evaluate(model, val_loader, accelerator, cfg)      # collective; an EvalResult

Metrics are computed on images mapped back to [0, 1]; reconstructions are decoded from the latent means:
  val/mse   mean squared error per value          val/psnr  10 log10(1 / mse) over the whole split
  val/ssim  Gaussian window 11, sigma 1.5, (0.01)^2, (0.03)^2, data range 1, mean over images
  val/pcc   Pearson correlation over all values   val/kl    KL(q(z|x) || N(0, I)) per image (summed over z)

Across ranks: the evaluation loader deals the split to the ranks without duplicates (a rank's last batch
may be short or empty), so each rank updates torchmetrics with its own samples and torchmetrics merges
the states of all ranks at `compute()`.
"""
from __future__ import annotations

import torch
import torchmetrics
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef
from tqdm.auto import tqdm

from vaedist.config import Config
from vaedist.evaluate.result import EvalResult
from vaedist.losses import per_dim_kl


class PerDimMean(torchmetrics.Metric):
    """Mean of [N, D] rows over all ranks' samples -> [D] (KL per latent dimension)."""

    def __init__(self, dims: int):
        super().__init__()
        self.add_state("total", default=torch.zeros(dims, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rows: torch.Tensor) -> None:
        self.total += rows.double().sum(0)
        self.count += rows.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class SplitMetrics:
    """The seed's metrics, accumulated over a split; `compute` merges all ranks."""

    def __init__(self, latent_dim: int, device: torch.device):
        self.metrics = torchmetrics.MetricCollection(
            {
                "mse": MeanSquaredError(),
                "psnr": PeakSignalNoiseRatio(data_range=1.0),
                "ssim": StructuralSimilarityIndexMeasure(gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03),
            }
        ).to(device)
        self.pcc = PearsonCorrCoef().to(device)
        self.kl = torchmetrics.MeanMetric().to(device)
        self.kl_per_dim = PerDimMean(latent_dim).to(device)

    def update(self, x01: torch.Tensor, rec01: torch.Tensor, kl_rows: torch.Tensor) -> None:
        """x01, rec01: [n, 3, S, S] in [0, 1]; kl_rows: [n, latent]."""
        if x01.shape[0] == 0:  # a rank's share of the split can end with an empty batch
            return
        # torchmetrics' MSE/PSNR flatten with .view(-1), which a channels_last tensor refuses
        x01, rec01 = x01.contiguous(), rec01.contiguous()
        self.metrics.update(rec01, x01)
        self.pcc.update(rec01.flatten(), x01.flatten())  # Pearson over all values, like the seed
        self.kl.update(kl_rows.sum(1))
        self.kl_per_dim.update(kl_rows)

    def compute(self) -> tuple[dict[str, float], torch.Tensor]:
        values = {f"val/{k}": float(v) for k, v in self.metrics.compute().items()}
        values["val/pcc"] = float(self.pcc.compute())
        values["val/kl"] = float(self.kl.compute())
        # reshape: torchmetrics returns a one-element result as a 0-d tensor (model.latent_dim=1)
        return values, self.kl_per_dim.compute().reshape(-1).cpu()


class FirstRows:
    """Keeps the first `count` rows this rank yields; `gather` restores the split's order across ranks.

    The evaluation loader gives rank r the samples r, r+W, r+2W, ...: keeping ceil(count/W) rows per rank and
    interleaving them gives exactly the split's first `count` samples.
    """

    def __init__(self, count: int, world: int):
        self.count, self.world = count, world
        self.per_rank = -(-count // world) if count > 0 else 0
        self.parts: list[torch.Tensor] = []
        self.kept = 0

    def add(self, rows: torch.Tensor) -> None:
        take = min(self.per_rank - self.kept, rows.shape[0])
        if take > 0:
            self.parts.append(rows[:take])
            self.kept += take

    def gather(self, accelerator, like: torch.Tensor, total: int) -> torch.Tensor:
        """Collective. `like`: a tensor of one row's shape/dtype; `total`: samples in the split."""
        shape = (self.per_rank, *like.shape)
        mine = torch.zeros(shape, dtype=like.dtype, device=accelerator.device)
        if self.parts:
            rows = torch.cat(self.parts).to(accelerator.device)
            mine[: rows.shape[0]] = rows
        everyone = accelerator.gather(mine.unsqueeze(0)).view(self.world, *shape)  # [W, per_rank, ...]
        interleaved = everyone.transpose(0, 1).reshape(self.world * self.per_rank, *like.shape)  # sample i*W + r
        return interleaved[: min(self.count, total)].cpu()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator, cfg: Config) -> EvalResult:
    """Collective: every process calls it with its share of the split (the evaluation loader's)."""
    vae = accelerator.unwrap_model(model, keep_torch_compile=False)  # the plain VAE: its own encode/decode
    was_training = vae.training
    vae.eval()
    metrics = SplitMetrics(vae.latent_dim, accelerator.device)
    world, log = accelerator.num_processes, cfg.logging
    keep_mu = FirstRows(max(log.projection_points, log.table_rows), world)
    keep_labels = FirstRows(keep_mu.count, world)
    keep_thumbs = FirstRows(log.table_rows, world)
    keep_pairs = FirstRows(log.num_reconstructions, world)
    seen = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    labelled = False
    bar = tqdm(total=len(loader), desc="evaluate", unit="batch", disable=not accelerator.is_main_process, dynamic_ncols=True, leave=False)
    for images, labels in loader:  # images [n, 3, S, S] in [-1, 1]; labels [n] or None
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            mu, logvar = vae.encode(images)
            rec = vae.decode(mu)
        x01 = (images.float() + 1) / 2
        rec01 = ((rec.float() + 1) / 2).clamp(0, 1)
        metrics.update(x01, rec01, per_dim_kl(mu, logvar))
        keep_mu.add(mu.float().flatten(1))  # a spatial latent [n, z, h, w] is projected as z*h*w numbers
        labelled = labelled or labels is not None
        keep_labels.add(labels if labels is not None else torch.full((images.shape[0],), -1, dtype=torch.int64, device=images.device))
        keep_thumbs.add((x01 * 255).round().to(torch.uint8))
        keep_pairs.add(torch.stack([x01, rec01], 1))  # [n, 2, 3, S, S]
        seen += images.shape[0]
        bar.update(1)
        if accelerator.is_main_process:  # this rank's rate times the ranks: roughly the split's images/s
            bar.set_postfix(img_s=f"{images.shape[0] * world * bar.format_dict['rate'] if bar.format_dict['rate'] else 0:.0f}")
    bar.close()
    values, kl_per_dim = metrics.compute()
    total = int(accelerator.reduce(seen, "sum").item())
    values["val/images"] = float(total)
    size = cfg.data.size
    pairs = keep_pairs.gather(accelerator, torch.zeros(2, 3, size, size, device=accelerator.device), total)
    labels_kept = keep_labels.gather(accelerator, torch.zeros((), dtype=torch.int64), total)
    vae.train(was_training)
    return EvalResult(
        metrics=values,
        kl_per_dim=kl_per_dim,
        mu=keep_mu.gather(accelerator, torch.zeros(vae.latent_dim), total),
        labels=labels_kept if labelled else None,
        thumbnails=keep_thumbs.gather(accelerator, torch.zeros(3, size, size, dtype=torch.uint8), total),
        originals=pairs[:, 0],
        reconstructions=pairs[:, 1],
    )
