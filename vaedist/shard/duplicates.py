"""Exact and near duplicates among image hashes (definitions: format.EXACT_HASH, format.PERCEPTUAL_HASH).

    exact_groups(exact)                      rows sharing one exact hash (groups of two or more)
    find_duplicates({"train": set, ...})     the report: within each set, across each pair of sets
    DropFilter(threshold)                    --dedup drop's decision, one image after the other

The near pairs come from hamming.py's search (multi-index hashing in C, or faiss's flat index), exact
either way: every pair within the threshold (tests/test_hamming.py checks it against brute force).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vaedist.shard.format import DUPLICATES_NAME, EXACT_HASH, EXACT_HASH_BYTES, PERCEPTUAL_HASH, ImageHashes
from vaedist.shard.hamming import CodeIndex, GrowingIndex, near_pairs

# Hamming distance <= this between two perceptual hashes = a near duplicate (--dedup-threshold). Chosen by
# measurement (`python -m vaedist.bench dedup threshold`, README "Duplicates"; re-measured 2026-12-01 for the
# sampled thumbnail, TABLE_VERSION 2): on the sample's 14 photographs every resized copy (75/50/25 %) is within
# 8 bits (max 6/6/8), every re-compression down to JPEG quality 20 within 6 (quality 10: 13 of 14 within 8),
# 12 of 14 2 %-crops within 8; the closest of 2,359 distinct pairs is 18 bits apart. 10 would catch 3 more
# of the 140 copies but, at 265k images, ~36x more chance pairs (~9 at 8 bits).
DEFAULT_THRESHOLD = 8
# Groups or pairs the shard directory's duplicates.json lists per kind (the counts are always whole). Measured
# (`python -m vaedist.bench scale --dedup report`, 2026-12-01): a 160k-image set built from crops of 14 photos
# had pairs enough for a 1.37 GB report (then inside the manifest, read by every start-up); 1,000 of each kind
# are ~0.26 MB. `python -m vaedist.dedup` lists them all.
REPORT_LISTED = 1000
def exact_groups(exact: np.ndarray) -> list[np.ndarray]:
    """Rows that share one exact hash, each group sorted, groups in the order of their first row."""
    if len(exact) == 0:
        return []
    keys = np.ascontiguousarray(exact).view(f"V{EXACT_HASH_BYTES}").ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    rows = np.argsort(inverse, kind="stable")
    groups = np.split(rows, np.cumsum(counts)[:-1])
    return sorted((g for g in groups if len(g) > 1), key=lambda g: int(g[0]))


@dataclass
class HashSet:
    """One set of images to compare (a split of a shard directory): their hashes, and how to name them."""

    name: str  # "train"; in the dedup CLI "shards/coco:val"
    exact: np.ndarray  # [n] V16
    phash: np.ndarray  # [n] uint64
    paths: Callable[[list[int]], list[str]]  # rows -> the paths to report (only the rows a report names)


@dataclass
class DuplicateReport:
    """What find_duplicates found. `to_json()` is the shard directory's duplicates.json and the CLI's report.json:

    {"threshold": 8, "exact_hash": EXACT_HASH, "perceptual_hash": PERCEPTUAL_HASH, "listed": 1000 | null,
     "within": {"train": {"images": 118287, "exact_group_count": 2, "exact_copies": 3, "near_pair_count": 1,
                          "exact_groups": [[path, path, ...], ...],
                          "near_pairs": [{"a": path, "b": path, "distance": 4}, ...]}, ...},
     "across": [{"a": "train", "b": "val", "exact_pairs": 1, "near_pairs": 2,
                 "pairs": [{"a": path in a, "b": path in b, "distance": 0, "exact": true}, ...]}, ...]}

    Near pairs within a set leave out the pairs of one exact group (those are the groups); pairs are sorted
    exact first, then by distance. With `listed` set, each list holds at most that many (the first ones) and
    the counts say how many there are: the shard directory's copy is capped (REPORT_LISTED), since a set full
    of near copies has pairs by the million; `python -m vaedist.dedup` writes them all.
    """

    threshold: int
    within: dict[str, dict] = field(default_factory=dict)
    across: list[dict] = field(default_factory=list)
    listed: int | None = None

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "exact_hash": EXACT_HASH, "perceptual_hash": PERCEPTUAL_HASH,
                "listed": self.listed, "within": self.within, "across": self.across}


def _names(hashes: HashSet, rows) -> dict[int, str]:
    unique = sorted({int(r) for r in rows})
    return dict(zip(unique, hashes.paths(unique)))


def _within(hashes: HashSet, threshold: int, listed: int | None) -> dict:
    groups = exact_groups(hashes.exact)
    i, j, d = near_pairs(hashes.phash, threshold)
    other = hashes.exact[i] != hashes.exact[j]  # exact copies are reported as groups, not again as pairs
    i, j, d = i[other], j[other], d[other]
    near_count = len(d)
    order = np.lexsort((j, i, d))[:listed]  # closest first
    shown_groups, i, j, d = groups[:listed], i[order], j[order], d[order]
    names = _names(hashes, np.concatenate([*shown_groups, i, j]) if shown_groups or len(i) else [])
    return {"images": len(hashes.phash), "exact_group_count": len(groups),
            "exact_groups": [[names[int(r)] for r in g] for g in shown_groups],
            "exact_copies": sum(len(g) - 1 for g in groups), "near_pair_count": near_count,
            "near_pairs": [{"a": names[a], "b": names[b], "distance": dist}
                           for dist, a, b in zip(d.tolist(), i.tolist(), j.tolist())]}


def _across(a: HashSet, b: HashSet, threshold: int, listed: int | None) -> dict:
    i, j, d = near_pairs(a.phash, threshold, b.phash)
    exact = a.exact[i] == b.exact[j]
    exact_pairs, near = int(exact.sum()), int((~exact).sum())
    order = np.lexsort((j, i, d, ~exact))[:listed]  # exact first, then the closest
    i, j, d, exact = i[order], j[order], d[order], exact[order]
    names_a, names_b = _names(a, i), _names(b, j)
    return {"a": a.name, "b": b.name, "exact_pairs": exact_pairs, "near_pairs": near,
            "pairs": [{"a": names_a[x], "b": names_b[y], "distance": dist, "exact": e}
                      for x, y, dist, e in zip(i.tolist(), j.tolist(), d.tolist(), exact.tolist())]}


def find_duplicates(sets: list[HashSet], threshold: int = DEFAULT_THRESHOLD, listed: int | None = None
                    ) -> DuplicateReport:
    """Exact groups and near pairs within each set, and every exact or near pair across each two sets.
    `listed` caps each list of groups or pairs (the first ones: exact, then the closest); the counts stay whole."""
    report = DuplicateReport(threshold, listed=listed)
    for hashes in sets:
        report.within[hashes.name] = _within(hashes, threshold, listed)
    for n, a in enumerate(sets):
        for b in sets[n + 1 :]:
            report.across.append(_across(a, b, threshold, listed))
    return report


class DropFilter:
    """--dedup drop, one image at a time in the order the sharder writes them (val first, then train):
    an image is kept unless its pixels or its perceptual hash (within the threshold) match an image kept
    before it; the kept ones are what later images are compared with.

    The decision depends only on that order and the hashes, so a resumed run that first replays the kept
    images of its finished shards (`keep`) decides every later image exactly as an uninterrupted run.
    """

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._exact: dict[bytes, str] = {}  # exact hash -> the kept image's label ("val val2017/x.jpg")
        # the kept perceptual hashes. One thread: this runs in the sharder's writing process while the workers
        # use every core, and faiss's idle OpenMP threads (where it is the flat index) would spin on them.
        self._index = GrowingIndex(threshold, threads=1)
        self._labels: list[str] = []

    def keep(self, kept: list[tuple[ImageHashes, str]]) -> None:
        """Remember these (hashes, label) as kept, in order: what later images are compared with."""
        for hashes, label in kept:
            self._remember(hashes, label)
        self._index.add(np.array([h.perceptual for h, _ in kept], np.uint64))

    def _remember(self, hashes: ImageHashes, label: str) -> None:
        """A kept image's exact hash and label (row len(self._labels)); its code goes to the index apart."""
        self._exact.setdefault(hashes.exact, label)
        self._labels.append(label)

    def decide(self, batch: list[tuple[ImageHashes, str]]) -> list[str | None]:
        """For each (hashes, label) in order: None (keep: it is remembered) or the reason it is dropped."""
        codes = np.array([h.perceptual for h, _ in batch], np.uint64)
        # (distance, row in the kept order) of each image's matches among the images kept before this batch
        matches: list[list[tuple[int, int]]] = [[] for _ in batch]
        for n, row, distance in zip(*(a.tolist() for a in self._index.pairs(codes))):
            matches[n].append((distance, row))
        # and among the images of this batch before it, which count once they are kept
        earlier: dict[int, list[tuple[int, int]]] = {}
        for a, b, distance in zip(*(a.tolist() for a in CodeIndex(codes, self.threshold, threads=1).pairs())):
            earlier.setdefault(b, []).append((distance, a))
        kept_row: dict[int, int] = {}  # position in the batch -> row in the kept order
        reasons: list[str | None] = []
        for n, (hashes, label) in enumerate(batch):
            found = matches[n] + [(d, kept_row[a]) for d, a in earlier.get(n, ()) if a in kept_row]
            twin = self._exact.get(hashes.exact)
            if twin is not None:
                reasons.append(f"same pixels as {twin}")
            elif found:
                distance, row = min(found)
                reasons.append(f"near copy (perceptual distance {distance}) of {self._labels[row]}")
            else:
                reasons.append(None)
                kept_row[n] = len(self._labels)
                self._remember(hashes, label)
        self._index.add(codes[list(kept_row)])  # once the batch is decided: its own pairs came from `earlier`
        return reasons


