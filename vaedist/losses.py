"""The seed's losses (seed `vae_train.py`, see SPEC.md) and the one-backward form of its two-optimizer update.

Per sample:  mse = 0.5 * sum over pixels (x - x_rec)^2,   kld = -0.5 * sum over latent (1 + logvar - mu^2 - exp(logvar))
    loss_encoder = kl_weight * sum_batch kld + sum_batch mse
    loss_decoder = lambda_mse * sum_batch mse
The encoder's parameters move along d loss_encoder / d encoder, the decoder's along d loss_decoder / d decoder,
both taken at the same parameters after one forward pass.

Why one backward: under DDP each backward through the wrapped model all-reduces the gradients of every
parameter that took part; two backward passes (one per loss) leave DDP's bucket state out of step between
ranks and the ranks drift apart without an error. Instead we use one exact identity:
    the decoder's parameters do not appear in the KL term, so  d loss_encoder / d decoder = d (sum mse) / d decoder
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


@dataclass(frozen=True)
class LossWeights:
    kl: float  # multiplies the batch-summed KL in loss_encoder
    lambda_mse: float  # multiplies the batch-summed MSE in loss_decoder


def loss_weights(train: TrainConfig, batch: GlobalBatch) -> LossWeights:
    """KL weight of the seed's modes. `1/batch` is of the GLOBAL batch (vaedist.batch), as the seed's was."""
    if train.mode == "beta-vae":
        kl = batch.per_image(train.beta)
    else:
        kl = batch.per_image() if train.kl_weight == "batch" else 1.0
    return LossWeights(kl=kl, lambda_mse=train.lambda_mse)


def per_sample_mse(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """[N, 3, S, S] x2 -> [N]: half the squared error summed over all values, in fp32."""
    diff = x_rec.float() - x.float()
    return 0.5 * diff.pow(2).flatten(1).sum(1)


def per_dim_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[N, latent] x2 -> [N, latent]: KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, in fp32."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def per_sample_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return per_dim_kl(mu, logvar).sum(1)  # [N]


@dataclass
class VAELosses:
    loss_encoder: torch.Tensor  # scalar, fp32
    loss_decoder: torch.Tensor  # scalar, fp32
    kl: torch.Tensor  # scalar: KL summed over this batch
    mse: torch.Tensor  # scalar: mse summed over this batch


def vae_losses(x: torch.Tensor, x_rec: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, w: LossWeights) -> VAELosses:
    mse = per_sample_mse(x, x_rec).sum()
    kl = per_sample_kl(mu, logvar).sum()
    return VAELosses(loss_encoder=w.kl * kl + mse, loss_decoder=w.lambda_mse * mse, kl=kl, mse=mse)


@torch.no_grad()
def scale_decoder_gradients(decoder_params: Iterable[torch.nn.Parameter], lambda_mse: float) -> None:
    """After `backward(loss_encoder)`: turn the decoder's d loss_encoder/d decoder into d loss_decoder/d decoder."""
    for p in decoder_params:
        if p.grad is not None:
            p.grad.mul_(lambda_mse)
