"""The training step: one forward, ONE backward, both optimizers (vaedist.losses says why one backward)."""
from __future__ import annotations

import dataclasses

import torch

from vaedist.losses import VAELosses, kl_warmup_factor, scale_decoder_gradients, vae_losses
from vaedist.models.seed import prior_pass
from vaedist.train.trainer import Trainer


def train_step(t: Trainer, x: torch.Tensor) -> VAELosses:
    """x: [N, 3, S, S] in [-1, 1] on the device, this process's N = B/P images of the global batch."""
    if t.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_rec, mu, logvar = t.model(x)  # Accelerate runs the forward under autocast and returns fp32
    if t.cfg.train.prior_pass:  # the seed's extra decode, for its BatchNorm side effect (see prior_pass)
        with t.accelerator.autocast():
            prior_pass(t.vae, x.shape[0])
    warmup = kl_warmup_factor(t.cfg.train, t.progress.step, len(t.train_loader))
    losses = vae_losses(x, x_rec, mu, logvar, dataclasses.replace(t.weights, kl=warmup * t.weights.kl))
    t.accelerator.backward(t.batch.global_sum(losses.loss_encoder))  # DDP averages: see vaedist.batch
    step_optimizers(t)
    return losses


def step_optimizers(t: Trainer) -> None:
    """Scale the decoder's gradient, clip each sub-network, step both optimizers with ONE scaler update.

    Accelerate's optimizer wrapper calls scaler.update() after each optimizer's step; with two optimizers the
    second would then be unscaled with a changed scale (or twice). So with fp16 we drive the scaler here.
    """
    scaler = t.accelerator.scaler
    opt_encoder, opt_decoder = t.optimizers
    if scaler is not None:
        scaler.unscale_(opt_encoder)
        scaler.unscale_(opt_decoder)
    scale_decoder_gradients(t.vae.decoder.parameters(), t.weights.lambda_mse)
    for sub, cfg in ((t.vae.encoder, t.cfg.train.encoder), (t.vae.decoder, t.cfg.train.decoder)):
        if cfg.grad_clip > 0:  # gradients are already all-reduced, so every rank clips alike
            torch.nn.utils.clip_grad_norm_(sub.parameters(), cfg.grad_clip)
    if scaler is not None:
        # Each skips when its own gradients overflowed; an overflow in the decoder's backward reaches the
        # encoder's gradients through z, so in practice both skip together (tests/test_train.py).
        scaler.step(opt_encoder)
        scaler.step(opt_decoder)
        scaler.update()
    else:
        opt_encoder.step()
        opt_decoder.step()
    opt_encoder.zero_grad(set_to_none=True)
    opt_decoder.zero_grad(set_to_none=True)
    for schedule in t.schedules:
        schedule.after_step()
