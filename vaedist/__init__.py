"""vaedist: train the seed VAE on MS COCO and Food-101 at the speed of the GPU.

Data flows one way, and so does the package:
  vaedist.shard  raw images -> WebDataset tar shards + DALI index + manifest.json
  vaedist.data   shards -> batches on the device (DALI, or the reference PyTorch loader)
  vaedist.models / vaedist.losses / vaedist.train   the VAEs (the seed's, a spatial-latent one) trained with Accelerate
  vaedist.evaluate / vaedist.tracking / vaedist.compare   metrics, W&B, side-by-side reports
  vaedist.rundir  the run directory's layout (config, metrics, images, checkpoints, final weights)
See docs/architecture.md for the module map.
"""
from vaedist import errors as _errors

# `python -m vaedist.X`: Python runs this file before X's packages import torch, DALI, numpy...; from here a
# Ctrl-C ends the command as it does later, in one line with exit code 130 (vaedist.errors). Nothing changes
# for a program that only imports vaedist.
_errors.quiet_interrupts_for_command_module()

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a trained VAE (eval mode, on `device`) from a run's `final/` folder, the run folder itself or a
    model.safetensors file; see vaedist.models.load_model."""
    from vaedist.models import load_model as _load  # keeps torch out of `import vaedist`

    return _load(path, device=device)


__all__ = ["__version__", "load_model"]
