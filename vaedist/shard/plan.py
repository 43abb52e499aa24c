"""The shard plan: which sample goes into which shard, decided before any image is decoded.

The plan depends only on (listing, seed, shard size, bytes ratio), so a killed run that is started again
with the same arguments recomputes exactly the same plan, keeps the shards it finished and writes the
others. Samples are shuffled across the whole split first (seeded). vaedist's own loader reshuffles the
whole split every epoch, but other readers of the shards don't: DALI's `fn.readers.webdataset` shuffles
only within a buffer of `initial_fill` samples and gives each rank a contiguous range of the split, so
without this shuffle a rank would see whole classes (Food-101) or whole folders (COCO's test2017) at a time.

Shard boundaries need the stored size of each sample, known only after decoding; we estimate it as the
file's size on disk times `bytes_ratio` plus the tar headers and padding of the members that sample has
(.jpg and .json; .cls too on labelled datasets: `format.estimated_sample_bytes`), and a shard is cut
before the sample that would take its tar, end-of-archive blocks included, past `shard_size`. With --max-side, `bytes_ratio` (stored bytes
/ source bytes) is measured on a seeded probe of a few images and saved in the resumable state, so it is
the same number on every re-run; without it the ratio is 1, exact for COCO and Food-101, whose JPEGs are
copied byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from vaedist.shard.format import SPLITS, TAR_SUFFIX, estimated_sample_bytes, shard_stem, tar_bytes, tar_name
from vaedist.shard.sources import SourceListing


@dataclass(frozen=True)
class PlannedShard:
    name: str  # "train-000000.tar"
    split: str
    samples: tuple[int, ...]  # indices into listing.samples, in the order they are written

    @property
    def stem(self) -> str:
        return self.name[: -len(TAR_SUFFIX)]

    def digest(self) -> str:
        """Identifies this shard's content plan: a finished shard is kept only if its digest still matches."""
        return hashlib.sha256(f"{self.name}:{','.join(map(str, self.samples))}".encode()).hexdigest()[:16]


def shuffled_indices(listing: SourceListing, split: str, seed: int) -> list[int]:
    """Indices of `split`'s samples in a seeded random order (a string seed: stable across Python runs)."""
    indices = [i for i, s in enumerate(listing.samples) if s.split == split]
    random.Random(f"vaedist-shard:{seed}:{split}").shuffle(indices)
    return indices


def plan_shards(listing: SourceListing, seed: int, shard_size: int, bytes_ratio: float,
                hashed: bool = False) -> list[PlannedShard]:
    """Cut each split's shuffled samples into shards of at most about `shard_size` estimated stored bytes
    (`hashed`: their .json members carry the image hashes)."""
    shards: list[PlannedShard] = []
    classes = listing.classes or []
    for split in SPLITS:
        current: list[int] = []
        filled = 0.0  # estimated bytes of the members in `current`
        number = 0
        for index in shuffled_indices(listing, split, seed):
            s = listing.samples[index]
            estimate = estimated_sample_bytes(s.size * bytes_ratio, s.path, split,
                                              classes[s.label] if s.label is not None else None, s.label, hashed)
            if current and tar_bytes(round(filled + estimate)) > shard_size:
                shards.append(PlannedShard(tar_name(shard_stem(split, number)), split, tuple(current)))
                current, filled, number = [], 0, number + 1
            current.append(index)
            filled += estimate
        if current:
            shards.append(PlannedShard(tar_name(shard_stem(split, number)), split, tuple(current)))
    return shards


def probe_indices(listing: SourceListing, seed: int, count: int = 32) -> list[int]:
    """A seeded handful of samples whose stored/source size ratio sets `bytes_ratio`."""
    n = len(listing.samples)
    return sorted(random.Random(f"vaedist-probe:{seed}").sample(range(n), min(count, n)))


def listing_fingerprint(dataset: str, listing: SourceListing, options: dict) -> str:
    """Changes whenever the inputs or the options that shape the output change: a resume must not mix them."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"dataset": dataset, "root": str(listing.root), "options": options,
                              "classes": listing.classes}, sort_keys=True).encode())
    for s in listing.samples:
        digest.update(f"\n{s.path}\t{s.split}\t{s.label}\t{s.size}".encode())
    return digest.hexdigest()
