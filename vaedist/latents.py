"""The latent directory: what `python -m vaedist.encode` writes, and `load(OUT)` gives back as tensors.

    latents = vaedist.latents.load("latents/food101")            # the only split, or split="val"
    latents.mu, latents.logvar     # [N, *latent_shape] (the stored dtype: float32 or float16)
    latents.labels                 # int64 [N] class index, None for unlabelled datasets
    latents.keys, latents.classes  # the source samples' keys, in the source's order; class names

It is a shard directory in `vaedist.shard.format`'s conventions (the same manifest, tar members, .idx
grammar and temporary names), one latent tar per source tar, with the same name and the same samples
in the same order:

    OUT/manifest.json      format.Manifest, written last; its options["latents"] is `LatentInfo` (dtype,
                           latent shape, the model's config and weights sha256, the source's manifest sha256)
    OUT/val-000000.tar     per sample, sorted like webdataset's TarWriter: <key>.cls (labelled datasets),
                           <key>.logvar.npy, <key>.mu.npy  (NumPy .npy, what webdataset's decoder reads)
    OUT/val-000000.idx     its DALI index (format.index_text: what `wds2idx` writes)
    OUT/.encode.json       only while a split is being encoded: the LatentInfo the tars belong to, so a run
                           started again with another model or other shards refuses to mix with them

A tar's presence means it is complete (tar and index are written under temporary names and the tar is
renamed last), which is what lets a killed encoder resume without duplicates.
"""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vaedist.errors import UserError
from vaedist.files import write_json_atomic
from vaedist.shard.format import (LABEL_EXT, Manifest, ShardInfo, SplitInfo, index_line, index_name, index_text,
                                  load_manifest, member_name, parse_index, tar_name, temporary_name)
from vaedist.shard.format import write_manifest as write_shard_manifest
from vaedist.shard.writer import ClosedShard, encode_members, publish_shard, sync_directory, write_pieces

MU_EXT = "mu.npy"
LOGVAR_EXT = "logvar.npy"
STATE_NAME = ".encode.json"
DTYPES = {"fp32": np.float32, "fp16": np.float16}
TAR_END = 2 * 512  # two zero blocks end a tar (format.tar_bytes pads to a record; tarfile reads either)


@dataclass(frozen=True)
class LatentInfo:
    """What the latents of a directory are: the model that produced them and the shards it read."""

    dtype: str  # "float32" | "float16": how mu and logvar are stored
    latent_shape: list[int]  # one image's latent, e.g. [128] (seed) or [4, 8, 8] (a spatial latent)
    weights_sha256: str  # of the model.safetensors file
    model_config: dict  # the full config the model was trained with (final/config.yaml)
    source: str  # the source shard directory, absolute
    source_manifest_sha256: str  # of its manifest.json: other shards (re-sharded) mean other samples

    def differs_from(self, other: LatentInfo) -> str | None:
        """The first field that differs, named for a one-line error, or None."""
        for name in ("weights_sha256", "source_manifest_sha256", "dtype", "latent_shape"):
            if getattr(self, name) != getattr(other, name):
                return name.replace("_sha256", "").replace("_", " ")
        return None

    @classmethod
    def from_json(cls, raw: dict) -> LatentInfo:
        return cls(**raw)


def state_path(out: str | Path) -> Path:
    return Path(out) / STATE_NAME


def read_info(out: str | Path) -> LatentInfo | None:
    """The LatentInfo of the latents already in `out` (its manifest, else an unfinished run's state file)."""
    out = Path(out)
    try:
        if (out / "manifest.json").is_file():
            return LatentInfo.from_json(load_manifest(out).options["latents"])
        if state_path(out).is_file():
            return LatentInfo.from_json(json.loads(state_path(out).read_text()))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"'{out}' is not a latent directory written by python -m vaedist.encode; choose another --out")
    return None


def write_state(out: str | Path, info: LatentInfo) -> None:
    write_json_atomic(state_path(out), asdict(info))


# --- writing -----------------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def sample_members(key: str, mu: np.ndarray, logvar: np.ndarray, label: int | None) -> list[tuple[str, bytes]]:
    """(member name, data) of one sample's latents, sorted by extension like the image shards' members."""
    members = [(member_name(key, LOGVAR_EXT), npy_bytes(logvar)), (member_name(key, MU_EXT), npy_bytes(mu))]
    if label is not None:
        members.insert(0, (member_name(key, LABEL_EXT), str(label).encode()))
    return members


