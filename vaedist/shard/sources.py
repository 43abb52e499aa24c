"""Dataset sources: what to pack, from a root laid out as COCO 2017, Food-101 or a folder of class sub-folders.

Each source lists `SourceSample`s (path relative to the root, split, class index) in a deterministic,
sorted order, plus the inputs it could not use at listing time (a Food-101 meta entry without its image).
`SOURCES` maps the dataset name typed on the command line to its lister.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from vaedist.errors import UserError
from vaedist.shard.images import image_extensions

DEFAULT_COCO_TRAIN_DIRS = ("train2017", "test2017")  # seed: the unlabelled test split is training data too
COCO_VAL_DIR = "val2017"
# The seed's layout nests each official folder one level down.
COCO_SEED_PARENTS = {"train2017": "coco_train2017", "val2017": "coco_valid2017", "test2017": "coco_test2017",
                     "test2015": "coco_test2015"}


@dataclass(frozen=True)
class SourceSample:
    path: str  # relative to the root, '/'-separated
    split: str  # "train" | "val"
    label: int | None  # index into SourceListing.classes; None for unlabelled datasets
    size: int  # bytes on disk, used to plan shard boundaries before decoding


@dataclass
class SourceListing:
    root: Path
    samples: list[SourceSample]
    classes: list[str] | None = None
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}, found while listing


@dataclass(frozen=True)
class SourceOptions:
    coco_train_dirs: tuple[str, ...] = DEFAULT_COCO_TRAIN_DIRS
    val_fraction: float = 0.0  # folder only: share of each class moved to split "val"
    seed: int = 0


def _is_image_file(entry: os.DirEntry | Path) -> bool:
    name = entry.name
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_extensions()


def _image_files(directory: Path | str, recursive: bool) -> list[str]:
    """Paths (str: a dataset has ~10^5 of them) of the files Pillow can open, sorted; other files are ignored."""
    found: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                if recursive and not entry.name.startswith("."):
                    found.extend(_image_files(entry.path, recursive))
            elif entry.is_file(follow_symlinks=True) and _is_image_file(entry):
                found.append(entry.path)
    return sorted(found)


def _sample(root: Path, path: str, split: str, label: int | None) -> SourceSample:
    relative = os.path.relpath(path, root) if not path.startswith(f"{root}{os.sep}") else path[len(str(root)) + 1 :]
    return SourceSample(path=relative.replace(os.sep, "/"), split=split, label=label, size=os.stat(path).st_size)


# --- COCO 2017 ----------------------------------------------------------------------------------------

COCO_LAYOUT_HELP = (
    "expected ROOT/train2017, ROOT/val2017, ROOT/test2017 (official zips) "
    "or ROOT/coco_train2017/train2017, ROOT/coco_valid2017/val2017, ROOT/coco_test2017/test2017 (seed layout)"
)


def _coco_dir(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / COCO_SEED_PARENTS.get(name, f"coco_{name}") / name):
        if candidate.is_dir():
            return candidate
    return None


def list_coco(root: Path, options: SourceOptions) -> SourceListing:
    """Split `train` = every image in the `coco_train_dirs` folders, split `val` = every image in val2017."""
    wanted = {**{name: "train" for name in options.coco_train_dirs}, COCO_VAL_DIR: "val"}
    found = {name: _coco_dir(root, name) for name in wanted}
    if not any(found.values()):
        raise UserError(f"'{root}' is not a COCO 2017 root: {COCO_LAYOUT_HELP}")
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise UserError(
            f"COCO root '{root}' has no {', '.join(missing)} folder ({COCO_LAYOUT_HELP}); "
            "unpack it there, or choose the training folders with --coco-train-dirs"
        )
    samples = [
        _sample(root, path, split, None)
        for name, split in wanted.items()
        for path in _image_files(found[name], recursive=False)
    ]
    return SourceListing(root=root, samples=samples)


# --- Food-101 -----------------------------------------------------------------------------------------

FOOD101_LAYOUT_HELP = "expected ROOT/images/<class>/<id>.jpg and ROOT/meta/{classes.txt,train.txt,test.txt}"


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_food101(root: Path, options: SourceOptions) -> SourceListing:
    """Split `train` from meta/train.txt, `val` from meta/test.txt; label = line index in meta/classes.txt."""
    if not (root / "meta" / "classes.txt").is_file() and (root / "food-101" / "meta" / "classes.txt").is_file():
        root = root / "food-101"  # the archive unpacks to food-101/; accept its parent too
    meta = root / "meta"
    for name in ("classes.txt", "train.txt", "test.txt"):
        if not (meta / name).is_file():
            raise UserError(f"'{root}' is not a Food-101 root: no meta/{name} ({FOOD101_LAYOUT_HELP})")
    classes = _read_lines(meta / "classes.txt")
    label_of = {name: i for i, name in enumerate(classes)}
    listing = SourceListing(root=root, samples=[], classes=classes)
    for split, meta_file in (("train", "train.txt"), ("val", "test.txt")):
        for entry in sorted(set(_read_lines(meta / meta_file))):  # a line listed twice is one image
            class_name = entry.split("/", 1)[0]
            rel = f"images/{entry}.jpg"
            if class_name not in label_of:
                listing.skipped.append({"path": rel, "reason": f"meta/{meta_file}: class '{class_name}' not in classes.txt"})
            elif not (root / rel).is_file():
                listing.skipped.append({"path": rel, "reason": f"listed in meta/{meta_file} but the image is missing"})
            else:
                listing.samples.append(_sample(root, str(root / rel), split, label_of[class_name]))
    return listing


# --- any folder: one sub-folder per class ---------------------------------------------------------------


def list_folder(root: Path, options: SourceOptions) -> SourceListing:
    """Class = sub-folder (sorted names); with no sub-folders, the images directly in ROOT, unlabelled.

    Split `train` only, unless `val_fraction` > 0: then that share of each class (seeded pick) is split `val`.
    """
    if not root.is_dir():
        raise UserError(f"'{root}' is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, _image_files(d, recursive=True)) for d in class_dirs]
    per_class = [(name, files) for name, files in per_class if files]
    top_level = _image_files(root, recursive=False)
    listing = SourceListing(root=root, samples=[])
    if per_class:
        listing.classes = [name for name, _ in per_class]
        listing.skipped = [{"path": os.path.basename(p), "reason": "not in a class sub-folder"} for p in top_level]
        groups = [(label, files) for label, (_, files) in enumerate(per_class)]
    else:
        groups = [(None, top_level)]
    for label, files in groups:
        val = _val_pick(files, options.val_fraction, f"{options.seed}-val-{label}")
        listing.samples += [_sample(root, p, "val" if p in val else "train", label) for p in files]
    return listing


def _val_pick(files: Sequence[str], fraction: float, seed: str) -> set[str]:
    count = round(len(files) * fraction)
    return set(random.Random(seed).sample(list(files), count)) if count else set()


SOURCES: dict[str, Callable[[Path, SourceOptions], SourceListing]] = {
    "coco": list_coco,
    "food101": list_food101,
    "folder": list_folder,
}


def list_source(dataset: str, root: str | Path, options: SourceOptions) -> SourceListing:
    """The lister for `dataset`, applied to `root`; one-line `UserError`s for a wrong name or root."""
    if dataset not in SOURCES:
        raise UserError(f"unknown dataset '{dataset}': choose one of {', '.join(SOURCES)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"--root '{root}' is not a directory")
    listing = SOURCES[dataset](root, options)
    if not listing.samples:
        raise UserError(f"no image file found under '{listing.root}' (for {dataset}: see python -m vaedist.shard --help)")
    return listing


# --- sample keys --------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LENGTH = 80  # member names must fit USTAR's 100 bytes: key + ".json"


def sample_keys(paths: Sequence[str]) -> list[str]:
    """A key per path, unique, without dots or slashes: `train2017/000000000009.jpg` -> `train2017_000000000009`."""
    keys: list[str] = []
    seen: set[str] = set()
    for path in paths:
        stem = _UNSAFE.sub("_", os.path.splitext(path)[0]).strip("_") or "image"
        if len(stem) > MAX_KEY_LENGTH:
            stem = stem[: MAX_KEY_LENGTH - 12]
        key, n = stem, 1
        while key in seen:  # two paths differing only in dots/spaces/extension
            n += 1
            key = f"{stem}-{n}"
        seen.add(key)
        keys.append(key)
    return keys
