"""The measurements behind README's "Reproducing the seed, and where we differ" table.

    python -m vaedist.sample DIR && python -m vaedist.shard food101 --root DIR/food-101 --out SHARDS
    python docs/measure_seed_parity.py --shards SHARDS --out OUT [--epochs 20] [--seeds 8 9 10]

1. Trains the seed model with configs/seed_food101.yaml and configs/food101.yaml (batch 16 on the
   embedded sample, otherwise as written), each with train.prior_pass on and off, for every seed; prints
   the evaluation after the first epoch and at the end (means over seeds, and each seed).
2. On the final weights of every seed_food101 run with the prior pass: the evaluation decoding mu against
   a sampled z (the seed's rule), unflipped against randomly flipped validation images (the seed's
   Food-101 validation transform), and the seed's own metric definitions (tests/test_seed_parity.py's
   transcriptions of train_utils.py) next to ours on the same reconstructions.
Writes OUT/measurements.json. CPU figures; the runs take a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_seed_parity import seed_pearson_correlation, seed_structural_similarity  # noqa: E402
from vaedist.config import load_config  # noqa: E402
from vaedist.data import build_loader  # noqa: E402
from vaedist.evaluate import evaluate  # noqa: E402
from vaedist.metrics import ReconstructionMetrics  # noqa: E402
from vaedist.model import load_model, reparameterise  # noqa: E402
from vaedist.tracking import read_metrics  # noqa: E402

KEYS = ("val/mse", "val/psnr", "val/ssim", "val/pcc")


def train(config: str, shards: Path, run_dir: Path, seed: int, epochs: int, prior_pass: bool) -> list[dict]:
    if not (run_dir / "final" / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / f"{config}.yaml"),
                        f"data.shards={shards}", f"run.dir={run_dir}", "train.batch_size=16", f"train.epochs={epochs}",
                        f"train.seed={seed}", f"train.prior_pass={str(prior_pass).lower()}", "train.eval_every=1",
                        "data.workers=2", "logging.wandb=false"], check=True, capture_output=True, cwd=REPO)
    return [row for row in read_metrics(run_dir) if "val/mse" in row]


class FlippedLoader:
    """The validation loader with each image mirrored at random (p 0.5, seeded), as the seed's Food-101
    validation transform does (`transforms.RandomHorizontalFlip()` in its validation Compose)."""

    def __init__(self, loader, seed: int = 0):
        self.loader, self.seed = loader, seed

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for images, labels in self.loader:
            flip = torch.rand(images.shape[0], generator=g) < 0.5
            yield torch.where(flip[:, None, None, None], images.flip(-1), images), labels


def evaluation_variants(run_dir: Path, shards: Path) -> dict:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    model = load_model(run_dir / "final")
    out = {}
    for name, overrides, flipped in (("mean", [], False), ("sample", ["train.eval_latent=sample"], False),
                                     ("mean_flipped_val", [], True)):
        AcceleratorState._reset_state(True)
        accelerator = Accelerator(cpu=True)
        cfg = load_config(run_dir / "final" / "config.yaml", [f"data.shards={shards}", "data.workers=0", *overrides])
        loader = build_loader(cfg.data, "val", train=False, batch_size=256, accelerator=accelerator)
        result = evaluate(model, FlippedLoader(loader) if flipped else loader, accelerator, cfg)
        out[name] = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    # The seed's definitions on the whole split as one batch (the seed evaluates its first batch of 512)
    (x, _), = list(build_loader(cfg.data, "val", train=False, batch_size=10_000))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        torch.manual_seed(0)
        for name, z in (("mean", mu), ("sample", reparameterise(mu, logvar))):
            rec = model.decode(z)
            x01, rec01 = (x + 1) / 2, ((rec + 1) / 2).clamp(0, 1)
            ours = ReconstructionMetrics()
            ours.update(x01, rec01)
            ours = ours.compute()
            out[f"seed_definitions_{name}"] = {
                "seed valid_MSE (nn.MSELoss on [-1, 1])": float(torch.nn.MSELoss()(rec, x)),
                "seed valid_PCC (over the batch)": float(seed_pearson_correlation(rec01, x01)),
                "seed valid_SSIM (zero padding, whole map)": float(seed_structural_similarity(rec01, x01)),
                "psnr of the split's mse (vaedist before)": float(10 * np.log10(1 / ours["mse"])),
                **{f"ours {k}": v for k, v in ours.items()},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[8, 9, 10])
    args = parser.parse_args()
    results: dict = {"training": {}, "evaluation": {}}
    for config in ("seed_food101", "food101"):
        for prior_pass in (True, False):
            label = f"{config} prior_pass={prior_pass}"
            runs = {seed: train(config, args.shards.resolve(), args.out / f"{config}-pp{int(prior_pass)}-s{seed}", seed,
                                args.epochs, prior_pass) for seed in args.seeds}
            results["training"][label] = runs
            for when, index in (("first epoch", 0), ("end", -1)):
                means = {k: float(np.mean([rows[index][k] for rows in runs.values()])) for k in KEYS}
                spread = {k: [round(rows[index][k], 4) for rows in runs.values()] for k in KEYS}
                print(f"{label:34s} {when:11s} " + "  ".join(f"{k}={means[k]:.4f} {spread[k]}" for k in KEYS), flush=True)
            if config == "seed_food101" and prior_pass:
                for seed in args.seeds:
                    variants = evaluation_variants(args.out / f"{config}-pp1-s{seed}", args.shards.resolve())
                    results["evaluation"][seed] = variants
                    print(json.dumps({seed: variants}, indent=1), flush=True)
    (args.out / "measurements.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
