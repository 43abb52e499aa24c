"""python -m vaedist.encode RUN_OR_WEIGHTS --shards DIR --split SPLIT --out OUT: a whole split's latents.

    accelerate launch -m vaedist.encode runs/food101 --shards shards/food101 --split train --out latents/food101
    latents = vaedist.latents.load("latents/food101", split="train")       # mu, logvar, labels as tensors

The images come through the training's own loader (DALI where it imports, the evaluation plan: no flip, no
shuffle), so the latents are those of exactly what the model saw at evaluation. Under `accelerate launch`
every process encodes its share (the loader deals rank r the samples r, r+W, ...); the latent means and
log-variances are gathered to the main process, which writes one latent tar per source tar as soon as all
of that tar's samples are in (`vaedist.latents`: the format, and the reader).

Killed and started again, it skips the tars already written (a tar's presence means complete) and encodes
only the samples of the others: no duplicates. A directory that holds another model's latents, or latents of
other shards, is a one-line error; --overwrite replaces them.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import vaedist
from vaedist.accelerator import build_accelerator
from vaedist.background import ahead
from vaedist.config import Config, load_config, to_dict
from vaedist.data import build_loader
from vaedist.data.hashing import sha256_file
from vaedist.data.validate import check_split_name
from vaedist.errors import UserError, run_cli
from vaedist.latents import (DTYPES, STATE_NAME, LatentInfo, read_info, state_path, write_manifest,
                             write_shard, write_state)
from vaedist.rundir import WEIGHTS_NAME, ModelFiles, RunDir
from vaedist.shard.format import (MANIFEST_NAME, ShardInfo, SplitInfo, index_name, is_directory_file, load_manifest,
                                  manifest_path, parse_index, tar_name)


@dataclass
class EncodeSummary:
    split: str
    samples: int  # in the split
    encoded: int  # by this run (0 when every tar was already there)
    shards_written: int
    shards_kept: int  # written by an earlier, interrupted run
    seconds: float  # the encoding loop: loader + model + gather + writing (DALI's start included)
    startup_seconds: float = 0.0  # building the loader before it (the split's index, the sample plan)

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


class _EveryRank(UserError):
    every_rank = True  # every process reads the same files and raises the same line: rank 0 prints it


def latent_shape_of(model: torch.nn.Module, size: int, device: torch.device) -> list[int]:
    """One image's latent shape, from the model itself (any architecture: [128], [4, 8, 8], ...)."""
    with torch.no_grad():
        mu, _ = model.encode(torch.zeros(1, 3, size, size, device=device))
    return list(mu.shape[1:])


def _clear(out: Path) -> None:
    """--overwrite: remove the latent directory's own files (manifest, tars, indexes, temporaries, state)."""
    for path in out.iterdir():
        name = path.name[1:-4] if path.name.startswith(".") and path.name.endswith(".tmp") else path.name
        if path.is_file() and (is_directory_file(name) or path.name == STATE_NAME):
            path.unlink()


def _check_kept_shard(out: Path, stem: str, samples: int) -> bool:
    """True when the latent tar of `stem` is complete (an earlier run wrote it) with `samples` samples."""
    tar, index = out / tar_name(stem), out / index_name(stem)
    if not tar.is_file():
        return False
    if not index.is_file():
        raise _EveryRank(f"'{tar}' has no index '{index.name}' beside it; re-run with --overwrite")
    found = len(parse_index(tar, index).members)
    if found != samples:
        raise _EveryRank(f"'{tar}' holds {found} samples, its source shard {samples}; re-run with --overwrite")
    return True


