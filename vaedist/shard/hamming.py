"""Hamming search over 64-bit perceptual hashes: every pair within a radius (duplicates.py's near pairs).

    near_pairs(codes, radius)             every i < j with Hamming(codes[i], codes[j]) <= radius
    near_pairs(codes, radius, others)     every (i, j) across two sets within the radius
    CodeIndex(codes, radius)              an index over codes, searched by any number of queries
    GrowingIndex(radius)                  codes added batch by batch, each batch searched against the earlier ones

Two ways, the same pairs (tests/test_hamming.py holds both to a brute-force count):
- multi-index hashing (`_hamming`, C: vaedist/shard/_hamming.c says how): each code is compared only with the
  codes that share one of its chunks of bits within a few bit flips. All pairs within 8 bits of 265,000 random
  codes in 0.86 s on one core, against 15.9 s for faiss's flat index on 2, side by side (`python -m
  vaedist.bench dedup index`, 2-core AMD EPYC VM, 2026-12-06):
  a COCO + Food-101 search is no longer the sharder's longest pause, and `--dedup drop`'s check of each
  image against those kept stays cheap as they grow.
- faiss's `IndexBinaryFlat` range search: every pair, a popcount each, on all cores through OpenMP. Taken
  where `_hamming` is not built (no C compiler at install) and where its cost estimate says the flat index
  is cheaper: large radii, where the chunks' flips multiply (`multi_index_chunks`).
"""
from __future__ import annotations

import os
from functools import lru_cache
from math import comb

import numpy as np

try:
    import vaedist.shard._hamming as _hamming
except ImportError:  # not built: setup.py's extension is optional
    _hamming = None

CODE_BITS = 64
BLOCK = 16_384  # query rows per faiss call: bounds the result buffers, keeps every core busy
# The multi-index's cost per query, in ns: PROBE per bucket probed, CANDIDATE per code read in a probed
# bucket; the flat index's, FLAT per indexed code and thread. Fitted on a 2-core AMD EPYC VM, 2026-12-06, to
# all pairs among 265,000 random codes: within 8 bits with 4, 5, 6 and 9 chunks (1.8, 0.84, 2.4, 3.0 s; 5
# estimated at 0.85 s); faiss's flat index on 2 threads, 10.4-15.9 s within 8 bits and 11.3 s within 16
# (where 6 chunks took 13.6 s). Only the choice depends on them, never the pairs.
PROBE, CANDIDATE, FLAT = 8.0, 1.0, 0.35
CHUNKS = range(4, 17)  # what _hamming.build takes: chunks of at most 16 bits
# Below this many codes the flat index is never taken: either search then takes a few ms (1,000 codes within
# 8 bits: 0.56 ms multi-index, 0.43 ms flat, same VM), and the multi-index spares the process faiss's import
# (0.03-0.2 s) and its OpenMP threads, which spin on the workers' cores in the sharder's writing process.
SMALL = 4096


def multi_index_built() -> bool:
    """Whether the multi-index (`_hamming`, C) was built: without it every search takes the flat index."""
    return _hamming is not None


def cheapest_chunks(indexed: int, radius: int) -> tuple[int, float]:
    """(chunks, estimated ns per query) of the multi-index's cheapest chunk count for `indexed` codes and
    `radius`. The estimate takes the codes as uniform: real perceptual hashes cluster, which fills some
    buckets more (a slower search), but a pair is never missed for it."""
    costs = {chunks: sum(p * (PROBE + indexed / 2**w * CANDIDATE) for p, w in probed)
             for chunks, probed in _probes(radius).items()}
    chunks = min(costs, key=costs.get)
    return chunks, costs[chunks]


