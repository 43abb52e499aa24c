"""The seed's losses (seed `vae_train.py`, see SPEC.md) and the one-backward form of its two-optimizer update.

Per sample:  mse = 0.5 * sum over pixels (x - x_rec)^2,   kld = -0.5 * sum over latent (1 + logvar - mu^2 - exp(logvar))
    loss_encoder = kl_weight * sum_batch kld + mse_weight * sum_batch mse
    loss_decoder = lambda_mse * mse_weight * sum_batch mse
Seed modes (sums over the batch, mse_weight 1): `vae` kl_weight = 1/B or 1, `beta-vae` kl_weight = beta/B.
Their KL-to-reconstruction ratio per image is 1/B (or beta/B): it changes with the batch size. Mode
`per-image` takes means over the batch instead (mse_weight = 1/B, kl_weight = beta/B), so the ratio is beta
at any batch size, and the gradients' size does not grow with the batch either. B is the GLOBAL batch.
`train.kl_warmup_epochs` ramps kl_weight linearly from 0 over the first epochs.
The encoder's parameters move along d loss_encoder / d encoder, the decoder's along d loss_decoder / d decoder,
both taken at the same parameters after one forward pass.

Why one backward: under DDP each backward through the wrapped model all-reduces the gradients of every
parameter that took part; two backward passes (one per loss) leave DDP's bucket state out of step between
ranks and the ranks drift apart without an error. Instead we use one exact identity:
    the decoder's parameters do not appear in the KL term, so  d loss_encoder / d decoder = d (mse_weight * sum mse) / d decoder
    and therefore  d loss_decoder / d decoder = lambda_mse * d loss_encoder / d decoder.
So ONE backward of loss_encoder gives the encoder's gradient as is and the decoder's gradient up to the
constant factor lambda_mse, which `scale_decoder_gradients` applies after DDP's all-reduce (it is linear).
Scaling after the backward also keeps the tiny seed lambda (1e-6) out of the fp16 backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from vaedist.batch import GlobalBatch
from vaedist.config import TrainConfig
from vaedist.models.base import LOGVAR_MAX, LOGVAR_MIN


@dataclass(frozen=True)
class LossWeights:
    kl: float  # multiplies the batch-summed KL in loss_encoder
    lambda_mse: float  # loss_decoder = lambda_mse * (the reconstruction term of loss_encoder)
    mse: float = 1.0  # multiplies the batch-summed MSE in loss_encoder (the seed's modes: 1)


def loss_weights(train: TrainConfig, batch: GlobalBatch, kl_factor: float = 1.0) -> LossWeights:
    """The weights of `train.mode`, the KL's times `kl_factor` (the warm-up). `1/batch` is of the GLOBAL batch
    (vaedist.batch), as the seed's was."""
    if train.mode == "per-image":
        return LossWeights(kl=kl_factor * batch.per_image(train.beta), lambda_mse=train.lambda_mse, mse=batch.per_image())
    if train.mode == "beta-vae":
        kl = batch.per_image(train.beta)
    else:
        kl = batch.per_image() if train.kl_weight == "batch" else 1.0
    return LossWeights(kl=kl_factor * kl, lambda_mse=train.lambda_mse)


def kl_warmup_factor(train: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """0 at step 0, rising linearly to 1 after `train.kl_warmup_epochs` epochs (1 throughout when 0)."""
    warmup_steps = train.kl_warmup_epochs * steps_per_epoch
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def per_sample_mse(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """[N, 3, S, S] x2 -> [N]: half the squared error summed over all values, in fp32."""
    diff = x_rec.float() - x.float()
    return 0.5 * diff.pow(2).flatten(1).sum(1)


def per_dim_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[N, *latent_shape] x2 -> [N, D]: KL(N(mu, sigma^2) || N(0, 1)) per latent value (D of them), in fp32."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def per_sample_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return per_dim_kl(mu, logvar).sum(1)  # [N]


@dataclass
class VAELosses:
    loss_encoder: torch.Tensor  # scalar, fp32
    loss_decoder: torch.Tensor  # scalar, fp32
    kl: torch.Tensor  # scalar: KL summed over this batch
    mse: torch.Tensor  # scalar: mse summed over this batch
    # the guards' view of this batch (vaedist.train counts blow-ups from them)
    kl_max: torch.Tensor  # scalar: the largest KL of one image
    clamped: torch.Tensor  # scalar: log-variance values held at a bound of the clamp (either)
    clamped_high: torch.Tensor  # scalar: of those, at the upper bound (sigma^2 = e^20: a blow-up)
    latent_values: int  # mu.numel(): kl / latent_values is the KL per latent value


def vae_losses(x: torch.Tensor, x_rec: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, w: LossWeights) -> VAELosses:
    """x, x_rec: [N, 3, S, S]; mu, logvar: [N, *latent_shape], logvar already clamped by the model."""
    mse = per_sample_mse(x, x_rec).sum()
    kl_rows = per_sample_kl(mu, logvar)
    kl = kl_rows.sum()
    rec = w.mse * mse
    logvar = logvar.detach()
    high = (logvar >= LOGVAR_MAX).sum()
    return VAELosses(
        loss_encoder=w.kl * kl + rec, loss_decoder=w.lambda_mse * rec, kl=kl, mse=mse,
        kl_max=kl_rows.detach().max(), clamped=(logvar <= LOGVAR_MIN).sum() + high, clamped_high=high,
        latent_values=mu.numel(),
    )


@torch.no_grad()
def scale_decoder_gradients(decoder_params: Iterable[torch.nn.Parameter], lambda_mse: float) -> None:
    """After `backward(loss_encoder)`: turn the decoder's d loss_encoder/d decoder into d loss_decoder/d decoder."""
    for p in decoder_params:
        if p.grad is not None:
            p.grad.mul_(lambda_mse)
