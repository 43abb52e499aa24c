"""The manifest format: the one description of a shard directory, written by the sharder, read by the loader.

OUT_DIR/manifest.json
{
  "format": 1,
  "tool": "vaedist 0.1.0",
  "dataset": "coco" | "food101" | "folder",
  "root": "/abs/path/of/the/source",
  "created": "2026-11-25T20:00:00Z",
  "options": {...},                     # the sharder's options (shard_size, max_side, seed, ...)
  "classes": ["apple_pie", ...] | null,  # class names, index = the `cls` of a sample
  "splits": {
    "train": {"samples": 118287, "shards": [{"name": "train-000000.tar", "index": "train-000000.idx",
                                              "samples": 1234, "bytes": 123456789, "sha256": "..."}, ...]},
    "val": {...}
  },
  "skipped": [{"path": "train2017/bad.jpg", "reason": "truncated JPEG"}, ...]
}

Each sample in a tar: `<key>.jpg` (a JPEG every decoder renders the same, upright), `<key>.cls` (decimal
class index, labelled datasets only), `<key>.json` ({"path", "width", "height", "split", "class"}: the
source path relative to the root and the ORIGINAL width/height before any --max-side downscale, upright:
EXIF orientation applied, so they are the stored JPEG's size whenever no downscale was asked for).
Keys are unique in the dataset and contain no dots.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vaedist.errors import UserError
from vaedist.files import write_text_atomic

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class ShardInfo:
    name: str  # tar file name, relative to the shard directory
    index: str  # DALI index (.idx) file name, same stem
    samples: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    samples: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Manifest:
    dataset: str
    root: str
    tool: str
    options: dict
    classes: list[str] | None
    splits: dict[str, SplitInfo]
    skipped: list[dict]
    created: str = ""
    format: int = FORMAT_VERSION

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def to_json(self) -> dict:
        return asdict(self)


def manifest_path(shard_dir: str | Path) -> Path:
    return Path(shard_dir) / MANIFEST_NAME


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write `payload` as JSON to `path.tmp`, fsync it, rename it: the file is either absent or whole."""
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n", fsync=True)


def write_manifest(manifest: Manifest, shard_dir: str | Path) -> Path:
    """Write atomically: the manifest's presence means the output is complete."""
    path = manifest_path(shard_dir)
    write_json_atomic(path, manifest.to_json())
    return path


def load_manifest(shard_dir: str | Path) -> Manifest:
    """Read OUT_DIR/manifest.json; a missing or unreadable manifest is a one-line UserError."""
    path = manifest_path(shard_dir)
    if not Path(shard_dir).is_dir():
        raise UserError(f"shard directory '{shard_dir}' does not exist (create it with: python -m vaedist.shard ...)")
    if not path.is_file():
        raise UserError(
            f"'{path}' not found: '{shard_dir}' is not a complete shard directory "
            "(run python -m vaedist.shard ... to write it, or re-run it to finish an interrupted one)"
        )
    try:
        raw = json.loads(path.read_text())
        splits = {
            name: SplitInfo(samples=s["samples"], shards=[ShardInfo(**sh) for sh in s["shards"]])
            for name, s in raw["splits"].items()
        }
        return Manifest(
            dataset=raw["dataset"],
            root=raw["root"],
            tool=raw["tool"],
            options=raw.get("options", {}),
            classes=raw.get("classes"),
            splits=splits,
            skipped=raw.get("skipped", []),
            created=raw.get("created", ""),
            format=raw.get("format", FORMAT_VERSION),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"'{path}' is not a valid vaedist manifest ({err}); re-run python -m vaedist.shard with --overwrite")