def write_shard(out: Path, stem: str, keys: list[str], mu: np.ndarray, logvar: np.ndarray,
                labels: np.ndarray | None) -> ShardInfo:
    """One latent tar + .idx (under temporary names, then renamed tar last). mu, logvar: [n, *latent]."""
    tar = out / tar_name(stem)
    index = out / index_name(stem)
    digest, lines, offset = hashlib.sha256(), [], 0
    fd = os.open(temporary_name(tar), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i, key in enumerate(keys):
            label = int(labels[i]) if labels is not None else None
            pieces, size, entries = encode_members(sample_members(key, mu[i], logvar[i], label))
            write_pieces(fd, pieces)
            for piece in pieces:
                digest.update(piece)
            lines.append(index_line([(name, offset + start, length) for name, start, length in entries]))
            offset += size
        end = bytes(TAR_END + -(offset + TAR_END) % (20 * 512))
        write_pieces(fd, [end])
        digest.update(end)
        offset += len(end)
    finally:
        os.close(fd)
    Path(temporary_name(index)).write_text(index_text(lines))
    return publish_shard(ClosedShard(str(tar), str(index), len(keys), offset, digest.hexdigest()))


def write_manifest(out: Path, source: Manifest, info: LatentInfo, splits: dict[str, SplitInfo], tool: str) -> None:
    """The latent directory's manifest (format.Manifest): written last, its presence means complete."""
    manifest = Manifest(dataset=source.dataset, root=info.source, tool=tool, options={"latents": asdict(info)},
                        classes=source.classes, splits=splits, skipped=[])
    write_shard_manifest(manifest, out)
    state_path(out).unlink(missing_ok=True)
    sync_directory(out)


# --- reading -----------------------------------------------------------------------------------------------


@dataclass
class Latents:
    """One split of a latent directory. Tensors are torch tensors in the stored dtype."""

    keys: list[str]
    mu: torch.Tensor  # [N, *latent_shape]
    logvar: torch.Tensor  # [N, *latent_shape]
    labels: torch.Tensor | None  # int64 [N]
    classes: list[str] | None
    info: LatentInfo


def _npy_layout(buffer: memoryview, offset: int) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(header length, dtype, shape) of the .npy file stored at `offset`."""
    stream = io.BytesIO(buffer[offset : offset + 4096])
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if fortran:
        raise ValueError("a Fortran-ordered array")
    return stream.tell(), dtype, shape


def _gather(tar: np.ndarray, starts: np.ndarray, nbytes: int) -> np.ndarray:
    """uint8 [n, nbytes]: the bytes at `starts` of the mapped tar, in one vectorised copy."""
    return tar[starts[:, None] + np.arange(nbytes)[None, :]]


def load(out: str | Path, split: str | None = None) -> Latents:
    """Read one split of a latent directory. The tars are memory-mapped and every sample's array data is
    reached through the .idx offsets (no tar parsing), gathered in one vectorised copy per tar."""
    out = Path(out)
    manifest = load_manifest(out)
    info = read_info(out)
    if info is None:
        raise UserError(f"'{out}' is not a latent directory (its manifest has no \"latents\"); write one with python -m vaedist.encode")
    if split is None:
        if len(manifest.splits) != 1:
            raise UserError(f"'{out}' holds the splits {', '.join(manifest.splits)}: name one (split=...)")
        split = next(iter(manifest.splits))
    if split not in manifest.splits:
        raise UserError(f"'{out}' has no split '{split}' (it has: {', '.join(manifest.splits) or 'none'})")
    keys, mus, logvars, labels = [], [], [], []
    for shard in manifest.splits[split].shards:
        index = parse_index(out / shard.name, out / shard.index)
        if len(index.members) != shard.samples:
            raise UserError(f"'{out / shard.index}' lists {len(index.members)} samples, the manifest {shard.samples}; re-run python -m vaedist.encode")
        with open(out / shard.name, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        tar = np.frombuffer(mapped, dtype=np.uint8)
        arrays = []
        for ext in (MU_EXT, LOGVAR_EXT):
            try:
                offsets = np.array([m[ext][0] for m in index.members], dtype=np.int64)
                sizes = {m[ext][1] for m in index.members}
                header, dtype, shape = _npy_layout(memoryview(mapped), int(offsets[0]))
            except (KeyError, ValueError) as err:
                raise UserError(f"'{out / shard.name}' has no readable .{ext} members ({err}); re-run python -m vaedist.encode")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if sizes != {header + nbytes} or list(shape) != info.latent_shape:
                raise UserError(f"'{out / shard.name}': its .{ext} members differ in size or shape from the manifest's latent_shape {info.latent_shape}; re-run python -m vaedist.encode")
            arrays.append(_gather(tar, offsets + header, nbytes).view(dtype).reshape(len(offsets), *shape))
        mus.append(arrays[0])
        logvars.append(arrays[1])
        keys += index.keys
        if manifest.labelled:
            labels += [int(bytes(tar[m[LABEL_EXT][0] : m[LABEL_EXT][0] + m[LABEL_EXT][1]])) for m in index.members]
        del tar
        mapped.close()
    shape = tuple(info.latent_shape)
    dtype = DTYPES["fp16"] if info.dtype == "float16" else DTYPES["fp32"]
    mu = np.concatenate(mus) if mus else np.zeros((0, *shape), dtype)
    logvar = np.concatenate(logvars) if logvars else np.zeros((0, *shape), dtype)
    return Latents(keys=keys, mu=torch.from_numpy(mu), logvar=torch.from_numpy(logvar),
                   labels=torch.tensor(labels, dtype=torch.int64) if manifest.labelled else None,
                   classes=manifest.classes, info=info)