@lru_cache(maxsize=None)
def _probes(radius: int) -> dict[int, list[tuple[int, int]]]:
    """chunks -> (buckets probed, bits) of each chunk: a GrowingIndex asks for each batch, hence the cache."""
    plans = {}
    for chunks in CHUNKS:
        within = radius // chunks  # some chunk of a pair within the radius differs in at most this many bits
        widths = [CODE_BITS // chunks + (c < CODE_BITS % chunks) for c in range(chunks)]
        plans[chunks] = [(sum(comb(w, k) for k in range(min(within, w) + 1)), w) for w in widths]
    return plans


def multi_index_chunks(indexed: int, radius: int, threads: int | None = None) -> int | None:
    """The chunks to search `indexed` codes within `radius` with, or None for the flat index on `threads`
    (None: as many as faiss takes, one per core): where it is estimated cheaper (wide radii, where the chunks'
    flips multiply, and more so with many cores) or `_hamming` is not built."""
    if _hamming is None:
        return None
    chunks, cost = cheapest_chunks(indexed, radius)
    return chunks if indexed < SMALL or cost < indexed * FLAT / (threads or _cores()) else None


def _cores() -> int:
    """The cores this process may run on: the threads faiss's OpenMP starts unless OMP_NUM_THREADS says."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or cores


def _as_bytes(codes: np.ndarray) -> np.ndarray:
    """uint64 [n] -> uint8 [n, 8], the layout faiss's binary indexes take (byte order does not matter to a
    Hamming distance, as long as both sides share it)."""
    return np.ascontiguousarray(codes, dtype=np.uint64).view(np.uint8).reshape(-1, 8)


class CodeIndex:
    """An index over `codes` (uint64 [n]) that finds, for queries, the codes within `radius` bits.
    `threads`: faiss's OpenMP threads for the flat index (None: all); the multi-index runs on one.
    `flat`: None chooses (multi_index_chunks); True takes the flat index, False the multi-index (benchmarks)."""

    def __init__(self, codes: np.ndarray, radius: int, threads: int | None = None, flat: bool | None = None):
        if not 0 <= radius < CODE_BITS:
            raise ValueError(f"a Hamming radius must be in 0..{CODE_BITS - 1}, got {radius}")
        if flat is False and _hamming is None:
            raise RuntimeError("vaedist.shard._hamming is not built (no C compiler at install): no multi-index")
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64)
        self.radius, self.threads = radius, threads
        self.chunks = (multi_index_chunks(len(self.codes), radius, threads) if flat is None
                       else None if flat else cheapest_chunks(len(self.codes), radius)[0])
        self._multi = _hamming.build(self.codes, radius, self.chunks) if self.chunks is not None else None
        self._flat = None  # faiss's IndexBinaryFlat over all the codes, made by the first search of other queries

    def __len__(self) -> int:
        return len(self.codes)

    def pairs(self, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, code row, distance) of every pair within the radius, sorted by (query, code).
        queries None: the indexed codes against each other, each pair once (query row < code row)."""
        within = queries is None
        queries = self.codes if within else np.ascontiguousarray(queries, dtype=np.uint64)
        if not len(self.codes) or not len(queries):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        if self._multi is not None:
            found = _hamming.search(self._multi, queries, within)
            i, j, d = (np.frombuffer(b, t) for b, t in zip(found, (np.int64, np.int64, np.int16)))
        else:
            i, j, d = self._flat_pairs(queries, within)
        order = np.lexsort((j, i))
        return i[order], j[order], d[order]

    def _flat_pairs(self, queries: np.ndarray, within: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import faiss  # ~0.2 s to import: only the runs that compare hashes without _hamming pay it

        codes, targets = _as_bytes(queries), _as_bytes(self.codes)
        found_i, found_j, found_d = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int16)]
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.threads or threads)
        try:
            for start in range(0, len(codes), BLOCK):
                block = codes[start : start + BLOCK]
                offset = start if within else 0  # within one set, each row against the rows from its block on
                if offset >= len(targets):
                    break
                if within:
                    index = faiss.IndexBinaryFlat(CODE_BITS)
                    index.add(targets[offset:])
                else:  # the same for every batch of queries (a GrowingIndex's): made once
                    if self._flat is None:
                        self._flat = faiss.IndexBinaryFlat(CODE_BITS)
                        self._flat.add(targets)
                    index = self._flat
                limits, distances, labels = index.range_search(block, self.radius + 1)  # faiss: distance < radius
                rows = np.repeat(np.arange(start, start + len(block)), np.diff(limits).astype(np.int64))
                labels = labels.astype(np.int64) + offset
                keep = rows < labels if within else np.ones(len(rows), bool)
                found_i.append(rows[keep])
                found_j.append(labels[keep])
                found_d.append(distances[keep].astype(np.int16))
        finally:
            faiss.omp_set_num_threads(threads)
        return tuple(np.concatenate(a) for a in (found_i, found_j, found_d))


def near_pairs(codes: np.ndarray, radius: int, others: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of every pair within `radius`: i < j inside `codes` when `others` is None, else
    i in `codes` and j in `others`. Sorted by (i, j)."""
    index = CodeIndex(codes if others is None else others, radius)
    return index.pairs() if others is None else index.pairs(codes)


class GrowingIndex:
    """Codes added a batch at a time (`add`); `pairs(queries)` finds those within the radius among all the
    codes added so far. The codes added since the index was last built (at most REBUILD) are searched by an
    index of their own, made per call; then the whole index is built again: its cost, linear in the codes,
    is paid once per REBUILD codes, never per batch."""

    REBUILD = 4096

    def __init__(self, radius: int, threads: int | None = None):
        self.radius, self.threads = radius, threads
        self._codes = np.zeros(1024, np.uint64)  # grows by doubling
        self._count = 0
        self._built = CodeIndex(self._codes[:0], radius, threads)

    def __len__(self) -> int:
        return self._count

    def add(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, dtype=np.uint64)
        while self._count + len(codes) > len(self._codes):
            self._codes = np.concatenate([self._codes, np.zeros(len(self._codes), np.uint64)])
        self._codes[self._count : self._count + len(codes)] = codes
        self._count += len(codes)
        if self._count - len(self._built) >= self.REBUILD:
            self._built = CodeIndex(self._codes[: self._count].copy(), self.radius, self.threads)

    def pairs(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, row among the codes added, distance) of every pair within the radius, sorted."""
        built = len(self._built)
        i, j, d = self._built.pairs(queries)
        if self._count > built:
            recent = CodeIndex(self._codes[built : self._count], self.radius, self.threads)
            ri, rj, rd = recent.pairs(queries)
            i, j, d = np.concatenate([i, ri]), np.concatenate([j, rj + built]), np.concatenate([d, rd])
            order = np.lexsort((j, i))
            i, j, d = i[order], j[order], d[order]
        return i, j, d
