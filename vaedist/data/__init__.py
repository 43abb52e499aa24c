"""The data pipeline: shards -> batches on the training device (DALI, or the reference PyTorch loader).

Modules, in data-flow order: `backend` (DALI or reference), `validate` (start-up shard checks) -> `index` (.idx offsets, labels, original
sizes) -> `order` (ranks, per-epoch order, flips) -> `transform` (the seed's transform, one description) ->
`dali` / `reference` (decoders) -> `bad_samples` (samples that fail to decode) -> `cache` (decode-once) ->
`loader` (`build_loader`, `Loader`). `verify` (python -m vaedist.data.verify) checks every byte and image.
"""
from vaedist.data.backend import dali_available, resolve_backend
from vaedist.data.loader import Loader, build_loader
from vaedist.data.validate import validate_split

__all__ = ["Loader", "build_loader", "dali_available", "resolve_backend", "validate_split"]
