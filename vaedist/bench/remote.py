"""Loader throughput from shards behind a URL against the same shards on local disk, side by side.

    python -m vaedist.bench remote --shards DIR --url URL [--backend dali] [--batch 64] [--epochs 3]

URL serves the same shard directory (e.g. nginx with `root` on DIR's parent: URL = http://host:port/NAME).
Rows alternate epoch by epoch (so other load hits both alike) and the fastest epoch after the first is kept;
start-up (manifest, indexes, every sample's label / meta / JPEG header) is timed apart. No cache: every epoch
reads every JPEG again, the worst case (with data.cache later epochs are local).
"""
from __future__ import annotations

import argparse
import time

from vaedist.config import DataConfig
from vaedist.data import build_loader
from vaedist.errors import UserError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench remote", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="local shard directory")
    parser.add_argument("--url", required=True, help="the same shard directory behind http(s)")
    parser.add_argument("--backend", default="dali", choices=["dali", "reference"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per row, the first one a warm-up")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.batch < 1:
        raise UserError("--epochs must be at least 2 (one warm-up) and --batch at least 1")
    loaders, startup = {}, {}
    for name, where in (("local disk", args.shards), ("http", args.url)):
        start = time.perf_counter()
        loaders[name] = build_loader(DataConfig(shards=where, backend=args.backend), args.split, train=True,
                                     batch_size=args.batch)
        startup[name] = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for epoch in range(args.epochs):
        for name, loader in loaders.items():
            loader.set_epoch(epoch)
            start, images = time.perf_counter(), 0
            for x, _ in loader:
                images += x.shape[0]
            if epoch:
                rates[name].append(images / (time.perf_counter() - start))
    local = max(rates["local disk"])
    print(f"loader ({args.backend}, batch {args.batch}, {len(loaders['http'])} batches per epoch), "
          f"fastest of {args.epochs - 1} epochs after a warm-up")
    print(f"{'source':<12}{'start-up s':>12}{'images/s':>12}{'/ local':>10}")
    for name in loaders:
        best = max(rates[name])
        print(f"{name:<12}{startup[name]:>12.2f}{best:>12.1f}{best / local:>10.2f}")
    return 0
