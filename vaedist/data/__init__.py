"""The data pipeline: shards -> batches on the training device (DALI, or the reference PyTorch loader).

Modules, in data-flow order: `backend` (DALI or reference), `validate` (start-up shard checks) -> `index` (.idx offsets, labels, original
sizes) -> `order` (ranks, per-epoch order, flips) -> `transform` (the seed's transform, one description) ->
`dali` / `reference` (decoders) -> `cache` (decode-once) -> `loader` (`build_loader`, `Loader`).
"""
from vaedist.data.backend import dali_available, resolve_backend
from vaedist.data.loader import Loader, build_loader
from vaedist.data.validate import validate_split, verify_split

__all__ = ["Loader", "build_loader", "dali_available", "resolve_backend", "validate_split", "verify_split"]