class _PendingShards:
    """Main process: the rows of source tars not yet complete, written out the moment the last one arrives."""

    def __init__(self, out: Path, stems: list[str], starts: np.ndarray, counts: np.ndarray, keys: list[str],
                 labels: np.ndarray | None, shape: list[int], dtype: np.dtype, after_shard: Callable | None):
        self.out, self.stems, self.starts, self.counts = out, stems, starts, counts
        self.keys, self.labels, self.shape, self.dtype = keys, labels, shape, dtype
        self.after_shard = after_shard
        self.buffers: dict[int, list] = {}  # shard -> [mu, logvar, filled]
        self.written: dict[int, ShardInfo] = {}

    def add(self, indices: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> None:
        """indices: global sample indices [n]; mu, logvar: [n, *shape] float32."""
        shards = np.searchsorted(self.starts, indices, side="right") - 1
        for shard in np.unique(shards):
            rows = shards == shard
            if shard not in self.buffers:
                n = int(self.counts[shard])
                self.buffers[shard] = [np.zeros((n, *self.shape), self.dtype), np.zeros((n, *self.shape), self.dtype), 0]
            buffer = self.buffers[shard]
            local = indices[rows] - self.starts[shard]
            buffer[0][local], buffer[1][local] = mu[rows], logvar[rows]
            buffer[2] += int(rows.sum())
            if buffer[2] == self.counts[shard]:
                self._write(int(shard))

    def _write(self, shard: int) -> None:
        mu, logvar, _ = self.buffers.pop(shard)
        start, end = int(self.starts[shard]), int(self.starts[shard] + self.counts[shard])
        labels = self.labels[start:end] if self.labels is not None else None
        self.written[shard] = write_shard(self.out, self.stems[shard], self.keys[start:end], mu, logvar, labels)
        if self.after_shard is not None:
            self.after_shard(self.stems[shard])


def _encode_and_gather(model: torch.nn.Module, images: torch.Tensor, indices: np.ndarray, per_process: int,
                       shape: list[int], accelerator, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Collective: one batch's latents, all ranks' rows on the device: (index int64 [W*B], -1 for padding;
    rows float32 [W*B, 2, *shape], mu and logvar)."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.autocast():
        mu, logvar = model.encode(images)
    n, device = images.shape[0], accelerator.device
    # Every rank sends a full batch (padded, index -1) so that the gather's shapes agree.
    sent_index = torch.full((per_process,), -1, dtype=torch.int64, device=device)
    sent_index[:n] = torch.from_numpy(indices).to(device, non_blocking=True)
    sent = torch.zeros((per_process, 2, *shape), dtype=torch.float32, device=device)
    if n:
        sent[:n, 0], sent[:n, 1] = mu.float(), logvar.float()
    return accelerator.gather(sent_index), accelerator.gather(sent)


def _to_host(all_index: torch.Tensor, all_rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real rows (index >= 0) of a gathered batch as numpy: (indices [n], mu [n, *shape], logvar [n, *shape])."""
    index, rows = all_index.cpu().numpy(), all_rows.cpu().numpy()
    real = index >= 0
    return index[real], rows[real, 0], rows[real, 1]


def _add_on_main(pending: _PendingShards, gathered: tuple[torch.Tensor, torch.Tensor], main: bool) -> None:
    """Every rank waits for its gathered batch (so no rank queues more than one batch ahead of the device);
    the main process keeps the rows."""
    rows = _to_host(*gathered)
    if main:
        pending.add(*rows)


def encode_split(model: torch.nn.Module, cfg: Config, weights_sha256: str, *, shards: str | Path, split: str,
                 out: str | Path, accelerator, batch_size: int = 256, dtype: str = "fp32", overwrite: bool = False,
                 after_shard: Callable[[str], None] | None = None, load_ahead: int = 2) -> EncodeSummary:
    """Collective: encode `split` of `shards` with `model` (built from `cfg`) into the latent directory `out`.

    `after_shard(stem)` runs on the main process after each latent tar is in place (the tests stop there).
    `load_ahead`: batches a background thread loads while the model encodes (0: loading in the loop's thread).
    """
    shards, out = Path(shards).resolve(), Path(out)
    source = load_manifest(shards)
    check_split_name(source, split, shards)
    device = accelerator.device
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    info = LatentInfo(dtype=np.dtype(DTYPES[dtype]).name, latent_shape=latent_shape_of(model, cfg.data.size, device),
                      weights_sha256=weights_sha256, model_config=to_dict(cfg), source=str(shards),
                      source_manifest_sha256=sha256_file(manifest_path(shards)))
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear(out)
    accelerator.wait_for_everyone()
    existing = read_info(out)
    if existing is not None and (what := existing.differs_from(info)) is not None:
        raise _EveryRank(f"'{out}' holds latents of another {what} than this encoding's "
                         f"(weights sha256 {existing.weights_sha256[:12]}, shards {existing.source}); "
                         "choose another --out, or pass --overwrite to replace them")
    kept_splits = load_manifest(out).splits if manifest_path(out).is_file() else {}
    shard_list = source.splits[split].shards
    counts = np.array([s.samples for s in shard_list], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(counts.sum())
    stems = [Path(s.name).stem for s in shard_list]
    if split in kept_splits:
        return EncodeSummary(split, total, 0, 0, len(stems), 0.0)
    if main:
        write_state(out, info)
        for path in out.glob(".*.tmp"):  # a killed run's half-written tar or index
            path.unlink()
    accelerator.wait_for_everyone()
    kept = [_check_kept_shard(out, stem, int(n)) for stem, n in zip(stems, counts)]
    accelerator.wait_for_everyone()  # every rank has listed the kept tars before the main process writes more
    remaining = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in range(len(stems)) if not kept[i]]
                               + [np.zeros(0, np.int64)]).astype(np.int64)

    began = time.perf_counter()
    pending, startup = None, 0.0
    if len(remaining):
        data = dataclasses.replace(cfg.data, shards=str(shards), cache="off")  # one pass: nothing to cache
        loader = build_loader(data, split, train=False, batch_size=batch_size, accelerator=accelerator, samples=remaining)
        startup = time.perf_counter() - began
        began += startup
        index = loader.index
        labels = index.label if index.labelled else None
        pending = _PendingShards(out, stems, starts, counts, index.keys, labels, info.latent_shape,
                                 np.dtype(DTYPES[dtype]), after_shard if main else None)
        batches = loader.plan.batches(0)
        per_process = loader.plan.batch_size
        in_flight = None  # the previous batch's gathered rows, still on the device
        # Batch k+1 is loaded (a background thread) while batch k is encoded, and batch k's rows are copied to
        # the host (a sync with the device) only once batch k+1's encoding is queued: see `ahead`.
        with closing(ahead(loader, load_ahead)) as loaded, torch.inference_mode():
            for k, (images, _) in enumerate(loaded):  # images [n, 3, S, S] in [-1, 1]
                gathered = _encode_and_gather(model, images, batches[k], per_process, info.latent_shape,
                                              accelerator, cfg.train.channels_last)
                if in_flight is not None:
                    _add_on_main(pending, in_flight, main)
                in_flight = gathered
            if in_flight is not None:
                _add_on_main(pending, in_flight, main)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - began
    written = pending.written if pending is not None else {}
    if main:
        if pending is not None and pending.buffers:
            raise RuntimeError(f"samples of {', '.join(stems[s] for s in pending.buffers)} never arrived")
        infos = []
        for i, stem in enumerate(stems):
            if i in written:
                infos.append(written[i])
            else:  # kept from an earlier run: its size and hash from the file
                tar = out / tar_name(stem)
                infos.append(ShardInfo(name=tar.name, index=index_name(stem), samples=int(counts[i]),
                                       bytes=tar.stat().st_size, sha256=sha256_file(tar)))
        splits = {**kept_splits, split: SplitInfo(samples=total, shards=infos)}
        write_manifest(out, source, info, splits, tool=f"vaedist {vaedist.__version__} encode")
    accelerator.wait_for_everyone()
    return EncodeSummary(split, total, len(remaining), len(written), sum(kept), seconds, startup)


def load_for_encoding(path: str | Path) -> tuple[torch.nn.Module, Config, str]:
    """(model in eval mode, its config, its weights' sha256) from a run folder, final/ or model.safetensors."""
    files = ModelFiles.find(path)
    cfg = load_config(files.config)
    try:
        model = vaedist.load_model(files.weights)
    except RuntimeError as err:  # load_state_dict: weights of other widths than the config says
        first = str(err).strip().splitlines()
        raise UserError(f"'{files.weights}' does not fit the model '{files.config}' describes "
                        f"({first[1].strip() if len(first) > 1 else first[0]}); keep a run's {WEIGHTS_NAME} "
                        f"with its own {files.config.name}")
    return model, cfg, sha256_file(files.weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.encode",
                                     description="Encode a whole split into latent shards (mu, logvar, label).")
    parser.add_argument("weights", type=Path,
                        help=f"a run folder, its {RunDir.final.name}/ folder, or a {WEIGHTS_NAME} file")
    parser.add_argument("--shards", required=True, help=f"shard directory (holds {MANIFEST_NAME})")
    parser.add_argument("--split", default=None, help="split to encode (default: the config's data.val_split)")
    parser.add_argument("--out", required=True, type=Path, help="latent directory to write (and to resume into)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch and process (default 256)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="how mu and logvar are stored (default fp32; fp16 halves the size)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default=None,
                        help="autocast of the forward pass (default: the run's train.precision)")
    parser.add_argument("--overwrite", action="store_true", help="replace the latents already in --out")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out '{args.out}' is a file; name a directory")

    model, cfg, sha = load_for_encoding(args.weights)
    if args.precision is not None:
        cfg.train.precision = args.precision
    accelerator = build_accelerator(cfg, training=False)
    split = args.split or cfg.data.val_split
    summary = encode_split(model, cfg, sha, shards=args.shards, split=split, out=args.out, accelerator=accelerator,
                           batch_size=args.batch_size, dtype=args.dtype, overwrite=args.overwrite)
    accelerator.print(
        f"{split}: {summary.samples} samples in '{args.out}' ({args.dtype}); encoded {summary.encoded} now "
        f"({summary.images_per_s:.0f} images/s on {accelerator.num_processes} process(es), after "
        f"{summary.startup_seconds:.1f} s of start-up), "
        f"{summary.shards_written} tars written, {summary.shards_kept} kept from an earlier run"
    )
    # Close the process group now (a gloo thread left to interpreter shutdown can abort a successful run).
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_cli(main, prog="vaedist.encode")
