"""The Hamming search (vaedist/shard/hamming.py, _hamming.c) against brute force: numpy's count of differing
bits over every pair. Both ways (the multi-index at several chunk counts, faiss's flat index), within one
set and across two, and the growing index --dedup drop keeps, whose decisions must equal a brute-force
replay of the same rule."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaedist.shard import hamming
from vaedist.shard.duplicates import DEFAULT_THRESHOLD, DropFilter
from vaedist.shard.format import ImageHashes
from vaedist.shard.hamming import CodeIndex, GrowingIndex, multi_index_chunks, near_pairs

REPO = Path(__file__).resolve().parents[1]
# the multi-index at chunk counts whose flips per chunk differ (0, 1 and 2 bits at 8 bits), and the flat index
WAYS = [pytest.param(chunks, id=f"multi-index-{chunks}") for chunks in (4, 5, 9, 16)] + [pytest.param(None, id="flat")]


def _codes(seed: int = 0, count: int = 1000) -> np.ndarray:
    """Random codes with planted near copies at every distance up to 12 bits, some sharing a chunk's bits."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, count, dtype=np.uint64, endpoint=False)
    for n in range(0, count * 3 // 5, 3):
        flips = rng.choice(64, n % 13, replace=False)
        codes[n + 1] = codes[n] ^ np.uint64(sum(1 << int(f) for f in flips))
    codes[-20:] = codes[-40:-20] & np.uint64(0xFFFF_FFFF_0000_0000)  # a crowded bucket: equal low chunks
    codes[-1] = codes[-2]  # an identical pair
    return codes


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    bits_a = np.unpackbits(a.view(np.uint8).reshape(-1, 8), axis=1)
    bits_b = np.unpackbits(b.view(np.uint8).reshape(-1, 8), axis=1)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)


@pytest.fixture
def way(request, monkeypatch):
    chunks = request.param
    if chunks is not None and hamming._hamming is None:
        pytest.fail("vaedist.shard._hamming was not built: pip install -e . needs a C compiler")
    monkeypatch.setattr(hamming, "multi_index_chunks", lambda indexed, radius, threads=None: chunks)
    monkeypatch.setattr(hamming, "BLOCK", 128)  # the flat index in several blocks of queries, as on a real table
    return chunks


@pytest.mark.parametrize("way", WAYS, indirect=True)
@pytest.mark.parametrize("radius", [0, 5, DEFAULT_THRESHOLD, 12, 20])
def test_every_pair_within_the_radius_and_no_other(way, radius):
    codes = _codes()
    others = codes[::7] ^ np.uint64(0b1011)
    distance = _distances(codes, codes)
    i, j = np.nonzero(np.triu(distance <= radius, k=1))
    found = near_pairs(codes, radius)
    assert np.array_equal(found[0], i) and np.array_equal(found[1], j) and np.array_equal(found[2], distance[i, j])
    assert len(i) > 0  # the planted pairs are there to be found
    cross = _distances(codes, others)
    i, j = np.nonzero(cross <= radius)
    found = near_pairs(codes, radius, others)
    assert np.array_equal(found[0], i) and np.array_equal(found[1], j) and np.array_equal(found[2], cross[i, j])


@pytest.mark.parametrize("way", WAYS, indirect=True)
def test_empty_sets_have_no_pairs(way):
    codes = _codes(count=50)
    for found in (near_pairs(codes[:0], 8), near_pairs(codes, 8, codes[:0]), near_pairs(codes[:0], 8, codes),
                  near_pairs(codes[:1], 8)):
        assert [len(a) for a in found] == [0, 0, 0]


def test_the_multi_index_is_chosen_where_it_is_cheaper_and_the_flat_index_for_wide_radii():
    if hamming._hamming is None:
        pytest.fail("vaedist.shard._hamming was not built: pip install -e . needs a C compiler")
    assert multi_index_chunks(265_000, DEFAULT_THRESHOLD) == 5  # the fastest measured (0.84 s; 4: 1.8, 9: 3.0 s)
    assert multi_index_chunks(0, DEFAULT_THRESHOLD) == multi_index_chunks(100, DEFAULT_THRESHOLD) is not None
    assert multi_index_chunks(265_000, 40) is None  # every chunk's flips: more than comparing every pair
    # within 16 bits, 6 chunks took 13.6 s against the flat index's 11.3 s on 2 threads: the flat index then,
    # but not on one thread (DropFilter's), and never for a small set
    assert multi_index_chunks(265_000, 16, threads=2) is None and multi_index_chunks(265_000, 16, threads=1) == 6
    assert multi_index_chunks(4000, 30, threads=64) is not None


