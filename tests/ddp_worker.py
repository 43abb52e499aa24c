"""Run under `python -m vaedist.launch --multi_gpu --num_processes 2` by tests/test_train_distributed.py.

Trains a small VAE for a few steps with the real trainer (`vaedist.train.setup` + `train_step`) on a fixed
global batch split over the ranks, and checks after every step:
  1. every rank holds bit-identical parameters;
  2. the parameters equal a single-process reference that applies the seed's rule by definition: the
     encoder's optimizer gets torch.autograd.grad(loss_encoder, encoder), the decoder's
     torch.autograd.grad(loss_decoder, decoder), losses summed over the GLOBAL batch.
BatchNorm: SyncBatchNorm has no CPU kernel, so on CPU each rank normalises over its own half; the
reference therefore runs its forward pass per half (same halves, same noise) and sums the losses. That is
exactly the global-batch loss of the 2-process run, so the comparison is valid.
Also: evaluation's FirstRows gathers the split's first rows in split order across the ranks.
argv: OUT_FILE RUN_DIR [ARCH]: ARCH seed (default; the seed's losses) or spatial (GroupNorm, a [2, 8, 8] latent,
per-image mean losses: the 1/global-batch weights must survive the processes' x2 and DDP's average).
Writes "OK <steps>" to OUT_FILE on success (rank 0).
"""
from __future__ import annotations

import copy
import sys

import torch

from vaedist.batch import GlobalBatch
from vaedist.config import Config, ModelConfig, SpatialConfig
from vaedist.evaluate import FirstRows
from vaedist.losses import loss_weights, vae_losses
from vaedist.optim import build_optimizer
from vaedist.train import close, setup, train_step

GLOBAL_BATCH, SIZE, STEPS = 8, 16, 3


class NoLoader:
    def __len__(self):
        return STEPS

    def set_epoch(self, epoch, start_batch=0):
        pass


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.rand(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g) * 2 - 1


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def main() -> None:
    out_file, run_dir = sys.argv[1], sys.argv[2]
    arch = sys.argv[3] if len(sys.argv) > 3 else "seed"
    cfg = Config()
    cfg.model = ModelConfig(arch=arch, latent_dim=8, encoder_channels=[4, 8], hidden_dim=16, decoder_channels=[8, 4],
                            spatial=SpatialConfig(channels=[4, 8], downsample=2, blocks=1, latent_channels=2, norm_groups=2))
    if arch == "spatial":
        cfg.train.mode, cfg.train.beta = "per-image", 0.5
    cfg.data.size = SIZE
    cfg.train.batch_size = GLOBAL_BATCH
    cfg.train.lambda_mse = 1e-3  # different from 1 so that the decoder's rule is visible
    cfg.train.encoder.grad_clip = 50.0  # per sub-network clipping takes part too
    # RMSprop is nearly invariant to the scale of the gradient (eps=1e-8), so a wrong lambda_mse would hardly
    # show; with eps=1 its step is close to lr * gradient and the comparison sees the gradients themselves.
    cfg.train.encoder.eps = cfg.train.decoder.eps = 1.0
    cfg.run.dir = run_dir
    cfg.logging.wandb = False
    t = setup(cfg, loaders=(NoLoader(), None))
    acc = t.accelerator
    world, rank = acc.num_processes, acc.process_index
    assert world == 2, f"expected 2 processes, got {world}"
    local = GLOBAL_BATCH // world

    reference = copy.deepcopy(t.vae)  # same initial weights as the DDP model
    ref_opts = (build_optimizer(cfg.train.encoder, reference.encoder.parameters()),
                build_optimizer(cfg.train.decoder, reference.decoder.parameters()))
    weights = loss_weights(cfg.train, GlobalBatch(GLOBAL_BATCH, 1))  # one process, the whole batch

    initial = flat_params(t.vae).clone()
    for step in range(STEPS):
        x = global_batch(step)
        torch.manual_seed(1000 * step + rank)  # this rank's reparameterisation noise
        train_step(t, x[rank * local : (rank + 1) * local].to(acc.device))

        mine = flat_params(t.vae)
        everyone = acc.gather(mine.unsqueeze(0))  # [world, P]
        assert torch.equal(everyone[0], everyone[1]), f"step {step}: ranks hold different parameters"

        # Reference: the definition, one process, the global batch in the ranks' halves
        loss_e = loss_d = 0.0
        for r in range(world):
            torch.manual_seed(1000 * step + r)
            losses = vae_losses(x[r * local : (r + 1) * local], *reference(x[r * local : (r + 1) * local]), weights)
            loss_e, loss_d = loss_e + losses.loss_encoder, loss_d + losses.loss_decoder
        enc, dec = list(reference.encoder.parameters()), list(reference.decoder.parameters())
        for p, g in zip(enc, torch.autograd.grad(loss_e, enc, retain_graph=True)):
            p.grad = g
        for p, g in zip(dec, torch.autograd.grad(loss_d, dec)):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(enc, cfg.train.encoder.grad_clip)
        for opt in ref_opts:
            opt.step()
            opt.zero_grad()
        torch.testing.assert_close(mine, flat_params(reference), rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"step {step}: 2-process update differs from the reference: {m}")
    assert not torch.allclose(initial, flat_params(t.vae)), "the parameters did not move"

    # Evaluation keeps the split's first rows in split order although rank r holds samples r, r+W, ...
    for total, count in ((7, 5), (3, 5)):
        keep = FirstRows(count, world)
        for chunk in torch.arange(rank, total, world).float().split(2):
            keep.add(chunk.view(-1, 1))
        got = keep.gather(acc, torch.zeros(1), total).view(-1).tolist()
        assert got == list(range(min(count, total))), (total, count, got)
    if acc.is_main_process:
        with open(out_file, "w") as fh:
            fh.write(f"OK {STEPS}\n")
    close(t)


if __name__ == "__main__":
    main()
