"""Loader benchmark: images/s side by side, in one run, on the same images.

    python -m vaedist.bench loader [--shards DIR] [--images N] [--workers W] [--batch B] [--json FILE]

Rows: the seed's own pipeline (a folder of JPEGs -> Pillow -> CenterCrop -> Resize -> flip -> ToTensor ->
Normalize in a torch DataLoader with W workers), DALI on CPU threads (and `mixed` GPU decoding where CUDA
exists), the reference backend, DALI on `--max-side 160` shards, and the decode-once cache. The rows take
turns, one epoch each per round, for `--epochs` rounds over the same training split; the first round warms
caches and starts workers, and each row's fastest later epoch is reported. Without --shards it writes N COCO-sized 640x480 JPEGs and shards them twice
(full size and --max-side 160) in a temporary directory. With --shards, the seed reads the shards' JPEGs copied out
to a folder, and the --max-side row needs --shards-max-side.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torchvision import transforms

from vaedist.config import DataConfig
from vaedist.data import build_loader, dali_available, validate_split
from vaedist.data.index import TarReader, load_split_index
from vaedist.errors import UserError
from vaedist.files import check_output_file, write_text_atomic
from vaedist.sample import build_full_size_jpegs
from vaedist.shard import shard_dataset
from vaedist.shard.format import load_manifest


@dataclass
class Row:
    key: str  # stable identifier for --json readers (vaedist.bench.gpu_check): seed, dali_cpu, dali_mixed, ...
    name: str
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class SeedFolder(torch.utils.data.Dataset):
    """The seed's data path: one JPEG file per item, its torchvision transform list."""

    def __init__(self, files: list[Path], crop: int, size: int):
        self.files = files
        self.transform = transforms.Compose([
            transforms.CenterCrop(crop), transforms.Resize(size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


@dataclass
class Contender:
    """One row: `epoch(e)` iterates epoch e and yields image batches."""

    key: str
    name: str
    epoch: Callable[[int], Iterator[torch.Tensor]]
    timings: list[tuple[int, float]] = field(default_factory=list)  # (images, seconds) per epoch

    def run_epoch(self, epoch: int) -> None:
        start, images = time.perf_counter(), 0
        for batch in self.epoch(epoch):
            images += batch.shape[0]
        self.timings.append((images, time.perf_counter() - start))

    def best(self) -> Row:
        """The fastest epoch after the first (which starts workers, warms the page cache and fills the
        decode-once cache): on a shared machine, the one least disturbed by other processes."""
        images, seconds = min(self.timings[1:] or self.timings, key=lambda t: t[1] / max(t[0], 1))
        return Row(self.key, self.name, images, seconds)

    def rates(self) -> list[float]:
        return [images / seconds for images, seconds in self.timings]


def seed_contender(folder: Path, cfg: DataConfig, batch: int) -> Contender:
    files = sorted(folder.glob("*.jpg"))
    # The DALI rows' pipelines run threads in this process, and a fork beside running threads can leave the
    # child a lock held forever or a segfault (seen once in the suite): the seed's workers come from a
    # fork server instead, started once (persistent) so that the epochs timed after the first pay no start-up.
    workers = {"multiprocessing_context": "forkserver", "persistent_workers": True} if cfg.workers else {}
    loader = torch.utils.data.DataLoader(SeedFolder(files, cfg.crop, cfg.size), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=cfg.workers, **workers)
    return Contender("seed", f"seed pipeline (Pillow + torchvision, {cfg.workers} workers)", lambda epoch: iter(loader))


def loader_contender(key: str, name: str, cfg: DataConfig, batch: int, device: torch.device) -> Contender:
    loader = build_loader(cfg, "train", train=True, batch_size=batch, device=device)

    def epoch_batches(epoch: int) -> Iterator[torch.Tensor]:
        loader.set_epoch(epoch)
        for images, _ in loader:
            if images.is_cuda:
                torch.cuda.synchronize()
            yield images

    return Contender(key, name, epoch_batches)


def copy_out_jpegs(shard_dir: Path, out: Path) -> Path:
    """The stored JPEGs of the training split as a plain folder, for the seed pipeline."""
    manifest = load_manifest(shard_dir)
    index = load_split_index(shard_dir, manifest, "train", validate_split(shard_dir, manifest, "train"))
    reader = TarReader(shard_dir, index.shards)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(index)):
        (out / f"{i:09d}.jpg").write_bytes(bytes(reader.view(index.shard[i], index.offset[i], index.size[i])))
    return out


def make_inputs(work: Path, count: int, workers: int) -> tuple[Path, Path, Path]:
    folder = build_full_size_jpegs(work / "jpegs", count)
    shard_dataset("folder", folder, work / "shards", workers=workers, progress=False)
    shard_dataset("folder", folder, work / "shards160", workers=workers, max_side=160, progress=False)
    return folder, work / "shards", work / "shards160"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="full-size shard directory (default: build one from 640x480 JPEGs)")
    parser.add_argument("--shards-max-side", type=Path, help="the same images sharded with --max-side 160")
    parser.add_argument("--images", type=int, default=1024, help="JPEGs to generate when --shards is not given")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers / DALI threads")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="rounds (one epoch per row each); the fastest after the first is reported")
    parser.add_argument("--crop", type=int, default=375)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here (images/s per epoch too)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or args.workers < 0:
        raise UserError("--epochs and --batch must be at least 1, --workers at least 0")
    if args.json is not None:
        check_output_file(args.json, "--json")

    # The main process only hands batches on (DALI threads / DataLoader workers decode): intra-op threads
    # there would fight the decoders for the same cores (measured: 20x slower cache rows on 2 busy cores).
    torch.set_num_threads(1)
    base = DataConfig(crop=args.crop, size=args.size, workers=args.workers, cache="off", seed=0)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="vaedist-bench-loader-") as tmp:
        work = Path(tmp)
        if args.shards is None:
            print(f"writing {args.images} 640x480 JPEGs and sharding them (full size, --max-side 160) ...", flush=True)
            folder, full, small = make_inputs(work, args.images, max(1, args.workers))
        else:
            full, small = args.shards, args.shards_max_side
            folder = copy_out_jpegs(full, work / "jpegs")
        splits = load_manifest(full).splits
        num = splits["train"].samples if "train" in splits else 0
        epochs = f"fastest of epochs 2..{args.epochs}" if args.epochs > 1 else "one epoch"
        print(f"{num} training images, batch {args.batch}, {args.workers} workers/threads, {epochs}", flush=True)

        contenders = [seed_contender(folder, base, args.batch)]
        jobs: list[tuple[str, str, DataConfig, torch.device]] = []
        if dali_available():
            jobs.append(("dali_cpu", "DALI cpu", replace(base, shards=str(full), backend="dali"), cpu))
            if torch.cuda.is_available():
                jobs.append(("dali_mixed", "DALI mixed (GPU decode)", replace(base, shards=str(full), backend="dali"),
                             torch.device("cuda")))
        jobs.append(("reference", "reference backend", replace(base, shards=str(full), backend="reference"), cpu))
        if small is not None:
            if dali_available():
                jobs.append(("dali_cpu_max_side", "DALI cpu, --max-side 160 shards",
                             replace(base, shards=str(small), backend="dali"), cpu))
            jobs.append(("reference_max_side", "reference, --max-side 160 shards",
                         replace(base, shards=str(small), backend="reference"), cpu))
        cached_device = torch.device("cuda") if torch.cuda.is_available() else cpu
        jobs.append(("cache", f"decode-once cache ({cached_device.type})", replace(base, shards=str(full), cache="auto"),
                     cached_device))
        contenders += [loader_contender(key, name, cfg, args.batch, device) for key, name, cfg, device in jobs]
        # Round-robin, one epoch of each row per round: load from other processes hits every row alike.
        for epoch in range(args.epochs):
            for contender in contenders:
                contender.run_epoch(epoch)
            print(f"  round {epoch + 1}/{args.epochs} done", flush=True)
        rows = [c.best() for c in contenders]
        all_epochs = {c.key: c.rates() for c in contenders}

    seed_rate = rows[0].rate
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"\nloader throughput ({device}, {time.strftime('%Y-%m-%d')}):")
    width = max(len(r.name) for r in rows)
    print(f"  {'pipeline':<{width}}  {'images/s':>10}  {'x seed':>7}")
    for r in rows:
        print(f"  {r.name:<{width}}  {r.rate:>10,.0f}  {r.rate / seed_rate:>6.1f}x")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps({
            "device": device, "date": time.strftime("%Y-%m-%d"), "images": num, "batch": args.batch,
            "workers": args.workers, "epochs": args.epochs, "cuda": torch.cuda.is_available(),
            "rows": [{"key": r.key, "name": r.name, "images_per_s": r.rate, "x_seed": r.rate / seed_rate,
                      "epochs_images_per_s": all_epochs[r.key]} for r in rows],
        }, indent=1))
    return 0