def _kind(pair: dict) -> str:
    return "same pixels" if pair["exact"] else f"near ({pair['distance']})"


def duplicates_summary(report: dict, shown: int = 5) -> list[str]:
    """Lines for a terminal from a DuplicateReport's JSON: counts, then the first pairs of each kind."""
    lines = [f"  duplicates (pixels identical, or perceptual hashes within {report['threshold']} bits):"]
    for name, found in report["within"].items():
        # manifests written before the lists were capped have no counts: their lists are whole
        groups = found.get("exact_group_count", len(found["exact_groups"]))
        pairs = found.get("near_pair_count", len(found["near_pairs"]))
        lines.append(f"    within {name}: {groups} groups of identical images "
                     f"({found['exact_copies']} extra copies), {pairs} near pairs")
        lines += [f"      same pixels: {', '.join(group)}" for group in found["exact_groups"][:shown]]
        lines += [f"      near ({p['distance']}): {p['a']}  {p['b']}" for p in found["near_pairs"][:shown]]
    for pair in report["across"]:
        lines.append(f"    {pair['a']} <-> {pair['b']}: {pair['exact_pairs']} identical, {pair['near_pairs']} near")
        lines += [f"      {_kind(p)}: {p['a']}  {p['b']}" for p in pair["pairs"][:shown]]
    listed = report.get("listed")
    counts = [n for found in report["within"].values()
              for n in (found.get("exact_group_count", 0), found.get("near_pair_count", 0))]
    counts += [pair["exact_pairs"] + pair["near_pairs"] for pair in report["across"]]
    if listed is not None and any(n > listed for n in counts):
        lines.append(f"    ({DUPLICATES_NAME} lists the first {listed} of each kind; "
                     "python -m vaedist.dedup SHARDS --out DIR lists them all)")
    return lines
