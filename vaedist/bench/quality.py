"""Quality benchmark: recipes trained for the same steps on the same data, next to no-learning baselines.

    python -m vaedist.bench quality --shards DIR [--config CFG ...] [--steps 100] [--batch-size 64] [key=value ...]

Each recipe (a config file) is trained by the real trainer (`python -m vaedist.train`, one process, its own
run dir) for exactly --steps steps of --batch-size images: its `train.epochs` becomes the epochs those steps
make, so the recipe's schedules (warm-ups, decays) run their whole course within the benchmark. It is then
evaluated once, on the whole validation split, by the project's evaluation (`vaedist.evaluate.evaluate`).

The baselines learn nothing: each validation image is kept as a k x k thumbnail (area-averaged: 3k^2
numbers) and blown back up (bilinear). They run through the same `evaluate` as the VAEs (a thumbnail is an
encoder, its blow-up a decoder), so every figure comes from the same metric code. Rows: k = 1 (the image's
mean colour), the two k whose 3k^2 numbers bracket each recipe's latent size, and the two powers of two that
bracket it (4x4 and 8x8 for the seed's 128 numbers). Their KL column is empty: they have no posterior.
Extra key=value overrides apply to every recipe (e.g. data.workers=2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vaedist.accelerator import build_accelerator
from vaedist.config import Config, flatten, load_config, to_dict
from vaedist.data import build_loader
from vaedist.errors import UserError
from vaedist.evaluate import evaluate
from vaedist.files import check_output_file, write_text_atomic
from vaedist.models import latent_numbers
from vaedist.rundir import RunDir
from vaedist.shard.format import load_manifest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = ("configs/seed_food101.yaml", "configs/food101.yaml", "configs/food101_spatial.yaml")
METRICS = ("val/psnr", "val/ssim", "val/pcc", "val/kl")


class Thumbnail(torch.nn.Module):
    """A no-learning 'autoencoder': encode = area-average to k x k, decode = bilinear back to size x size.

    It has the evaluation's model interface (encode -> mu, logvar; decode; latent_dim), so the baselines are
    measured by exactly the code that measures the VAEs. logvar is 0: the KL it implies means nothing.
    """

    def __init__(self, k: int, size: int):
        super().__init__()
        self.k, self.size = k, size

    @property
    def latent_dim(self) -> int:
        return 3 * self.k * self.k

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        thumb = F.interpolate(x.float(), size=(self.k, self.k), mode="area")  # [N, 3, k, k]
        return thumb, torch.zeros_like(thumb)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, size=(self.size, self.size), mode="bilinear", align_corners=False)


def baseline_sides(latent_sizes: list[int], image_size: int) -> list[int]:
    """k = 1, and for each latent size n the k whose 3k^2 bracket n (tightly, and by powers of two)."""
    sides = {1}
    for n in latent_sizes:
        k = math.sqrt(n / 3)
        sides |= {math.floor(k), math.ceil(k)}
        sides |= {2 ** math.floor(math.log2(k)), 2 ** math.ceil(math.log2(k))}
    return sorted(s for s in sides if 1 <= s <= image_size)


@dataclass
class Row:
    name: str
    latent: int  # numbers per image
    metrics: dict[str, float]  # val/psnr, val/ssim, val/pcc (and val/kl for a VAE)
    blowups: int | None = None  # training steps counted as blow-ups (None: a baseline)
    train_kl_max: float | None = None  # the largest KL of one training image
    seconds: float | None = None
    error: str = ""  # why a recipe has no figures (e.g. its loss became non-finite)


def recipe_config(path: Path, shards: Path, run_dir: Path, steps: int, batch: int, overrides: list[str]) -> tuple[Config, list[str]]:
    """The recipe as the benchmark runs it, and the overrides that make it so (passed to the trainer)."""
    forced = [f"data.shards={shards}", f"run.dir={run_dir}", "logging.wandb=false", f"train.batch_size={batch}",
              f"train.max_steps={steps}", "train.eval_every=0", "train.checkpoint_every=0", "train.keep_checkpoints=1"]
    cfg = load_config(path, [*overrides, *forced])
    split = load_manifest(shards).splits.get(cfg.data.train_split)
    if split is None or split.samples < batch:
        raise UserError(f"--shards '{shards}': split '{cfg.data.train_split}' has {split.samples if split else 0} "
                        f"samples, fewer than one batch of {batch} (--batch-size)")
    epochs = -(-steps // (split.samples // batch))  # the whole schedule within the benchmark's steps
    forced.append(f"train.epochs={epochs}")
    return load_config(path, [*overrides, *forced]), [*overrides, *forced]


def check_reusable(run_dir: Path, cfg: Config) -> None:
    """A kept run dir is trained on (or, finished, only read) only when it holds a run of exactly this config."""
    saved = RunDir(run_dir).read_config()
    if saved is not None and flatten(saved) != flatten(to_dict(cfg)):
        raise UserError(f"--keep: '{run_dir}' holds a run of another config; remove it or choose another --keep folder")


def train_recipe(name: str, path: Path, cfg: Config, overrides: list[str], log_file: Path) -> Row:
    """Train in a fresh process (its own Accelerate state, like a user's run) and read its last evaluation."""
    start = time.perf_counter()
    with open(log_file, "w") as log:
        code = subprocess.call([sys.executable, "-m", "vaedist.train", "--config", str(path), *overrides],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_SILENT": "true"})
    seconds = time.perf_counter() - start
    rows = RunDir(cfg.run.dir).read_metrics()
    train_rows = [r for r in rows if "train/loss_encoder" in r]
    blowups = sum(int(r.get("train/blowups", 0)) for r in train_rows)
    kl_max = max((r.get("train/kl_max", r.get("train/kl", 0.0)) for r in train_rows), default=None)
    evaluations = [r for r in rows if "val/psnr" in r]
    if code != 0 or not evaluations:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if "error" in line.lower()]
        error = lines[-1].strip() if lines else f"exit code {code}; see {log_file}"
        return Row(name, latent_numbers(cfg), {}, blowups, kl_max, seconds, error=error)
    metrics = {k: float(evaluations[-1][k]) for k in METRICS if k in evaluations[-1]}
    return Row(name, latent_numbers(cfg), metrics, blowups, kl_max, seconds)


def evaluate_baselines(cfg: Config, sides: list[int]) -> list[Row]:
    accelerator = build_accelerator(cfg, training=False)
    loader = build_loader(cfg.data, cfg.data.val_split, train=False, batch_size=cfg.train.batch_size, accelerator=accelerator)
    rows = []
    for k in sides:
        result = evaluate(Thumbnail(k, cfg.data.size), loader, accelerator, cfg)
        name = "no learning: mean colour (1x1)" if k == 1 else f"no learning: {k}x{k} thumbnail"
        rows.append(Row(name, 3 * k * k, {m: result.metrics[m] for m in METRICS[:3]}))
    accelerator.end_training()
    return rows


def _fmt(value: float | None, spec: str) -> str:
    """`format(value, spec)`, or a dash as wide (spec '8.4g' -> 8 characters) where there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—".rjust(int(spec.split(".")[0].rstrip("dfg") or 0))
    return format(value, spec)


def print_table(rows: list[Row], header: str) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{header}")
    print(f"  {'':<{width}}  {'latent':>6}  {'PSNR dB':>7}  {'SSIM':>6}  {'PCC':>6}  {'val KL':>8}  {'blow-ups':>8}  {'max train KL':>12}")
    for r in rows:
        if r.error:
            print(f"  {r.name:<{width}}  {r.latent:>6}  failed: {r.error}")
            continue
        m = r.metrics
        print(f"  {r.name:<{width}}  {r.latent:>6}  {_fmt(m.get('val/psnr'), '7.2f')}  {_fmt(m.get('val/ssim'), '6.3f')}  "
              f"{_fmt(m.get('val/pcc'), '6.3f')}  {_fmt(m.get('val/kl'), '8.4g')}  {_fmt(r.blowups, '8d')}  "
              f"{_fmt(r.train_kl_max, '12.3g')}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, required=True, help="shard directory with a train and a val split")
    parser.add_argument("--config", type=Path, nargs="+", action="extend", default=None,
                        help=f"recipes to compare (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per recipe (default: 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step, every recipe (default: 64)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run dirs here (default: a temporary folder); a finished run of the same config is reused")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", help="config overrides for every recipe, e.g. data.workers=2")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:
        raise UserError("--steps must be at least 1 and --batch-size at least 2")
    if args.json is not None:
        check_output_file(args.json, "--json")
    configs = args.config or [REPO / c for c in DEFAULT_CONFIGS]
    names = [Path(c).stem for c in configs]
    if len(set(names)) != len(names):
        raise UserError(f"--config: two recipes share a file name ({', '.join(names)}); their rows would be indistinguishable")

    with tempfile.TemporaryDirectory(prefix="vaedist-bench-quality-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        recipes = [(name, Path(path), *recipe_config(Path(path), args.shards, work / name, args.steps, args.batch_size, args.overrides))
                   for name, path in zip(names, configs)]
        views = {(c.data.size, c.data.crop, c.data.val_split) for _, _, c, _ in recipes}
        if len(views) > 1:
            raise UserError(f"--config: the recipes evaluate different data (data.size, data.crop, data.val_split: {sorted(views)}); "
                            "compare recipes on the same validation images")
        for _, _, cfg, _ in recipes:
            check_reusable(Path(cfg.run.dir), cfg)
        rows = []
        for i, (name, path, cfg, overrides) in enumerate(recipes):
            print(f"[{i + 1}/{len(recipes)}] training {name}: {args.steps} steps of {args.batch_size} images "
                  f"({cfg.train.epochs} epochs), log {work / name}.log", flush=True)
            row = train_recipe(name, path, cfg, overrides, work / f"{name}.log")
            print(f"      {'failed: ' + row.error if row.error else 'done'} in {row.seconds:.0f} s", flush=True)
            rows.append(row)
        first = recipes[0][2]
        rows += evaluate_baselines(first, baseline_sides([latent_numbers(c) for _, _, c, _ in recipes], first.data.size))

    val = load_manifest(args.shards).splits[first.data.val_split].samples
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print_table(rows, f"validation quality after {args.steps} steps of {args.batch_size} images, {val} validation images "
                      f"({args.shards}; {device}, {time.strftime('%Y-%m-%d')})")
    if args.json is not None:
        payload = {"steps": args.steps, "batch_size": args.batch_size, "shards": str(args.shards), "rows": [asdict(r) for r in rows]}
        write_text_atomic(args.json, json.dumps(payload, indent=1) + "\n")
    return 0
