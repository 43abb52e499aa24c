"""The seed's VAE (seed `models/vae.py`, see SPEC.md), with its widths and latent size taken from the config;
`model.arch: seed`, the default.

    model = SeedVAE(cfg.model, image_size=cfg.data.size)
    x_rec, mu, logvar = model(x)           # x: [N, 3, S, S] in [-1, 1]
    mu, logvar = model.encode(x)           # [N, latent] each
    x_rec = model.decode(z)                # [N, 3, S, S] in [-1, 1]
"""
from __future__ import annotations

import torch
from torch import nn

from vaedist.config import ModelConfig, check_seed_image_size
from vaedist.models.base import VAEBase


def _down_block(c_in: int, c_out: int, bn_momentum: float) -> nn.Sequential:
    # The BatchNorm follows, so a conv bias would be redundant (the seed also has bias=False).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=5, stride=2, padding=2, bias=False),
        nn.BatchNorm2d(c_out, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    )


def _up_block(c_in: int, c_out: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=5, stride=2, padding=2, output_padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=bn_momentum),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """[N, 3, S, S] -> (mu, logvar), each [N, latent]. Default: 64 -> 32 -> 16 -> 8 px, 256*8*8 -> 1024 -> 128."""

    def __init__(self, cfg: ModelConfig, image_size: int):
        super().__init__()
        channels = [3, *cfg.encoder_channels]
        self.features = nn.Sequential(
            *[_down_block(c_in, c_out, cfg.bn_momentum) for c_in, c_out in zip(channels[:-1], channels[1:])]
        )
        side = image_size // 2 ** len(cfg.encoder_channels)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * side * side, cfg.hidden_dim, bias=False),
            nn.BatchNorm1d(cfg.hidden_dim, momentum=cfg.bn_momentum),
            nn.ReLU(inplace=True),
        )
        self.mu = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden_dim, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.features(x))  # [N, hidden]
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """[N, latent] -> [N, 3, S, S] in [-1, 1]. Default: 128 -> 256*8*8, then 8 -> 16 -> 32 -> 64 px, 32 -> 3 ch."""

    def __init__(self, cfg: ModelConfig, image_size: int):
        super().__init__()
        n_up = len(cfg.decoder_channels)
        self.side = image_size // 2**n_up
        self.start_channels = cfg.decoder_channels[0]
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, self.start_channels * self.side * self.side, bias=False),
            nn.BatchNorm1d(self.start_channels * self.side * self.side, momentum=cfg.bn_momentum),
            nn.ReLU(inplace=True),
        )
        # Seed: 256 -> 256 -> 128 -> 32, i.e. the first block keeps the width it starts from.
        channels = [self.start_channels, *cfg.decoder_channels]
        self.features = nn.Sequential(
            *[_up_block(c_in, c_out, cfg.bn_momentum) for c_in, c_out in zip(channels[:-1], channels[1:])]
        )
        self.to_rgb = nn.Sequential(nn.Conv2d(channels[-1], 3, kernel_size=5, stride=1, padding=2), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.start_channels, self.side, self.side)  # [N, C, s, s]
        return self.to_rgb(self.features(h))


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + eps * exp(logvar / 2), eps ~ N(0, I) drawn like `randn_like(mu)` (from `generator` if given)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


@torch.no_grad()
def prior_pass(model: VAEBase, batch_size: int) -> None:
    """The seed's prior pass, for its side effect: decode `batch_size` draws of z ~ N(0, I) in the model's
    current mode and throw the images away.

    Seed `models/vae.py`, `VAE.forward` in training mode, after decoding the reparameterised z:
    `z_p = Variable(torch.randn(len(x), self.z_size).to(self.device), requires_grad=True)`,
    `x_p = self.decoder(z_p)`; `vae_train.py` never uses x_p in a loss. So no gradient reaches any parameter
    (hence no_grad here: the same numbers without the graph), but in training mode every decoder BatchNorm
    updates its running statistics from this batch, after the reconstruction pass updated them: with the
    seed's momentum 0.9 the running statistics evaluation uses are ~90 % the prior batch's. Drawn like the
    seed's: on the CPU generator, after the reparameterisation noise, then moved to the model's device.
    Called by the training step when `train.prior_pass` is on (configs/seed_*.yaml).
    """
    device = next(model.parameters()).device
    model.decode(torch.randn(batch_size, *model.latent_shape).to(device))


def init_weights(module: nn.Module) -> None:
    """Seed init: Xavier-normal (gain 1) on conv, transposed conv and linear weights; zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SeedVAE(VAEBase):
    def __init__(self, cfg: ModelConfig, image_size: int = 64):
        super().__init__()
        check_seed_image_size(cfg, image_size)  # load_config checks data.size too; a model built directly gets it here
        self.cfg = cfg
        self.image_size = image_size
        self.encoder = Encoder(cfg, image_size)
        self.decoder = Decoder(cfg, image_size)
        init_weights(self)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.cfg.latent_dim,)
