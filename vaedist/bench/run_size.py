"""How much a run writes per evaluation: files and bytes under RUN_DIR/wandb and the whole run dir.

    python -m vaedist.bench run-size [--evaluations 10] [--rows 512] [--size 64]

Drives the real Tracker (offline W&B, real PNGs) with evaluations of a real VAE on --rows real photographs
(crops of the embedded sample) at --size px, twice side by side: with today's defaults (logging.table_every,
logging.thumbnail_size, logging.keep_images) and with the latent table and its full-size thumbnails at every
evaluation, all PNGs kept (what vaedist did before). One evaluation per epoch is train.eval_every=1's cadence.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate.state import AcceleratorState
from PIL import Image, ImageOps

from vaedist.accelerator import build_accelerator
from vaedist.config import load_config
from vaedist.errors import UserError
from vaedist.evaluate.result import EvalResult
from vaedist.model import VAE
from vaedist.rundir import RunDir
from vaedist.sample import build_full_size_jpegs
from vaedist.shard.format import Manifest
from vaedist.tracking import Tracker


def photographs(folder: Path, count: int, size: int) -> torch.Tensor:
    """[count, 3, size, size] in [-1, 1]: crops of the embedded sample's photographs."""
    images = []
    for path in sorted(build_full_size_jpegs(folder, count, size=(160, 120)).glob("*.jpg"))[:count]:
        with Image.open(path) as im:
            im = ImageOps.fit(im.convert("RGB"), (size, size))
            images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(images).float() / 127.5 - 1


@torch.no_grad()
def evaluation(model: VAE, x: torch.Tensor) -> EvalResult:
    model.eval()
    mu, logvar = model.encode(x)
    rec = ((model.decode(mu) + 1) / 2).clamp(0, 1)
    x01 = (x + 1) / 2
    return EvalResult(metrics={"val/mse": float(((rec - x01) ** 2).mean())},
                      kl_per_dim=(-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(0), mu=mu, labels=None,
                      thumbnails=(x01 * 255).round().to(torch.uint8), originals=x01[:16], reconstructions=rec[:16])


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def measure(run_path: Path, overrides: list[str], x: torch.Tensor, evaluations: int, size: int) -> dict:
    cfg = load_config(None, [f"data.size={size}", "model.latent_dim=32", "model.encoder_channels=[16,32,64]",
                             "model.decoder_channels=[64,32,16]", "model.hidden_dim=64", "logging.mode=offline",
                             f"logging.table_rows={x.shape[0]}", f"run.dir={run_path}", *overrides])
    AcceleratorState._reset_state(reset_partial_state=True)  # two Accelerators in one process
    torch.manual_seed(0)
    model = VAE(cfg.model, image_size=size)
    run_dir = RunDir(run_path)
    manifest = Manifest(dataset="sample", root="", tool="bench", options={}, classes=None, splits={}, skipped=[])
    tracker = Tracker(cfg, build_accelerator(cfg, cpu=True), run_dir, manifest)
    for epoch in range(evaluations):
        tracker.log({"train/loss_encoder": 1.0, "epoch": epoch}, step=epoch + 1)
        tracker.log_evaluation(evaluation(model, x), model, step=epoch + 1, epoch=epoch, last=epoch == evaluations - 1)
    tracker.finish()
    wandb_files, wandb_bytes = folder_size(run_dir.wandb)
    run_files, run_bytes = folder_size(run_path)
    return {"wandb_files": wandb_files, "wandb_bytes": wandb_bytes, "run_files": run_files, "run_bytes": run_bytes}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench run-size", description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=10, help="evaluations (= epochs at train.eval_every=1)")
    parser.add_argument("--rows", type=int, default=512, help="latent-table rows (logging.table_rows, default 512)")
    parser.add_argument("--size", type=int, default=64, help="image size (data.size, default 64)")
    args = parser.parse_args(argv)
    if args.evaluations < 1 or args.rows < 2 or args.size < 8:
        raise UserError("--evaluations must be >= 1, --rows >= 2, --size >= 8")
    os.environ.setdefault("WANDB_SILENT", "true")
    work = Path(tempfile.mkdtemp(prefix="vaedist-bench-runsize-"))
    try:
        x = photographs(work / "photos", args.rows, args.size)
        rows = {
            "defaults (bounded)": measure(work / "bounded", [], x, args.evaluations, args.size),
            "table every eval, full thumbs, all PNGs": measure(
                work / "unbounded", ["logging.table_every=1", f"logging.thumbnail_size={args.size}",
                                     "logging.keep_images=0"], x, args.evaluations, args.size),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = args.evaluations
    print(f"run size after {n} evaluations ({args.rows} table rows, {args.size} px), per evaluation:")
    print(f"  {'':42s} {'wandb files':>12s} {'wandb KB':>9s} {'run-dir files':>14s} {'run-dir KB':>11s}")
    for name, r in rows.items():
        print(f"  {name:42s} {r['wandb_files'] / n:12.1f} {r['wandb_bytes'] / n / 1e3:9.0f} "
              f"{r['run_files'] / n:14.1f} {r['run_bytes'] / n / 1e3:11.0f}")
    return 0
