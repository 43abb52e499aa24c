"""Duplicate-finder benchmarks: the Hamming search at dataset scale, and the near-copy threshold.

    python -m vaedist.bench dedup index [--hashes 265000] [--threshold 8] [--planted 2000]
    python -m vaedist.bench dedup threshold

index      a synthetic table of --hashes random 64-bit perceptual hashes (COCO 2017 + Food-101 is ~265,000
           images) with --planted pairs at every distance up to the threshold: the time of `near_pairs` (all
           pairs within the threshold) both ways side by side, the multi-index (hamming.py's choice of chunks,
           one core) and faiss's flat index (IndexBinaryFlat range search, every core); the pairs each found,
           which must be the same, and the share of planted pairs among them (must be 100 %). A flat index
           compares every pair, so its time does not depend on how real hashes cluster; a multi-index's does
           (real hashes fill some of its buckets more than random ones do).
threshold  the embedded sample's 14 real photographs: the perceptual distance of planted copies of each
           (resized, re-compressed, cropped, re-saved) and of distinct images (the photographs and their
           disjoint quarters, minus the pairs that overlap); per threshold, the copies found and the distinct
           pairs matched by mistake. The default threshold (duplicates.DEFAULT_THRESHOLD) is chosen from it.
"""
from __future__ import annotations

import argparse
import io
import time
from itertools import combinations

import numpy as np
from PIL import Image

from vaedist.sample import photo_paths
from vaedist.shard.duplicates import DEFAULT_THRESHOLD
from vaedist.shard.hamming import CodeIndex, cheapest_chunks, multi_index_built, multi_index_chunks
from vaedist.shard.fingerprint import perceptual_hash


def synthetic_hashes(count: int, planted: int, threshold: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`count` random codes; the first 2*`planted` rows are pairs (2k, 2k+1) at distance k % (threshold + 1)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, np.iinfo(np.uint64).max, count, dtype=np.uint64, endpoint=True)
    pairs = []
    for k in range(planted):
        flips = rng.choice(64, k % (threshold + 1), replace=False)
        codes[2 * k + 1] = codes[2 * k] ^ np.uint64(sum(1 << int(f) for f in flips))
        pairs.append((2 * k, 2 * k + 1))
    return codes, pairs


def bench_index(count: int, threshold: int, planted: int) -> None:
    import faiss  # the flat index's library: only its row needs the thread count

    codes, pairs = synthetic_hashes(count, planted, threshold)
    chosen = "multi-index" if multi_index_chunks(count, threshold) is not None else "flat index"
    ways = [(f"multi-index ({cheapest_chunks(count, threshold)[0]} chunks, 1 thread)", False)] if multi_index_built() else []
    ways += [(f"flat index ({faiss.omp_get_max_threads()} threads)", True)]
    print(f"hamming.py takes the {chosen} for {count} codes within {threshold} bits"
          + ("" if multi_index_built() else " (vaedist.shard._hamming is not built: no multi-index)"))
    found_by = {}
    for name, flat in ways:
        started = time.perf_counter()
        i, j, d = CodeIndex(codes, threshold, flat=flat).pairs()
        elapsed = time.perf_counter() - started
        found = set(zip(i.tolist(), j.tolist()))
        found_by[name] = found
        recall = sum(p in found for p in pairs) / len(pairs) if pairs else 1.0
        print(f"{count} hashes, threshold {threshold} bits, {name}: all pairs within the threshold in {elapsed:.2f} s "
              f"({count * (count - 1) / 2 / elapsed / 1e9:.2f} G pairs/s); {len(i)} pairs found, "
              f"planted pairs found {recall:.1%} ({len(pairs)} planted)")
    if len(found_by) == 2:
        first, second = found_by.values()
        print("both ways found the same pairs" if first == second else
              f"the two ways differ: {len(first ^ second)} pairs found by one only  <- a bug: report it")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    out.seek(0)
    return Image.open(out).convert(img.mode)


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share), round(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


COPIES = {
    "resized 75 %": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC),
    "resized 50 %": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "resized 25 %": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    "JPEG q50": lambda im: _jpeg(im, 50),
    "JPEG q20": lambda im: _jpeg(im, 20),
    "JPEG q10": lambda im: _jpeg(im, 10),
    "cropped 2 %": lambda im: _crop(im, 0.02),
    "cropped 5 %": lambda im: _crop(im, 0.05),
    "cropped 10 %": lambda im: _crop(im, 0.10),
    "half size + q30": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR), 30),
}


def _quarters(img: Image.Image) -> list[Image.Image]:
    w, h = img.width // 2, img.height // 2
    return [img.crop((x, y, x + w, y + h)) for y in (0, h) for x in (0, w)]


def _hash(img: Image.Image) -> int:
    return perceptual_hash(img if img.mode in ("RGB", "L") else img.convert("RGB"))


def bench_threshold() -> None:
    photos = {}
    for path in photo_paths():
        with Image.open(path) as img:
            photos[path.stem] = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
    originals = {name: _hash(img) for name, img in photos.items()}
    copies = {kind: [(_hash(make(img)) ^ originals[name]).bit_count() for name, img in photos.items()]
              for kind, make in COPIES.items()}
    # distinct: the photographs and their quarters; a quarter overlaps its own photograph, so that pair is out
    distinct = [(name, True, code) for name, code in originals.items()]
    distinct += [(name, False, _hash(q)) for name, img in photos.items() for q in _quarters(img)]
    distances = [(a ^ b).bit_count() for (na, whole_a, a), (nb, whole_b, b) in combinations(distinct, 2)
                 if not (na == nb and (whole_a or whole_b))]
    distances = np.array(distances)
    print(f"{len(photos)} photographs; perceptual distance (bits of 64) of each kind of copy to its original:")
    for kind, found in copies.items():
        print(f"  {kind:<18} max {max(found):>2}  mean {np.mean(found):5.1f}  {found}")
    print(f"{len(distances)} pairs of distinct images (photographs and their quarters): min {distances.min()}, "
          f"1st percentile {np.percentile(distances, 1):.0f}, median {np.median(distances):.0f}")
    print(f"{'threshold':>9}  copies found (of {sum(len(v) for v in copies.values())})  distinct pairs matched")
    for threshold in range(0, 17, 2):
        caught = sum(d <= threshold for found in copies.values() for d in found)
        wrong = int((distances <= threshold).sum())
        marker = "  <- default" if threshold == DEFAULT_THRESHOLD else ""
        print(f"{threshold:>9}  {caught:>5}{'':>21}{wrong:>5}{marker}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench dedup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    index = sub.add_parser("index", help="all pairs within the threshold among N synthetic hashes")
    index.add_argument("--hashes", type=int, default=265_000, help="table size (default: %(default)s, COCO + Food-101)")
    index.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD, help="bits (default: %(default)s)")
    index.add_argument("--planted", type=int, default=2000, help="planted near pairs (default: %(default)s)")
    sub.add_parser("threshold", help="distances of planted copies and of distinct photographs")
    args = parser.parse_args(argv)
    if args.what == "index":
        bench_index(args.hashes, args.threshold, min(args.planted, args.hashes // 2))
    else:
        bench_threshold()
    return 0
