"""Shared fixtures: the embedded sample photographs laid out as dataset trees, built once per session; shards
read back with tarfile and with DALI's own reader; a small real VAE writing run dirs through the Tracker."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image, ImageOps

from vaedist.accelerator import build_accelerator
from vaedist.config import Config, load_config
from vaedist.evaluate import EvalResult
from vaedist.model import VAE
from vaedist.rundir import RunDir
from vaedist.sample import SampleSizes, build_coco, build_food101
from vaedist.shard.format import Manifest, split_member_name
from vaedist.tracking import Tracker

# Small enough for a 2-core CI machine, big enough for several batches and every class.
TEST_SIZES = SampleSizes(coco_train=40, coco_test=12, coco_val=16, food_train_per_class=10, food_test_per_class=4)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_trees(tmp_path_factory) -> dict[str, Path]:
    """Read-only dataset trees: coco (official layout), coco_seed (seed layout), food101. Copy before salting."""
    base = tmp_path_factory.mktemp("sample")
    return {
        "coco": build_coco(base / "coco", TEST_SIZES, layout="official"),
        "coco_seed": build_coco(base / "coco_seed", TEST_SIZES, layout="seed"),
        "food101": build_food101(base / "food-101", TEST_SIZES),
    }


@pytest.fixture(scope="session")
def food_shards(sample_trees, tmp_path_factory) -> Path:
    """Food-101 sample shards for the trainer tests, built once per session. Read-only: training never writes
    into the shard directory (the decode-once cache lives in memory)."""
    from vaedist.shard import shard_dataset

    out = tmp_path_factory.mktemp("train_shards") / "food101"
    shard_dataset("food101", sample_trees["food101"], out, workers=2, seed=0, progress=False)
    return out


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    # Tests never talk to W&B's servers: runs are offline and read back from disk.
    monkeypatch.setenv("WANDB_MODE", os.environ.get("VAEDIST_TEST_WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_SILENT", "true")


# --- shards read back by readers we did not write ----------------------------------------------------


def _read_shards(out: Path, manifest: Manifest) -> dict[str, dict]:
    """Every sample of every shard, read with tarfile: key -> {"split", "shard", "jpg", "cls"?, "json", "meta"}."""
    samples: dict[str, dict] = {}
    for split_name, split in manifest.splits.items():
        for shard in split.shards:
            with tarfile.open(out / shard.name) as tar:
                members = tar.getmembers()
                for member in members:
                    key, ext = split_member_name(member.name)
                    entry = samples.setdefault(key, {"split": split_name, "shard": shard.name})
                    assert entry["shard"] == shard.name, f"key {key} in two shards: a duplicate"
                    assert ext not in entry, f"{member.name} twice"
                    entry[ext] = tar.extractfile(member).read()
            assert len({split_member_name(m.name)[0] for m in members}) == shard.samples
    for entry in samples.values():
        entry["meta"] = json.loads(entry["json"])
    return samples


def _dali_read_all(out: Path, manifest: Manifest, split: str, ext: list[str]) -> list[tuple]:
    """One epoch of `split` through DALI's CPU webdataset reader with our index files; decoded too."""
    from nvidia.dali import fn, pipeline_def, types  # DALI is optional: only the tests that read with it need it

    shards = manifest.splits[split].shards

    @pipeline_def(batch_size=8, num_threads=2, device_id=None)
    def read():
        *components, = fn.readers.webdataset(
            paths=[str(out / s.name) for s in shards], index_paths=[str(out / s.index) for s in shards], ext=ext,
            missing_component_behavior="error", name="reader")
        return (fn.decoders.image(components[0], device="cpu", output_type=types.RGB), *components[1:])

    pipe = read()
    pipe.build()
    epoch = pipe.reader_meta("reader")["epoch_size"]
    rows: list[tuple] = []
    while len(rows) < epoch:  # the last batch wraps into the next epoch: keep the first `epoch` samples
        outputs = pipe.run()
        for i in range(len(outputs[0])):
            if len(rows) < epoch:
                rows.append(tuple(np.array(o.at(i)) for o in outputs))
    return rows


@pytest.fixture(scope="session")
def read_shards():
    """read_shards(out, manifest): every sample of a shard directory, through tarfile (no duplicate keys)."""
    return _read_shards


@pytest.fixture(scope="session")
def dali_read_all():
    """dali_read_all(out, manifest, split, exts): one epoch of a split through DALI's fn.readers.webdataset."""
    return _dali_read_all


# --- run dirs written by the real Tracker -------------------------------------------------------------


