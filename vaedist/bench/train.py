"""Trainer throughput: images/s with data already on the device (the ceiling), the full pipeline from shards,
and the pipeline with the decode-once cache, side by side, with the pipeline/ceiling ratio.

    python -m vaedist.bench train --shards DIR [--config configs/coco.yaml] [--rounds 3] [--variants synthetic,...]
                                  [--json FILE] [key=value ...]

One trainer (vaedist.train.trainer: Accelerate, mixed precision, both optimizers) runs the real
`train_step`; only the loader it draws from changes. The variants take turns, one epoch each per round,
so that load from other processes hits every variant alike; round 0 is the warm-up (it fills the cache,
and compiles when train.compile=true) and each variant's fastest later epoch is reported. `--variants synthetic`
times the ceiling alone (precision or layout comparisons, one process per configuration: Accelerate fixes the
precision once per process).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vaedist.accelerator import resolve_precision
from vaedist.batch import GlobalBatch
from vaedist.config import load_config
from vaedist.data import build_loader
from vaedist.errors import UserError
from vaedist.files import check_output_file, write_text_atomic
from vaedist.train import close, setup, train_step

VARIANTS = ("synthetic", "pipeline", "pipeline+cache")


class SyntheticLoader:
    """`batches` copies of one random batch already on the device: the loader interface with no data cost."""

    def __init__(self, batch_size: int, size: int, batches: int, device: torch.device, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = (torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1).to(device)
        self.batches, self.start = batches, 0

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.start = start_batch

    def __iter__(self):
        for _ in range(self.start, self.batches):
            yield self.images, None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(trainer, loader, epoch: int) -> float:
    """Images/s of one whole epoch of real training steps drawn from `loader` (data wait included)."""
    loader.set_epoch(epoch)
    device = trainer.accelerator.device
    _synchronize(device)
    start, images = time.perf_counter(), 0
    for x, _ in loader:
        train_step(trainer, x)
        images += x.shape[0]
    _synchronize(device)
    return images / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="shard directory (python -m vaedist.shard)")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults = the seed model)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all three)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=512 train.precision=bf16")
    args = parser.parse_args(argv)
    variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))  # in order, once
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise UserError(f"--variants: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if args.json is not None:
        check_output_file(args.json, "--json")

    with tempfile.TemporaryDirectory(prefix="vaedist-bench-train-") as tmp:
        cfg = load_config(args.config, args.overrides)
        cfg.data.shards, cfg.run.dir, cfg.logging.wandb = args.shards, tmp, False
        per_process = GlobalBatch(cfg.train.batch_size, 1).per_process  # one process
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the one Accelerate picks
        pipelines = {}
        for variant, cache in (("pipeline", "off"), ("pipeline+cache", "auto")):
            if variant in variants or variant == "pipeline":  # the plain pipeline also gives the epoch's length
                cfg.data.cache = cache
                pipelines[variant] = build_loader(cfg.data, cfg.data.train_split, train=True, batch_size=per_process,
                                                  device=device)
        steps = len(pipelines["pipeline"])
        trainer = setup(cfg, loaders=(SyntheticLoader(per_process, cfg.data.size, steps, device), None))
        available = {"synthetic": trainer.train_loader, **pipelines}
        loaders = {v: available[v] for v in variants}
        rates: dict[str, list[float]] = {v: [] for v in loaders}
        for round_ in range(args.rounds + 1):
            for variant, loader in loaders.items():
                rate = time_epoch(trainer, loader, round_)
                if round_ > 0:
                    rates[variant].append(rate)
        close(trainer)

    best = {v: max(r) for v, r in rates.items()}
    first = best[variants[0]]  # the unit of the ratio column: the ceiling when synthetic comes first (default)
    unit = "ceiling" if variants[0] == "synthetic" else variants[0]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    precision = resolve_precision(cfg.train.precision)
    print(f"\ntrainer throughput on {name}: batch {cfg.train.batch_size}, precision {precision}, "
          f"channels_last {cfg.train.channels_last}, compile {cfg.train.compile}, "
          f"{steps} steps per epoch, fastest of {args.rounds} epochs after a warm-up epoch")
    print(f"{'variant':<16}{'images/s':>12}{f'/ {unit}':>18}   all epochs")
    for variant, value in best.items():
        print(f"{variant:<16}{value:>12.1f}{value / first:>18.2f}   {', '.join(f'{r:.0f}' for r in rates[variant])}")
    if args.json:
        write_text_atomic(args.json, json.dumps({
            "device": name, "batch_size": cfg.train.batch_size, "precision": precision,
            "channels_last": cfg.train.channels_last, "compile": cfg.train.compile, "steps_per_epoch": steps,
            "best": best, "epochs": rates,
        }, indent=1))
    return 0
