"""Dataset sources: what to pack, from a root laid out as COCO 2017, Food-101 or a folder of class sub-folders.

Each source lists `SourceSample`s (path relative to the root, split, class index) in a deterministic,
sorted order, plus the inputs it could not use at listing time (a Food-101 meta entry without its image).
`SOURCES` maps the dataset name typed on the command line to its lister.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import re
import stat
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


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_extensions()


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"))


def unusable_file_reason(path: str | Path) -> str | None:
    """Why `path` cannot be read as an image file (None: a regular file, or a link to one).

    Special files are never opened: a FIFO opened for reading blocks until someone writes to it.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (the link never reaches a file)"
        if err.errno == errno.ENOENT:
            return "dangling symlink (its target is missing)" if os.path.islink(path) else "missing"
        return f"unreadable ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


@dataclass
class _Folder:
    """What one folder holds: sub-folders (path, (st_dev, st_ino)), image files, and image-named entries
    that are not usable files (with the reason)."""

    folders: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _scan(directory: str) -> _Folder:
    """One folder, not recursive. Hidden entries and files without an image extension are not looked at."""
    out = _Folder()
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as err:  # permission denied, or removed while we list
        out.skipped.append((directory, f"folder cannot be listed ({err.strerror or err})"))
        return out
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if not entry.is_symlink() and entry.is_file():  # the common case, from the directory entry alone
            if _is_image_name(entry.name):
                out.files.append(entry.path)
            continue
        try:
            st = os.stat(entry.path)  # follows links: ELOOP / ENOENT for broken ones
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            out.folders.append((entry.path, (st.st_dev, st.st_ino)))
        elif _is_image_name(entry.name):
            reason = unusable_file_reason(entry.path)
            if reason is None:
                out.files.append(entry.path)
            else:
                out.skipped.append((entry.path, reason))
    return out


def _image_files(directory: str, ancestors: frozenset[tuple[int, int]], skipped: list[tuple[str, str]],
                 recursive: bool = True) -> list[str]:
    """Image files under `directory` (str paths: a dataset has ~10^5 of them), sorted. `ancestors`: the
    (device, inode) of `directory` and every folder above it, so that a link back up (`self -> .`,
    `up -> ..`) is reported as a loop instead of being walked until the path is too long (ELOOP)."""
    folder = _scan(directory)
    skipped += folder.skipped
    found = folder.files
    if recursive:
        for path, ident in folder.folders:
            if ident in ancestors:
                skipped.append((path, "symlink loop (links to a folder it is inside)"))
            else:
                found.extend(_image_files(path, ancestors | {ident}, skipped))
    return sorted(found)


def _folder_ident(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _skipped_entries(root: Path, skipped: list[tuple[str, str]]) -> list[dict]:
    return [{"path": os.path.relpath(path, root).replace(os.sep, "/"), "reason": reason} for path, reason in skipped]


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
    skipped: list[tuple[str, str]] = []
    samples = [
        _sample(root, path, split, None)
        for name, split in wanted.items()
        for path in _image_files(str(found[name]), frozenset(), skipped, recursive=False)
    ]
    return SourceListing(root=root, samples=samples, skipped=_skipped_entries(root, skipped))


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
            elif (problem := unusable_file_reason(root / rel)) is not None:
                if problem == "missing":
                    problem = f"listed in meta/{meta_file} but the image is missing"
                listing.skipped.append({"path": rel, "reason": problem})
            else:
                listing.samples.append(_sample(root, str(root / rel), split, label_of[class_name]))
    return listing


# --- any folder: one sub-folder per class ---------------------------------------------------------------


def list_folder(root: Path, options: SourceOptions) -> SourceListing:
    """Class = sub-folder (sorted names); with no sub-folders, the images directly in ROOT, unlabelled.

    Everything is split `train` here; `hold_out_val` moves a share of each class to `val` once the images
    are validated.
    """
    if not root.is_dir():
        raise UserError(f"'{root}' is not a directory")
    root_ident = _folder_ident(root)
    top = _scan(str(root))
    skipped = list(top.skipped)
    per_class = []
    for path, ident in sorted(top.folders):
        if ident == root_ident:
            skipped.append((path, "symlink loop (links to a folder it is inside)"))
        else:
            per_class.append((os.path.basename(path), _image_files(path, frozenset({root_ident, ident}), skipped)))
    per_class = [(name, files) for name, files in per_class if files]
    top_level = sorted(top.files)
    listing = SourceListing(root=root, samples=[])
    if per_class:
        listing.classes = [name for name, _ in per_class]
        skipped += [(p, "not in a class sub-folder") for p in top_level]
        groups = [(label, files) for label, (_, files) in enumerate(per_class)]
    else:
        groups = [(None, top_level)]
    listing.skipped = _skipped_entries(root, skipped)
    listing.samples = [_sample(root, p, "train", label) for label, files in groups for p in files]
    return listing


def hold_out_val(listing: SourceListing, rejected: dict[str, str], fraction: float, seed: int) -> SourceListing:
    """Split `val` for --val-fraction: that share of each class's VALID images (a seeded pick).

    Decided after every image was validated (`rejected`: path -> reason of those the sharder rejects), so
    that empty or corrupt files never take a place in `val` (10,000 empty files and a few photos used to
    leave `val` with none). The rejected inputs leave the samples for `skipped`. Deterministic in
    (listing, rejected, fraction, seed): a resumed run (the sharder's state keeps `rejected`) splits alike.
    """
    valid = [s for s in listing.samples if s.path not in rejected]
    held_out: set[str] = set()
    for label in dict.fromkeys(s.label for s in valid):
        files = [s.path for s in valid if s.label == label]  # sorted, as listed
        count = round(len(files) * fraction)
        if count:
            held_out |= set(random.Random(f"{seed}-val-{label}").sample(files, count))
    samples = [dataclasses.replace(s, split="val") if s.path in held_out else s for s in valid]
    skipped = listing.skipped + [{"path": path, "reason": reason} for path, reason in rejected.items()]
    return dataclasses.replace(listing, samples=samples, skipped=skipped)


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
