"""`build_loader`: shard directory + split -> an iterable of batches on the training device.

    loader = build_loader(cfg.data, "train", train=True, batch_size=256, accelerator=accelerator)
    for epoch in range(epochs):
        loader.set_epoch(epoch)         # set_epoch(epoch, start_batch=k): a resumed epoch, from batch k
        for images, labels in loader:   # float32 [N, 3, S, S] in [-1, 1]; int64 [N] or None
            ...

Set-up order: manifest -> the split's index (its table, checked against the manifest and the tars' sizes;
shards without a table: every .idx and member read, `index.open_split_index`) -> bad-sample policy (members
found damaged so far: the old path only) -> sample plan (ranks, order, flips) -> decoder backend
(DALI or reference) -> optional decode-once cache. A sample that fails to decode later is found by its
backend and handled by the same policy (`bad_samples.py`).
"""
from __future__ import annotations

import logging
from typing import Iterator, Protocol

import numpy as np
import torch

from vaedist.config import DataConfig
from vaedist.data.backend import resolve_backend
from vaedist.data.bad_samples import BadSamples, BadSampleStop
from vaedist.data.cache import DecodeOnceCache, plan_cache
from vaedist.data.index import SplitIndex, open_split_index
from vaedist.data.order import SamplePlan
from vaedist.data.reference import ReferenceDecoder
from vaedist.data.transform import TransformSpec, flip_and_normalise
from vaedist.errors import UserError
from vaedist.shard.format import Manifest, load_manifest
from vaedist.threads import plan_threads

log = logging.getLogger(__name__)


class Decoder(Protocol):
    """A backend: non-empty batches of global sample indices -> (the indices decoded, uint8 [n, 3, size, size]
    on the device) per batch, in order. The indices are the batch's own unless a sample failed to decode:
    then the backend hands it to its `BadSamples` and yields the batch as `BadSamples.fix` makes it."""

    def decode(self, batches: list[np.ndarray], keep_size: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor]]: ...


