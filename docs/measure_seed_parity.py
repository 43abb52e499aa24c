"""The measurements behind README's "Reproducing the seed, and where we differ" table, in one command:

    python docs/measure_seed_parity.py --out OUT [--epochs 15] [--seeds 8 9]

(about 25 minutes on a 2-core CPU VM). It builds the embedded sample (`vaedist.sample`) and shards it into
OUT/shards/{food101,coco}, then prints and writes to OUT/measurements.json:

1. crop: how many sample validation images the window rule vaedist used before (offset floored, padding
   ceil(diff/2) before) moves against the seed's torchvision pipeline (CenterCrop(375) -> Resize(64)),
   both computed from the stored JPEGs with Pillow and torchvision only;
2. torchmetrics: its SSIM (the installed release) against scikit-image's standard SSIM per image, on
   tests/test_metrics.py's photo pairs;
3. training: the seed model with configs/seed_food101.yaml and configs/food101.yaml (batch 16 on the
   sample, otherwise as written), each with train.prior_pass on and off, for every seed; the evaluation
   after the first epoch and at the end (means over seeds, and each seed);
4. on the final weights of every seed_food101 run with the prior pass: mu against a sampled z (the seed's
   evaluation), unflipped against randomly flipped validation images (the seed's Food-101 validation
   transform), the first batch of 16 (the seed evaluated its first batch) against the whole split, and the
   seed's own metric definitions (tests/test_seed_parity.py's transcriptions of train_utils.py) next to ours.
Runs already finished under OUT are reused. The step-time cost of the prior pass is a benchmark:
`python -m vaedist.bench train --variants synthetic ...` (README gives the command).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The seed's transcriptions stay in the tests (never in the package); the measurements reuse them.
from tests.test_metrics import photo_pairs, skimage_ssim  # noqa: E402
from tests.test_seed_parity import seed_pearson_correlation, seed_structural_similarity  # noqa: E402
from vaedist.config import load_config  # noqa: E402
from vaedist.data import build_loader  # noqa: E402
from vaedist.evaluate import evaluate  # noqa: E402
from vaedist.metrics import ReconstructionMetrics  # noqa: E402
from vaedist.models import load_model  # noqa: E402
from vaedist.models.seed import reparameterise  # noqa: E402
from vaedist.rundir import RunDir  # noqa: E402
from vaedist.sample import build_sample  # noqa: E402
from vaedist.shard import shard_dataset  # noqa: E402

KEYS = ("val/mse", "val/psnr", "val/ssim", "val/pcc")


def sample_shards(out: Path) -> dict[str, Path]:
    shards = {"food101": out / "shards" / "food101", "coco": out / "shards" / "coco"}
    if not all((path / "manifest.json").is_file() for path in shards.values()):
        roots = build_sample(out / "data")
        for name, path in shards.items():
            shard_dataset(name, roots[name], path, workers=1, progress=False)
    return shards


def stored_val_jpegs(shard_dir: Path) -> list[bytes]:
    out = []
    for tar_path in sorted(shard_dir.glob("val-*.tar")):
        with tarfile.open(tar_path) as tar:
            out += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
    return out


def floor_rule_crop(img: Image.Image, crop: int = 375) -> Image.Image:
    """The window vaedist used before: offset floor((side - crop) / 2), i.e. ceil(pad / 2) padding before."""
    x0, y0 = (img.width - crop) // 2, (img.height - crop) // 2
    return img.crop((x0, y0, x0 + crop, y0 + crop))


def crop_shift(shards: dict[str, Path]) -> dict:
    seed_view = transforms.Compose([transforms.CenterCrop((375, 375)), transforms.Resize((64, 64)), transforms.PILToTensor()])
    floor_view = transforms.Compose([floor_rule_crop, transforms.Resize((64, 64)), transforms.PILToTensor()])
    out = {}
    for name, path in shards.items():
        diffs = []
        for jpeg in stored_val_jpegs(path):
            with Image.open(io.BytesIO(jpeg)) as img:
                img = img.convert("RGB")
                diffs.append((seed_view(img).int() - floor_view(img).int()).abs())
        moved = [d for d in diffs if d.max() > 0]
        out[name] = {"images": len(diffs), "moved": len(moved), "worst_pixel_levels": int(max(d.max() for d in diffs)),
                     "mean_levels_over_moved_images": float(torch.stack(moved).float().mean()) if moved else 0.0}
    return out


def torchmetrics_ssim_gap() -> dict:
    x, y = photo_pairs()
    ours = np.array([skimage_ssim(x[i].numpy(), y[i].numpy()) for i in range(len(x))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array([float(structural_similarity_index_measure(y[i:i + 1].float(), x[i:i + 1].float(), data_range=1.0))
                           for i in range(len(x))])
    return {"torchmetrics": torchmetrics.__version__, "pairs": len(x),
            "min": float((theirs - ours).min()), "max": float((theirs - ours).max())}


def train(config: str, shards: Path, run_dir: Path, seed: int, epochs: int, prior_pass: bool) -> list[dict]:
    run = RunDir(run_dir)
    if not run.final_files.weights.is_file():
        subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / f"{config}.yaml"),
                        f"data.shards={shards}", f"run.dir={run_dir}", "train.batch_size=16", f"train.epochs={epochs}",
                        f"train.seed={seed}", f"train.prior_pass={str(prior_pass).lower()}", "train.eval_every=1",
                        "data.workers=2", "logging.wandb=false"], check=True, capture_output=True, cwd=REPO)
    return [row for row in run.read_metrics() if "val/mse" in row]


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


def our_metrics(x: torch.Tensor, rec: torch.Tensor) -> dict[str, float]:
    metrics = ReconstructionMetrics()
    metrics.update((x + 1) / 2, ((rec + 1) / 2).clamp(0, 1))
    return metrics.compute()


def evaluation_variants(run_dir: Path, shards: Path) -> dict:
    model = load_model(RunDir(run_dir).final)
    config = RunDir(run_dir).final_files.config
    out = {}
    for name, overrides, flipped in (("mean", [], False), ("sample", ["train.eval_latent=sample"], False),
                                     ("mean_flipped_val", [], True)):
        AcceleratorState._reset_state(True)
        accelerator = Accelerator(cpu=True)
        cfg = load_config(config, [f"data.shards={shards}", "data.workers=0", *overrides])
        loader = build_loader(cfg.data, "val", train=False, batch_size=256, accelerator=accelerator)
        result = evaluate(model, FlippedLoader(loader) if flipped else loader, accelerator, cfg)
        out[name] = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    (x, _), = list(build_loader(cfg.data, "val", train=False, batch_size=10_000))  # the whole split, in order
    with torch.no_grad():
        mu, logvar = model.encode(x)
        split, first_batch = our_metrics(x, model.decode(mu)), our_metrics(x[:16], model.decode(mu[:16]))
        out["first_batch_16_minus_split"] = {k: first_batch[k] - split[k] for k in split}
        torch.manual_seed(0)
        for name, z in (("mean", mu), ("sample", reparameterise(mu, logvar))):
            rec = model.decode(z)
            x01, rec01 = (x + 1) / 2, ((rec + 1) / 2).clamp(0, 1)
            ours = our_metrics(x, rec)
            out[f"seed_definitions_{name}"] = {  # the seed's definitions on the whole split as one batch
                "seed valid_MSE (nn.MSELoss on [-1, 1])": float(torch.nn.MSELoss()(rec, x)),
                "seed valid_PCC (over the batch)": float(seed_pearson_correlation(rec01, x01)),
                "seed valid_SSIM (zero padding, whole map)": float(seed_structural_similarity(rec01, x01)),
                "psnr of the split's mse (vaedist before)": float(10 * np.log10(1 / ours["mse"])),
                **{f"ours {k}": v for k, v in ours.items()},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True, help="working folder: sample, shards, runs, measurements.json")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[8, 9])
    args = parser.parse_args()
    out = args.out.resolve()
    shards = sample_shards(out)
    results: dict = {"crop_floor_rule_vs_torchvision": crop_shift(shards), "torchmetrics_ssim_minus_skimage": torchmetrics_ssim_gap(),
                     "training": {}, "evaluation": {}}
    print(json.dumps({k: results[k] for k in ("crop_floor_rule_vs_torchvision", "torchmetrics_ssim_minus_skimage")}, indent=1), flush=True)
    for config in ("seed_food101", "food101"):
        for prior_pass in (True, False):
            label = f"{config} prior_pass={prior_pass}"
            runs = {seed: train(config, shards["food101"], out / "runs" / f"{config}-pp{int(prior_pass)}-s{seed}", seed,
                                args.epochs, prior_pass) for seed in args.seeds}
            results["training"][label] = runs
            for when, index in (("first epoch", 0), ("end", -1)):
                means = {k: float(np.mean([rows[index][k] for rows in runs.values()])) for k in KEYS}
                spread = {k: [round(rows[index][k], 4) for rows in runs.values()] for k in KEYS}
                print(f"{label:34s} {when:11s} " + "  ".join(f"{k}={means[k]:.4f} {spread[k]}" for k in KEYS), flush=True)
            if config == "seed_food101" and prior_pass:
                for seed in args.seeds:
                    variants = evaluation_variants(out / "runs" / f"{config}-pp1-s{seed}", shards["food101"])
                    results["evaluation"][seed] = variants
                    print(json.dumps({seed: variants}, indent=1), flush=True)
    (out / "measurements.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
