"""python -m vaedist.dedup SHARDS [SHARDS ...] [--out DIR]: duplicates within and across shard directories
already written (COCO against Food-101, say), from their per-split hashes, without decoding them again.

    report = compare_shard_dirs(["shards/coco", "shards/food101"], "dedup-report")

Each split of each directory is one set (`shards/coco:train`); the report has, within each set, its groups of
identical images and its near pairs, and across each two sets every identical or near pair
(shard/duplicates.py's DuplicateReport). It writes, atomically:

    OUT/report.json         the report, each image named `<dir>:<split>:<path in the dataset root>`
    OUT/contact_sheet.png   the closest near-duplicate pairs side by side, with their distance, and the
                            pairs nearest the threshold, so a person can judge it

Only the images a report names are read from the tars (their .json for the path, their .jpg for the sheet),
through the shards' DALI index: nothing is hashed or decoded again but the sheet's thumbnails.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from vaedist.errors import UserError, run_cli
from vaedist.files import write_bytes_atomic, write_text_atomic
from vaedist.shard.duplicates import DEFAULT_THRESHOLD, DuplicateReport, HashSet, duplicates_summary, find_duplicates
from vaedist.shard.format import PERCEPTUAL_HASH_BITS, ShardIndex, load_manifest, parse_index
from vaedist.shard.table import read_hashes, read_table

REPORT_NAME = "report.json"
SHEET_NAME = "contact_sheet.png"
DEFAULT_SHEET_PAIRS = 24
THUMB = 160  # pixels, the longer side of each image on the contact sheet


@dataclass
class SplitSamples:
    """One split of one shard directory: its table, its hashes (the same rows), and its samples' members read
    on demand via the .idx."""

    shard_dir: Path
    split: str
    table: object  # numpy structured array (read_table): key, shard, position
    hashes: object  # numpy structured array (read_hashes): exact, phash
    shards: list = field(default_factory=list)  # manifest's ShardInfo, in table order
    _indexes: dict[int, ShardIndex] = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict)  # path -> row, of the rows a report has named

    @property
    def name(self) -> str:
        return f"{self.shard_dir}:{self.split}"

    def member(self, row: int, ext: str) -> bytes:
        shard = int(self.table["shard"][row])
        if shard not in self._indexes:
            info = self.shards[shard]
            self._indexes[shard] = parse_index(self.shard_dir / info.name, self.shard_dir / info.index)
        index = self._indexes[shard]
        offset, size = index.members[int(self.table["position"][row])][ext]
        with open(index.tar, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise UserError(f"shard '{index.tar}' is shorter than its index says: re-copy it or re-shard it")
        return data

    def paths(self, rows: list[int]) -> list[str]:
        """The report's names of `rows`: `<dir>:<split>:<path>`, the path from each sample's .json."""
        names = []
        for row in rows:
            path = json.loads(self.member(row, "json"))["path"]
            self._rows[path] = row
            names.append(f"{self.name}:{path}")
        return names

    def row_of(self, path: str) -> int:
        return self._rows[path]


def load_split_samples(shard_dirs: list[str | Path]) -> list[SplitSamples]:
    """Every split of every directory, with its table and hashes (one-line errors: no manifest, no hashes...)."""
    found = []
    for shard_dir in shard_dirs:
        shard_dir = Path(shard_dir)
        manifest = load_manifest(shard_dir)
        for split, info in manifest.splits.items():
            table = read_table(shard_dir, manifest, split, columns=("key", "shard", "position"))
            found.append(SplitSamples(shard_dir, split, table, read_hashes(shard_dir, manifest, split), list(info.shards)))
    if len({s.name for s in found}) < len(found):
        raise UserError("a shard directory is named twice: give each one once")
    return found


def compare_shard_dirs(shard_dirs: list[str | Path], out: str | Path, threshold: int = DEFAULT_THRESHOLD,
                       sheet_pairs: int = DEFAULT_SHEET_PAIRS) -> DuplicateReport:
    """Find the duplicates, write OUT/report.json and OUT/contact_sheet.png; return the report."""
    if not 0 <= threshold < PERCEPTUAL_HASH_BITS:
        raise UserError(f"--threshold must be in 0..{PERCEPTUAL_HASH_BITS - 1} bits, got {threshold}")
    if sheet_pairs < 0:
        raise UserError(f"--sheet-pairs must be 0 or more, got {sheet_pairs}")
    samples = load_split_samples(shard_dirs)
    sets = [HashSet(s.name, s.hashes["exact"], s.hashes["phash"], s.paths) for s in samples]
    report = find_duplicates(sets, threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(report, {s.name: s for s in samples}, sheet_pairs)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes_atomic(out / SHEET_NAME, buffer.getvalue())
    write_text_atomic(out / REPORT_NAME, json.dumps(report.to_json(), indent=1) + "\n")
    return report


def sheet_pairs_of(report: DuplicateReport, count: int) -> list[tuple[str, str, int]]:
    """The near (not pixel-identical) pairs the sheet shows: the closest first; when there are more than
    `count`, half of them are the farthest apart, the ones nearest the threshold, which a person judges it by."""
    pairs = [(p["a"], p["b"], p["distance"]) for found in report.within.values() for p in found["near_pairs"]]
    pairs += [(p["a"], p["b"], p["distance"]) for across in report.across for p in across["pairs"] if not p["exact"]]
    pairs.sort(key=lambda p: (p[2], p[0], p[1]))
    if len(pairs) <= count:
        return pairs
    return pairs[: count - count // 2] + pairs[len(pairs) - count // 2 :]


def contact_sheet(report: DuplicateReport, samples: dict[str, SplitSamples], count: int) -> Image.Image:
    """A PNG-ready image: one row per pair, both images as thumbnails, their distance and names."""
    pairs = sheet_pairs_of(report, count)
    label_width, row_height, pad = 360, THUMB + 8, 4
    sheet = Image.new("RGB", (2 * (THUMB + pad) + label_width, max(1, len(pairs)) * row_height + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), f"{len(pairs)} near pairs (perceptual hashes within {report.threshold} of 64 bits)"
              if pairs else "no near-duplicate pairs", fill="black")
    for n, (a, b, distance) in enumerate(pairs):
        top = 24 + n * row_height
        for column, name in enumerate((a, b)):
            thumb = _thumbnail(samples, name)
            sheet.paste(thumb, (pad + column * (THUMB + pad), top))
        draw.text((2 * (THUMB + pad) + pad, top + 4), f"distance {distance}\n{a}\n{b}", fill="black")
    return sheet


def _thumbnail(samples: dict[str, SplitSamples], name: str) -> Image.Image:
    set_name, path = name.rsplit(":", 1)
    split = samples[set_name]
    row = split.row_of(path)
    with Image.open(io.BytesIO(split.member(row, "jpg"))) as img:
        return ImageOps.contain(img.convert("RGB"), (THUMB, THUMB))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vaedist.dedup", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", metavar="SHARDS", help="shard directories (python -m vaedist.shard's --out)")
    parser.add_argument("--out", default="dedup-report", help="folder for report.json and contact_sheet.png "
                        "(default: %(default)s)")
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD, metavar="BITS",
                        help="near copies: perceptual hashes at most this many of 64 bits apart (default: %(default)s)")
    parser.add_argument("--sheet-pairs", type=int, default=DEFAULT_SHEET_PAIRS,
                        help="pairs on the contact sheet (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = compare_shard_dirs(args.shards, args.out, args.threshold, args.sheet_pairs)
    print("\n".join([f"wrote {Path(args.out) / REPORT_NAME} and {Path(args.out) / SHEET_NAME}",
                     *duplicates_summary(report.to_json())]))
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.dedup")
