"""The evaluation engine: the split's metrics (definitions in `vaedist.metrics`) over a whole split, on every rank.

    result = evaluate(model, val_loader, accelerator, cfg, probe_loader)   # collective; an EvalResult

Metrics are computed on images mapped back to [0, 1], per image, then averaged over the split (each with
its standard deviation over images, `val/<name>_std`): val/mse, val/psnr, val/ssim (scikit-image's
standard SSIM), val/pcc (Pearson correlation of each image's values), and val/kl, KL(q(z|x) || N(0, I))
per image (summed over z). Reconstructions decode the latent means (`train.eval_latent=mean`), or, like
the seed, a sampled z = mu + sigma * eps (`sample`; eps from a generator seeded by train.seed and the rank,
so the same weights give the same numbers and training's random stream is left alone).
On labelled datasets, given `probe_loader` (probe.build_probe_loader): val/probe_acc, val/knn_acc and their
chance level val/probe_chance (probe.py). Interpolation strips decode the line between the latent means of
validation images 2i and 2i+1 (logging.interpolation_pairs, logging.interpolation_steps).

Across ranks: the evaluation loader deals the split to the ranks without duplicates (a rank's last batch
may be short or empty), so each rank updates torchmetrics states with its own samples and torchmetrics
sums the states of all ranks at `compute()`.
"""
from __future__ import annotations

import math

import torch
import torchmetrics
from tqdm.auto import tqdm

from vaedist.config import Config
from vaedist.evaluate.probe import probe_scores
from vaedist.evaluate.result import EvalResult
from vaedist.losses import per_dim_kl
from vaedist.metrics import ReconstructionMetrics, gaussian_window
from vaedist.models.seed import reparameterise


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
    """The split's metrics (definitions: `vaedist.metrics`), accumulated on every rank; `compute` merges all ranks."""

    def __init__(self, latent_dim: int, device: torch.device, image_size: int = 64):
        # SSIM's 11-pixel window needs images at least that large (data.size 8 has no SSIM)
        self.reconstruction = ReconstructionMetrics(ssim=image_size >= gaussian_window().numel()).to(device)
        self.kl = torchmetrics.MeanMetric().to(device)
        self.kl_per_dim = PerDimMean(latent_dim).to(device)

    def update(self, x01: torch.Tensor, rec01: torch.Tensor, kl_rows: torch.Tensor) -> None:
        """x01, rec01: [n, 3, S, S] in [0, 1]; kl_rows: [n, latent]."""
        if x01.shape[0] == 0:  # a rank's share of the split can end with an empty batch
            return
        self.reconstruction.update(x01, rec01)
        self.kl.update(kl_rows.sum(1))
        self.kl_per_dim.update(kl_rows)

    def compute(self) -> tuple[dict[str, float], torch.Tensor]:
        values = {f"val/{k}": v for k, v in self.reconstruction.compute().items()}
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


def latent_shape_of(vae: torch.nn.Module, size: int, device: torch.device) -> tuple[int, ...]:
    """One image's latent shape, asked of the model itself (every architecture: [128], [4, 8, 8], ...)."""
    mu, _ = vae.encode(torch.zeros(1, 3, size, size, device=device))
    return tuple(mu.shape[1:])


def interpolation_weights(steps: int) -> torch.Tensor:
    """[steps] from 0 to 1, both ends included: z_t = (1 - t) * mu_a + t * mu_b."""
    return torch.linspace(0, 1, steps)


def interpolate(vae: torch.nn.Module, mu_pairs: torch.Tensor, steps: int, accelerator) -> torch.Tensor | None:
    """mu_pairs [2P, *latent] (images 2i and 2i+1 make pair i) -> strips [P, steps, 3, S, S] in [0, 1]."""
    a, b = mu_pairs[0::2], mu_pairs[1::2]
    pairs = min(a.shape[0], b.shape[0])
    if pairs == 0:
        return None
    t = interpolation_weights(steps).to(a.device).view(1, steps, *([1] * (a.dim() - 1)))
    z = (1 - t) * a[:pairs].unsqueeze(1) + t * b[:pairs].unsqueeze(1)  # [P, steps, *latent]
    with accelerator.autocast():
        decoded = vae.decode(z.flatten(0, 1))
    return ((decoded.float() + 1) / 2).clamp(0, 1).view(pairs, steps, *decoded.shape[1:]).cpu()