class Loader:
    """Iterable of (images float32 [N, 3, S, S] in [-1, 1], labels int64 [N] | None) on the device."""

    def __init__(self, manifest: Manifest, index: SplitIndex, plan: SamplePlan, spec: TransformSpec, decoder: Decoder,
                 backend: str, device: torch.device, cache: DecodeOnceCache | None, cache_info: str,
                 bad_samples: BadSamples):
        self.manifest, self.index, self.plan, self.spec = manifest, index, plan, spec
        # Samples that fail to decode: replaced in their training batch / dropped from evaluation, every epoch.
        self.bad_samples = bad_samples
        self.backend = backend
        self.device = device
        self.cache = cache
        self.cache_info = cache_info  # one line: where the cache lives and how big it is (or why it is off)
        self._decoder = decoder
        self._labels = torch.from_numpy(index.label) if index.labelled else None
        self.epoch = 0
        self.start_batch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return self.plan.num_samples

    def __len__(self) -> int:
        return self.plan.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterations yield epoch `epoch` from its batch `start_batch` on (a resumed epoch): the same samples
        and flips as those batches of the whole epoch, and the batches before it are not decoded."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        epoch = self.epoch
        batches = [self.bad_samples.fix(b, keep_size=self.plan.train) for b in self.plan.batches(epoch)[self.start_batch :]]
        flips = self.plan.flips(epoch) if (self.plan.train and self.spec.flip) else None
        if self.cache is not None and self.cache.complete:
            decoded = ((b, self.cache.take(b)) for b in batches)
        else:
            decoded = self._decode_and_fill(batches)
        for indices, uint8 in decoded:
            yield self._finish(indices, uint8, flips)

    def _decode_and_fill(self, batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        decoded = self._decoder.decode([b for b in batches if len(b)], keep_size=self.plan.train)
        for batch in batches:
            if len(batch):
                indices, uint8 = next(decoded)
                if self.cache is not None:
                    self.cache.store(indices, uint8)
            else:  # evaluation: a rank with one sample fewer, or a batch of bad samples only
                indices, uint8 = batch, torch.empty((0, 3, self.spec.size, self.spec.size), dtype=torch.uint8,
                                                    device=self.device)
            yield indices, uint8
        next(decoded, None)  # run the decoder to its end, so that it finishes its epoch cleanly
        if self.cache is not None and not self.cache.complete:
            self._fill_cache(self.cache.missing(self.plan.owned))

    def _fill_cache(self, missing: np.ndarray) -> None:
        """Decode the samples the epoch did not (the drop-last remainder; the batches before a resumed epoch's
        start) so that later epochs need no decoder."""
        size = self.plan.batch_size
        missing = self.bad_samples.fix(missing, keep_size=False)
        chunks = [missing[i : i + size] for i in range(0, len(missing), size)]
        for indices, uint8 in self._decoder.decode(chunks, keep_size=False):
            self.cache.store(indices, uint8)
        self.cache.exclude(np.asarray(sorted(self.bad_samples.known), dtype=np.int64))  # never served
        log.info("%s: complete after epoch %d", self.cache_info, self.epoch)

    def _finish(self, batch: np.ndarray, uint8: torch.Tensor, flips: np.ndarray | None):
        flip = torch.from_numpy(flips[batch]).to(self.device, non_blocking=True) if flips is not None else None
        images = flip_and_normalise(uint8, flip)
        labels = self._labels[torch.from_numpy(batch)].to(self.device, non_blocking=True) if self._labels is not None else None
        return images, labels


def build_loader(cfg: DataConfig, split: str, *, train: bool, batch_size: int, accelerator=None,
                 device: torch.device | None = None, shard_id: int | None = None,
                 num_shards: int | None = None, samples: np.ndarray | None = None,
                 bad_samples: BadSamples | None = None) -> Loader:
    """Build the loader of `split` of the shard directory `cfg.shards`.

    `batch_size` is per process. Distribution comes from `accelerator` (shard_id = process_index,
    num_shards = num_processes, device = its device); `shard_id`/`num_shards`/`device` override it
    (tests build two ranks in one process). Raises UserError before any decoding if a shard is bad.
    `bad_samples`: the record of another loader of the same split (the probe's subset of the training split
    shares the training loader's), so that a sample found bad once is skipped, and reported, once.
    """
    if accelerator is not None:
        device = device or accelerator.device
        shard_id = accelerator.process_index if shard_id is None else shard_id
        num_shards = accelerator.num_processes if num_shards is None else num_shards
    device = torch.device(device or "cpu")
    shard_id, num_shards = shard_id or 0, num_shards or 1
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")

    manifest = load_manifest(cfg.shards)
    index = open_split_index(cfg.shards, manifest, split)
    if bad_samples is None or bad_samples.split != split:
        bad_samples = BadSamples(index, split, cfg.bad_samples, cfg.max_bad_fraction)
    try:
        for i, member, what in index.damaged:  # members found damaged while indexing: the same policy
            bad_samples.add(i, member, what)
    except BadSampleStop as err:
        err.every_rank = True  # every rank indexes the whole split: the same line on each, printed once
        raise
    if samples is not None and train:
        raise ValueError("samples= selects evaluation samples; a training loader takes the whole split")
    plan = SamplePlan(len(index), batch_size, train, cfg.seed, rank=shard_id, world=num_shards, subset=samples)
    spec = TransformSpec.from_config(cfg)

    backend = resolve_backend(cfg.backend)
    workers = plan_threads(cfg.workers, 0, on_cpu=device.type == "cpu").data  # data.workers=-1: the auto split
    decoder: Decoder
    if backend == "dali":
        from vaedist.data.dali import DaliDecoder  # nvidia.dali: optional, the reference backend runs without it

        decoder = DaliDecoder(index, spec, batch_size, device, workers, cfg.prefetch, cfg.seed + shard_id, bad_samples)
    else:
        decoder = ReferenceDecoder(index, spec, device, workers, cfg.prefetch, bad_samples)

    cache_plan = plan_cache(cfg.cache, len(plan.owned), spec.size, device)
    cache = None if cache_plan.location == "off" else DecodeOnceCache(cache_plan, plan.owned, len(index), spec.size, device)
    if cfg.cache != "off":
        log.info("%s split: %s", split, cache_plan.reason)
    return Loader(manifest, index, plan, spec, decoder, backend, device, cache, cache_plan.reason, bad_samples)
