"""A convolutional VAE with a spatial latent, as latent-diffusion autoencoders build it; `model.arch: spatial`.

    model = SpatialVAE(cfg.model.spatial, image_size=64)   # defaults: latent [4, 8, 8] = 256 numbers at 64 px
    mu, logvar = model.encode(x)                           # x: [N, 3, 64, 64] -> each [N, 4, 8, 8]
    x_rec = model.decode(z)                                # [N, 4, 8, 8] -> [N, 3, 64, 64]

The layout of CompVis/latent-diffusion's `Encoder`/`Decoder` (ldm/modules/diffusionmodules/model.py) and
diffusers' `AutoencoderKL`, without what a 64-pixel, CPU-sized model does not need:
  encoder  conv3x3 -> per level: `blocks` residual blocks, then a stride-2 conv (not after the last level)
           -> 2 residual blocks -> GroupNorm, SiLU, conv3x3 to 2 * latent_channels (mu and logvar)
  decoder  conv3x3 -> 2 residual blocks -> per level, coarsest first: `blocks + 1` residual blocks, then
           nearest-neighbour x2 + conv3x3 (not after the finest level) -> GroupNorm, SiLU, conv3x3 to RGB
  residual block: GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3, plus the input (1x1 conv where widths change)
`shortcuts: true` adds DC-AE's "residual autoencoding" (Chen et al. 2024, arXiv:2410.10733) around every
change of shape: parameter-free paths (2x2 average at each downsampling, nearest-neighbour copy at each
upsampling, the features averaged in groups into mu, each latent channel copied to the decoder's first
features) that the learned layers add to. At equal widths DC-AE's space-to-channel + channel averaging is
exactly a 2x2 average, its channel duplication + channel-to-space exactly a nearest-neighbour copy.
Left out: the self-attention of LDM's middle block and its 1x1 quant convs (a linear map the conv before
them can learn). Upsampling is interpolation + convolution, never a transposed convolution (whose uneven
kernel overlap leaves the checkerboard texture the seed's decoder shows). The output is not squashed by a
tanh (as in LDM): evaluation and pictures clip it to the image range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaedist.config import SpatialConfig, check_spatial_image_size
from vaedist.models.base import VAEBase


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)  # LDM's eps


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    """Stride-2 conv3x3 with LDM's asymmetric padding (right/bottom): side s -> s/2 exactly; with `shortcut`, plus
    the 2x2 average of its input (a parameter-free residual path)."""

    def __init__(self, channels: int, shortcut: bool):
        super().__init__()
        self.conv, self.shortcut = nn.Conv2d(channels, channels, 3, stride=2), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.pad(x, (0, 1, 0, 1)))
        return h + F.avg_pool2d(x, 2) if self.shortcut else h


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3; with `shortcut`, plus the upsampled input itself."""

    def __init__(self, channels: int, shortcut: bool):
        super().__init__()
        self.conv, self.shortcut = nn.Conv2d(channels, channels, 3, padding=1), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) + x if self.shortcut else self.conv(x)


def _middle(channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(channels, channels, groups), ResidualBlock(channels, channels, groups))


class Encoder(nn.Module):
    """[N, 3, S, S] -> (mu, logvar), each [N, latent_channels, S/f, S/f]."""

    def __init__(self, cfg: SpatialConfig):
        super().__init__()
        widths, g = cfg.channels, cfg.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.blocks):
                layers.append(ResidualBlock(c, width, g))
                c = width
            if level < len(widths) - 1:
                layers.append(Downsample(c, cfg.shortcuts))
        layers += [_middle(c, g)]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(c, g), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1))
        self.z, self.shortcut = cfg.latent_channels, cfg.shortcuts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layers(x)  # [N, C, s, s]
        mu, logvar = self.out(h).chunk(2, dim=1)  # [N, 2z, s, s] -> 2 x [N, z, s, s]
        if self.shortcut:  # mu also gets the features averaged in z groups of C/z channels
            n, c, s1, s2 = h.shape
            mu = mu + h.view(n, self.z, c // self.z, s1, s2).mean(2)
        return mu, logvar


class Decoder(nn.Module):
    """[N, latent_channels, S/f, S/f] -> [N, 3, S, S]."""

    def __init__(self, cfg: SpatialConfig):
        super().__init__()
        widths, g = cfg.channels, cfg.norm_groups
        c = widths[-1]
        self.conv_in, self.repeats = nn.Conv2d(cfg.latent_channels, c, 3, padding=1), c // cfg.latent_channels
        self.shortcut = cfg.shortcuts
        layers: list[nn.Module] = [_middle(c, g)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.blocks + 1):
                layers.append(ResidualBlock(c, widths[level], g))
                c = widths[level]
            if level > 0:
                layers.append(Upsample(c, cfg.shortcuts))
        layers += [_norm(c, g), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # [N, C, s, s]
        if self.shortcut:  # each latent channel also goes to C/z feature channels as it is
            h = h + z.repeat_interleave(self.repeats, dim=1)
        return self.layers(h)


class SpatialVAE(VAEBase):
    def __init__(self, cfg: SpatialConfig, image_size: int = 64):
        super().__init__()
        check_spatial_image_size(cfg, image_size)  # load_config checks data.size too; a model built directly gets it here
        self.cfg = cfg
        self.image_size = image_size
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.image_size // self.cfg.downsample
        return (self.cfg.latent_channels, side, side)