def encode_for_probe(vae: torch.nn.Module, loader, accelerator, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Collective: the latent means [N, D] (flattened) and labels [N] of the probe's training subset."""
    total = loader.plan.subset_size
    keep_mu, keep_labels = FirstRows(total, accelerator.num_processes), FirstRows(total, accelerator.num_processes)
    dims = None
    for images, labels in loader:
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            mu, _ = vae.encode(images)
        dims = mu[0].numel() if mu.shape[0] else dims
        keep_mu.add(mu.float().flatten(1))
        keep_labels.add(labels)
    dims = math.prod(latent_shape_of(vae, cfg.data.size, accelerator.device)) if dims is None else dims
    return (keep_mu.gather(accelerator, torch.zeros(dims), total),
            keep_labels.gather(accelerator, torch.zeros((), dtype=torch.int64), total))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator, cfg: Config, probe_loader=None) -> EvalResult:
    """Collective: every process calls it with its share of the split (the evaluation loader's), and with the
    probe's training subset (`probe_loader`, labelled datasets only) when there is one."""
    vae = accelerator.unwrap_model(model, keep_torch_compile=False)  # the plain VAE: its own encode/decode
    was_training = vae.training
    vae.eval()
    metrics = SplitMetrics(vae.latent_dim, accelerator.device, cfg.data.size)
    world, log = accelerator.num_processes, cfg.logging
    latent_shape = latent_shape_of(vae, cfg.data.size, accelerator.device)
    probe_rows = cfg.probe.val_samples if probe_loader is not None else 0
    keep_mu = FirstRows(max(log.projection_points, log.table_rows, probe_rows), world)
    keep_pair_mu = FirstRows(2 * log.interpolation_pairs, world)
    keep_labels = FirstRows(keep_mu.count, world)
    keep_thumbs = FirstRows(log.table_rows, world)
    keep_pairs = FirstRows(log.num_reconstructions, world)
    noise = None
    if cfg.train.eval_latent == "sample":  # the seed's rule: decode a sampled z (seed `VAE.forward` in eval mode)
        noise = torch.Generator(device=accelerator.device).manual_seed(cfg.train.seed + accelerator.process_index)
    seen = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    labelled = False
    bar = tqdm(total=len(loader), desc="evaluate", unit="batch", disable=not accelerator.is_main_process, dynamic_ncols=True, leave=False)
    for images, labels in loader:  # images [n, 3, S, S] in [-1, 1]; labels [n] or None
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            mu, logvar = vae.encode(images)
            rec = vae.decode(mu if noise is None else reparameterise(mu, logvar, noise))
        x01 = (images.float() + 1) / 2
        rec01 = ((rec.float() + 1) / 2).clamp(0, 1)
        metrics.update(x01, rec01, per_dim_kl(mu, logvar))
        keep_mu.add(mu.float().flatten(1))  # a spatial latent [n, z, h, w] is projected as z*h*w numbers
        keep_pair_mu.add(mu.float())
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
    mu_kept = keep_mu.gather(accelerator, torch.zeros(math.prod(latent_shape)), total)
    pair_mu = keep_pair_mu.gather(accelerator, torch.zeros(latent_shape), total).to(accelerator.device)
    strips = interpolate(vae, pair_mu, log.interpolation_steps, accelerator)
    if probe_loader is not None and labelled:
        train_mu, train_labels = encode_for_probe(vae, probe_loader, accelerator, cfg)
        values.update(probe_scores(train_mu, train_labels, mu_kept[:probe_rows], labels_kept[:probe_rows], cfg.probe))
    vae.train(was_training)
    return EvalResult(
        metrics=values,
        kl_per_dim=kl_per_dim,
        mu=mu_kept,
        labels=labels_kept if labelled else None,
        thumbnails=keep_thumbs.gather(accelerator, torch.zeros(3, size, size, dtype=torch.uint8), total),
        originals=pairs[:, 0],
        reconstructions=pairs[:, 1],
        interpolations=strips,
    )