def test_the_c_search_refuses_what_is_not_its_layout():
    c = hamming._hamming
    if c is None:
        pytest.fail("vaedist.shard._hamming was not built: pip install -e . needs a C compiler")
    codes = _codes(count=100)
    index = c.build(codes, 8, 5)
    assert c.build(codes, 8, 5) == index  # the same codes, the same bytes (padding included)
    # the index's end: the last chunk's (12 bits) 4,097 offsets, the last of them the count (100), then 4
    # bytes of padding; its header: 5 numbers, then each chunk's shift (chunk 4's at bytes 36-40) and width
    last_past_codes, falling, past_bit_63 = bytearray(index), bytearray(index), bytearray(index)
    last_past_codes[-8:-4] = (200).to_bytes(4, sys.byteorder)
    falling[-12:-8] = (101).to_bytes(4, sys.byteorder)  # above the last one
    past_bit_63[36:40] = (60).to_bytes(4, sys.byteorder)  # 12 bits from bit 60
    assert int.from_bytes(index[-8:-4], sys.byteorder) == 100 and int.from_bytes(index[36:40], sys.byteorder) == 52
    for bad in (index[:-8], index + bytes(8), b"\0" * len(index), b"", bytes(last_past_codes), bytes(falling),
                bytes(past_bit_63)):
        with pytest.raises(ValueError, match="not an index"):
            c.search(bad, codes, False)
    with pytest.raises(ValueError, match="uint64"):
        c.build(b"\0" * 12, 8, 5)
    with pytest.raises(ValueError, match="radius 0..63 and chunks 4..16"):
        c.build(codes, 8, 3)
    with pytest.raises(ValueError, match="radius 0..63"):
        c.build(codes, 64, 5)
    with pytest.raises(ValueError, match="after_query needs the indexed codes"):
        c.search(index, codes[:10], True)


@pytest.mark.parametrize("way", WAYS, indirect=True)
def test_a_growing_index_finds_every_earlier_code_across_its_rebuilds(way, monkeypatch):
    monkeypatch.setattr(GrowingIndex, "REBUILD", 64)  # rebuilt several times within 1,000 codes
    codes = _codes(seed=1)
    growing = GrowingIndex(DEFAULT_THRESHOLD)
    distance = _distances(codes, codes)
    added = 0
    for size in [1, 7, 64, 3, 100, 1, 200, 24]:  # batches across the rebuilds, one of them alone past REBUILD
        batch = codes[added : added + size]
        q, rows, d = growing.pairs(batch)
        expected_q, expected_rows = np.nonzero(distance[added : added + size, :added] <= DEFAULT_THRESHOLD)
        assert np.array_equal(q, expected_q) and np.array_equal(rows, expected_rows)
        assert np.array_equal(d, distance[added + q, rows])
        growing.add(batch)
        added += size
    assert len(growing) == added


def _brute_force_drop(batches: list[list[tuple[ImageHashes, str]]], threshold: int) -> list[str | None]:
    """DropFilter's rule, image after image against every kept one: exact pixels first, then the closest code
    (the earliest kept on a tie)."""
    kept: list[tuple[ImageHashes, str]] = []
    reasons = []
    for batch in batches:
        for hashes, label in batch:
            twin = next((other for h, other in kept if h.exact == hashes.exact), None)
            near = [((h.perceptual ^ hashes.perceptual).bit_count(), n) for n, (h, _) in enumerate(kept)]
            near = [m for m in near if m[0] <= threshold]
            if twin is not None:
                reasons.append(f"same pixels as {twin}")
            elif near:
                distance, row = min(near)
                reasons.append(f"near copy (perceptual distance {distance}) of {kept[row][1]}")
            else:
                reasons.append(None)
                kept.append((hashes, label))
    return reasons


@pytest.mark.parametrize("way", WAYS, indirect=True)
def test_drop_decides_as_a_brute_force_replay_of_its_rule(way, monkeypatch):
    monkeypatch.setattr(GrowingIndex, "REBUILD", 100)
    codes = _codes(seed=2, count=900)
    rng = np.random.default_rng(3)
    exact = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in codes]
    for n in range(5, 900, 50):  # same pixels as an earlier image, with a code of its own (never near)
        exact[n] = exact[n - 5]
    hashes = [(ImageHashes(e, int(c)), f"train {n}.jpg") for n, (e, c) in enumerate(zip(exact, codes))]
    batches = [hashes[start : start + 64] for start in range(0, len(hashes), 64)]
    expected = _brute_force_drop(batches, DEFAULT_THRESHOLD)
    threads = []  # faiss's OpenMP threads at each flat search: one, in the sharder's writing process
    if way is None:
        import faiss

        search = faiss.IndexBinaryFlat.range_search
        monkeypatch.setattr(faiss.IndexBinaryFlat, "range_search",
                            lambda self, *a: threads.append(faiss.omp_get_max_threads()) or search(self, *a))
    drop = DropFilter(DEFAULT_THRESHOLD)
    # as a resumed run replays the kept images of its finished shards
    drop.keep([h for h, reason in zip(batches[0][:10], expected) if reason is None])
    decided = expected[:10] + drop.decide(batches[0][10:])
    for batch in batches[1:]:
        decided += drop.decide(batch)
    assert decided == expected
    assert set(threads) == ({1} if way is None else set())
    assert sum(r is not None and r.startswith("same pixels") for r in decided) >= 10
    assert sum(r is not None and r.startswith("near copy") for r in decided) >= 100


def test_a_code_index_refuses_a_radius_outside_the_code():
    with pytest.raises(ValueError, match="0..63"):
        CodeIndex(_codes(count=100), 64)


def test_the_index_benchmark_times_both_ways_and_they_find_the_same_pairs():
    result = subprocess.run([sys.executable, "-m", "vaedist.bench", "dedup", "index", "--hashes", "20000"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hamming.py takes the multi-index for 20000 codes within 8 bits"
    assert "multi-index (5 chunks, 1 thread): all pairs within the threshold in" in lines[1]
    assert "flat index (" in lines[2] and lines[3] == "both ways found the same pairs"
    assert all("2000 pairs found, planted pairs found 100.0% (2000 planted)" in line for line in lines[1:3])
