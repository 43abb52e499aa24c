"""What every vaedist VAE is to the rest of the package: two sub-networks and a Gaussian posterior.

    mu, logvar = model.encode(x)        # x: [N, 3, S, S] in [-1, 1]  ->  each [N, *model.latent_shape]
    x_rec = model.decode(z)             # z: [N, *model.latent_shape] ->  [N, 3, S, S], about [-1, 1]
    x_rec, mu, logvar = model(x)        # training forward: decodes z = mu + sigma * eps
    model.encoder, model.decoder        # one optimizer each (the seed's two-optimizer rule)

The losses, the trainer, the evaluation and the tracker use only this interface (latent tensors of any shape,
flattened where a per-dimension view is needed), so a new architecture is a subclass that builds
`encoder` (x -> (mu, logvar)) and `decoder` (z -> x) and says its `latent_shape`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The log-variance is clamped to this range before anything uses it, as latent-diffusion's and diffusers'
# DiagonalGaussianDistribution do (torch.clamp(logvar, -30.0, 20.0)). Unclamped, one bad step can push
# logvar past 88, where exp() overflows fp32: sigma and the KL become inf and the decoder's input NaN (the
# seed recipe reached a train KL of 1e14 per image). At the bounds sigma^2 is 9e-14 and 4.9e8: no useful
# posterior lies outside. The gradient is zero beyond a bound; vaedist.losses counts the values held there.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def clamp_logvar(logvar: torch.Tensor) -> torch.Tensor:
    return logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class VAEBase(nn.Module):
    """Subclasses set `self.encoder`, `self.decoder`, `self.image_size` and implement `latent_shape`."""

    encoder: nn.Module  # [N, 3, S, S] -> (mu, logvar), each [N, *latent_shape]
    decoder: nn.Module  # [N, *latent_shape] -> [N, 3, S, S]
    image_size: int

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        """Numbers in one image's latent (the budget the no-learning baselines are compared at)."""
        return math.prod(self.latent_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return mu, clamp_logvar(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] in [-1, 1] -> reconstructions decoded from the latent means (no sampling noise)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode `n` draws of z ~ N(0, I): [n, 3, S, S]."""
        device = next(self.parameters()).device
        z = torch.randn(n, *self.latent_shape, generator=generator, device=generator.device if generator else device)
        return self.decode(z.to(device))