class TrackingSample:
    """A small real VAE (narrow widths) encoding real photographs (the embedded Food-101 sample) and the real
    Tracker writing a run dir: what the tests of tracking and of compare start from. The EvalResult is
    computed here from the model, so these tests do not depend on the trainer's evaluation loop."""

    IMAGE_SIZE = 32
    LATENT = 8
    SMALL = [
        f"data.size={IMAGE_SIZE}",
        f"model.latent_dim={LATENT}",
        "model.encoder_channels=[8,16,32]",
        "model.decoder_channels=[32,16,8]",
        "model.hidden_dim=32",
        "logging.num_reconstructions=6",
        "logging.num_samples=9",
        "logging.table_rows=10",
        "logging.table_every=1",  # a table at every evaluation; test_tracking_bounded pins the cadence
        "logging.mode=offline",
    ]

    def __init__(self, food_root: Path):
        self.food_root = food_root

    @staticmethod
    def manifest(classes: list[str]) -> Manifest:
        return Manifest(dataset="food101", root="sample", tool="test", options={}, classes=classes, splits={}, skipped=[])

    def photos(self, per_class: int = 4) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Real test-split photographs: ([N, 3, S, S] in [-1, 1], labels [N], class names)."""
        classes = (self.food_root / "meta" / "classes.txt").read_text().split()
        images, labels, taken = [], [], {c: 0 for c in classes}
        for line in (self.food_root / "meta" / "test.txt").read_text().split():
            name = line.split("/")[0]
            if taken[name] >= per_class:
                continue
            taken[name] += 1
            with Image.open(self.food_root / "images" / f"{line}.jpg") as im:
                im = ImageOps.fit(im.convert("RGB"), (self.IMAGE_SIZE, self.IMAGE_SIZE))
                images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
            labels.append(classes.index(name))
        x = torch.stack(images).float() / 127.5 - 1
        return x, torch.tensor(labels), classes

    @staticmethod
    @torch.no_grad()
    def evaluation(model: VAE, x: torch.Tensor, labels: torch.Tensor | None, cfg: Config) -> EvalResult:
        """What the trainer's evaluation hands over, computed directly from the model on real photographs."""
        model.eval()
        mu, logvar = model.encode(x)
        recon = model.decode(mu)
        kl_per_dim = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(dim=0)  # [latent]
        to01 = lambda t: (t + 1) / 2  # noqa: E731
        k = cfg.logging.num_reconstructions
        mse = float(((to01(recon) - to01(x)) ** 2).mean())
        return EvalResult(
            metrics={"val/mse": mse, "val/psnr": float(-10 * np.log10(mse)), "val/kl": float(kl_per_dim.sum())},
            kl_per_dim=kl_per_dim,
            mu=mu.float(),
            labels=labels,
            thumbnails=(to01(x) * 255).round().to(torch.uint8)[: cfg.logging.table_rows],
            originals=to01(x[:k]),
            reconstructions=to01(recon[:k]).clamp(0, 1),
        )

    @staticmethod
    def accelerator(cfg: Config) -> Accelerator:
        AcceleratorState._reset_state(reset_partial_state=True)  # several Accelerators in one pytest process
        return build_accelerator(cfg, cpu=True)

    def run(self, run_dir: Path, overrides: list[str], epochs: int = 2) -> tuple[Tracker, VAE, list[EvalResult]]:
        """A short "training" through the Tracker: 3 training rows and one evaluation per epoch."""
        cfg = load_config(None, self.SMALL + [f"run.dir={run_dir}"] + overrides)
        torch.manual_seed(0)
        model = VAE(cfg.model, image_size=self.IMAGE_SIZE)
        x, labels, classes = self.photos()
        tracker = Tracker(cfg, self.accelerator(cfg), RunDir(run_dir), self.manifest(classes))
        results = []
        step = 0
        for epoch in range(epochs):
            for _ in range(3):
                step += 10
                tracker.log({"train/loss_encoder": 100.0 / step, "train/loss_decoder": 1e-3 / step, "train/kl": 2.0,
                             "train/lr_encoder": 1e-3, "train/images_per_s": 500.0, "train/data_wait": 0.1,
                             "epoch": epoch}, step)
            result = self.evaluation(model, x, labels, cfg)
            tracker.log_evaluation(result, model, step=step, epoch=epoch, last=epoch == epochs - 1)
            results.append(result)
        return tracker, model, results


@pytest.fixture(scope="session")
def tracking_sample(sample_trees) -> TrackingSample:
    return TrackingSample(sample_trees["food101"])
