"""Trainer throughput: images/s with data already on the device (the ceiling), the full pipeline from shards,
and the pipeline with the decode-once cache, side by side, with the pipeline/ceiling ratio.

    python -m vaedist.bench train --shards DIR [--config configs/coco.yaml] [--steps 50] [key=value ...]

Every variant runs the real trainer step (vaedist.train: Accelerate, mixed precision, both optimizers)
through `train()`; only the loader differs. Figures come from the trainer's own `train/images_per_s`
rows after `--warmup` steps. On CPU only the ratios mean anything.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from vaedist.config import Config, load_config


class SyntheticLoader:
    """`batches` fixed random batches already on the device: the loader interface with no data cost."""

    manifest = None

    def __init__(self, batch_size: int, size: int, batches: int, device: torch.device, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = (torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1).to(device)
        self.batches = batches

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for _ in range(self.batches):
            yield self.images, None


def _images_per_s(run_dir: Path, warmup: int, batch_size: int) -> float:
    """Images over seconds of the trainer's own train/images_per_s rows after the warm-up steps.

    Rows cover different numbers of steps (epoch ends flush early), so weigh each by its steps.
    """
    from vaedist.tracking import read_metrics

    rows = [r for r in read_metrics(run_dir) if "train/images_per_s" in r]
    images = seconds = 0.0
    previous = 0
    for row in rows:
        steps, previous = row["step"] - previous, row["step"]
        if row["step"] > warmup and steps > 0:
            images += steps * batch_size
            seconds += steps * batch_size / row["train/images_per_s"]
    return images / seconds if seconds else float("nan")


def run_variant(cfg: Config, variant: str, steps: int, warmup: int, out: Path) -> float:
    from accelerate.state import AcceleratorState, GradientState

    from vaedist.train import train

    cfg = copy.deepcopy(cfg)
    cfg.run.dir = str(out / variant)
    cfg.train.log_every = log_every = max(1, min(steps, 5))
    warmup = -(-warmup // log_every) * log_every  # whole log windows: every timed row holds timed steps only
    cfg.train.max_steps = steps + warmup
    cfg.train.eval_every = 0
    cfg.train.checkpoint_every = 0
    cfg.train.epochs = 1000  # max_steps stops it
    cfg.logging.wandb = False
    loaders = None
    if variant == "synthetic":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        loaders = (SyntheticLoader(cfg.train.batch_size, cfg.data.size, steps + warmup, device), None)
    else:
        cfg.data.cache = "auto" if variant == "pipeline+cache" else "off"
        # the cache fills during the first epoch: make the warm-up at least one epoch long
    train(cfg, loaders=loaders, evaluate_at_end=False)
    AcceleratorState._reset_state(True)  # the next variant builds a fresh Accelerator
    GradientState._reset_state()
    return _images_per_s(Path(cfg.run.dir), warmup, cfg.train.batch_size)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="shard directory (python -m vaedist.shard)")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults = the seed model)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (pipeline+cache: one epoch more)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=512 train.precision=bf16")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, f"data.shards={args.shards}"])

    from vaedist.data import build_loader

    steps_per_epoch = len(build_loader(cfg.data, cfg.data.train_split, train=True, batch_size=cfg.train.batch_size, accelerator=None))
    results = {}
    with tempfile.TemporaryDirectory(prefix="vaedist-bench-train-") as tmp:
        for variant in ("synthetic", "pipeline", "pipeline+cache"):
            warmup = args.warmup + (steps_per_epoch if variant == "pipeline+cache" else 0)
            results[variant] = run_variant(cfg, variant, args.steps, warmup, Path(tmp))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    ceiling = results["synthetic"]
    print(f"\ntrainer throughput on {device}, batch {cfg.train.batch_size}, precision {cfg.train.precision}, {args.steps} timed steps")
    print(f"{'variant':<16}{'images/s':>12}{'/ ceiling':>12}")
    for variant, value in results.items():
        print(f"{variant:<16}{value:>12.1f}{value / ceiling:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "batch_size": cfg.train.batch_size, **results}, indent=1))
    return 0
