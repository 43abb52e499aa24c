"""The VAE architectures, chosen with `model.arch`, and trained weights on disk.

    model = build_model(cfg)                     # ARCHITECTURES[cfg.model.arch], for images of cfg.data.size
    save_model(model, cfg, "runs/x/final")       # model.safetensors + config.yaml
    model = load_model("runs/x")                 # a run folder, its final/ folder or a model.safetensors file

Every architecture has the interface of `vaedist.models.base.VAEBase` (encode -> mu, logvar of the latent's
shape; decode; sample; latent_shape; `encoder`/`decoder` sub-networks for the two optimizers), so nothing
downstream asks which one it has.
  seed     the seed's VAE: a 128-number latent vector (vaedist/models/seed.py; model.* keys)
  spatial  a latent-diffusion-style VAE with a [4, 8, 8] latent at 64 px (vaedist/models/spatial.py; model.spatial.*)
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vaedist.config import Config, load_config, save_config
from vaedist.files import atomic_path
from vaedist.models.base import LOGVAR_MAX, LOGVAR_MIN, VAEBase, clamp_logvar
from vaedist.models.seed import SeedVAE
from vaedist.models.spatial import SpatialVAE
from vaedist.rundir import ModelFiles


def _seed(cfg: Config) -> VAEBase:
    return SeedVAE(cfg.model, image_size=cfg.data.size)


def _spatial(cfg: Config) -> VAEBase:
    return SpatialVAE(cfg.model.spatial, image_size=cfg.data.size)


ARCHITECTURES = {"seed": _seed, "spatial": _spatial}


def build_model(cfg: Config) -> VAEBase:
    """The model `cfg.model.arch` names, freshly initialised (seeded by the caller)."""
    return ARCHITECTURES[cfg.model.arch](cfg)


def latent_shape(cfg: Config) -> tuple[int, ...]:
    """The latent shape of one image under `cfg`, without building the model: [latent_dim] or [z, S/f, S/f]."""
    if cfg.model.arch == "spatial":
        side = cfg.data.size // cfg.model.spatial.downsample
        return (cfg.model.spatial.latent_channels, side, side)
    return (cfg.model.latent_dim,)


def latent_numbers(cfg: Config) -> int:
    return math.prod(latent_shape(cfg))


def save_model(model: VAEBase, cfg: Config, out_dir: str | Path) -> Path:
    """Write the weights and the config into `out_dir` (`ModelFiles`; each to a temporary name, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ModelFiles.in_folder(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(files.weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "vaedist-vae", "arch": cfg.model.arch, "image_size": str(model.image_size)})
    save_config(cfg, files.config)
    return out_dir


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VAEBase:
    """Load a VAE from a `final/` folder, a run folder (uses its `final/`), a checkpoint folder, or a
    `model.safetensors` file.

    The architecture comes from the config saved next to the weights (model.arch; configs written before
    there was a choice mean the seed's). The model comes back in eval mode: `encode`, `decode`,
    `reconstruct(x)`, `sample(n)`.
    """
    files = ModelFiles.find(path)
    model = build_model(load_config(files.config))
    # A checkpoint's weights are Accelerate's, saved from the wrapped model: DDP's and torch.compile's prefixes
    state = {_WRAPPER_PREFIX.sub("", key): value for key, value in load_file(str(files.weights)).items()}
    model.load_state_dict(state)
    return model.to(device).eval()


_WRAPPER_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")


__all__ = [
    "ARCHITECTURES", "LOGVAR_MAX", "LOGVAR_MIN", "SeedVAE", "SpatialVAE", "VAEBase",
    "build_model", "clamp_logvar", "latent_numbers", "latent_shape", "load_model", "save_model",
]
