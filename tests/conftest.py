"""Shared fixtures: the embedded sample photographs laid out as dataset trees, built once per session; shards
read back with tarfile and with DALI's own reader; a small real VAE writing run dirs through the Tracker;
compare's HTML page and W&B's offline runs read back with parsers we did not write."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
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
from vaedist.models import SeedVAE as VAE
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


# A tiny model of each architecture on 32-pixel images (a few thousand parameters): what the encode, latent and
# probe tests run every architecture the trainer supports with. arch -> (config overrides, latent shape).
TINY_MODELS: dict[str, tuple[list[str], list[int]]] = {
    "seed": (["model.arch=seed", "model.latent_dim=8", "model.encoder_channels=[8,16,32]",
              "model.decoder_channels=[32,16,8]", "model.hidden_dim=32"], [8]),
    # LDM's layout at f=4 with DC-AE's shortcuts
    "spatial": (["model.arch=spatial", "model.spatial.channels=[8,16,16]", "model.spatial.downsample=4",
                 "model.spatial.norm_groups=4", "model.spatial.latent_channels=4", "model.spatial.shortcuts=true"],
                [4, 8, 8]),
}


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, tuple[list[str], list[int]]]:
    """arch -> (config overrides, latent shape at data.size=32) of a tiny model of every architecture."""
    return TINY_MODELS


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
        pairs, steps = cfg.logging.interpolation_pairs, cfg.logging.interpolation_steps
        t = torch.linspace(0, 1, steps).view(1, steps, 1)
        line = (1 - t) * mu[0 : 2 * pairs : 2].unsqueeze(1) + t * mu[1 : 2 * pairs : 2].unsqueeze(1)  # [P, T, latent]
        strips = to01(model.decode(line.flatten(0, 1))).clamp(0, 1).view(-1, steps, *x.shape[1:])
        return EvalResult(
            metrics={"val/mse": mse, "val/psnr": float(-10 * np.log10(mse)), "val/kl": float(kl_per_dim.sum())},
            kl_per_dim=kl_per_dim,
            mu=mu.float(),
            labels=labels,
            thumbnails=(to01(x) * 255).round().to(torch.uint8)[: cfg.logging.table_rows],
            originals=to01(x[:k]),
            reconstructions=to01(recon[:k]).clamp(0, 1),
            interpolations=strips,
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


def _mount_tmpfs(path: Path, options: str) -> bool:
    """A small tmpfs at `path` (root only): a real read-only or full filesystem, not a permission bit."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nothing can be written into: a read-only tmpfs as root, else a folder without write
    permission (which root would ignore)."""
    path = tmp_path / "ro"
    if _mount_tmpfs(path, "size=1m,ro"):
        yield path
        subprocess.run(["umount", "-l", str(path)], check=False)
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount: no way to make a folder read-only")
    path.mkdir()
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem (tmpfs, root only) to fill up; skipped where none can be mounted."""
    path = tmp_path / "small"
    if not _mount_tmpfs(path, "size=3m"):
        pytest.skip("needs root to mount a small tmpfs")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _damage_scan(jpg: bytes) -> bytes:
    """Flip bytes inside the Huffman table and zero the start-of-scan header's body: the marker chain and the
    frame header still read (start-up passes), and DALI and Pillow both fail when they decode the sample."""
    data = bytearray(jpg)
    dht, sos = data.find(b"\xff\xc4"), data.find(b"\xff\xda")
    for k in range(dht + 5, dht + 21):
        data[k] ^= 0xFF
    data[sos + 4 : sos + 12] = b"\0" * 8
    return bytes(data)


@pytest.fixture(scope="session")
def damaged_food_shards(food_shards, tmp_path_factory) -> tuple[Path, list[tuple[str, str, str]]]:
    """A copy of `food_shards` where one training and one validation JPEG were damaged in place after sharding
    (found by Python's tarfile, same sizes). Returns (shard dir, [(split, tar name, key)])."""
    import tarfile

    out = tmp_path_factory.mktemp("damaged") / "food101"
    shutil.copytree(food_shards, out)
    damaged = []
    for split in ("train", "val"):
        tar = sorted(out.glob(f"{split}-*.tar"))[0]
        with tarfile.open(tar) as tf:
            member = [m for m in tf.getmembers() if m.name.endswith(".jpg")][3]
        data = bytearray(tar.read_bytes())
        data[member.offset_data : member.offset_data + member.size] = _damage_scan(
            bytes(data[member.offset_data : member.offset_data + member.size]))
        tar.write_bytes(bytes(data))
        damaged.append((split, tar.name, member.name.split(".", 1)[0]))
    return out, damaged


# --- what compare and W&B wrote, read back with parsers we did not write -----------------------------


class ReportParser(HTMLParser):
    """Collects what the tests look at: tables (header, rows by data-key in page order), images, inline SVGs by
    figure, external references."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[str, list[str]]] = {}  # table class -> data-key -> cell texts
        self.header: dict[str, list[str]] = {}  # table class -> column titles
        self.row_order: dict[str, list[str]] = {}  # table class -> data-keys in page order
        self.images: list[dict[str, str]] = []
        self.svg_figures: list[str] = []
        self.figure_kinds: dict[str, str] = {}  # data-key -> data-kind
        self.figure_attrs: dict[str, dict[str, str]] = {}
        self.svg_text: dict[str, str] = {}  # figure data-key -> the text drawn in its SVG
        self.external: list[str] = []
        self._table = self._row = None
        self._cell: list[str] | None = None
        self._th: list[str] | None = None
        self._figure_key = None
        self._svg_key = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if name in a and not a[name].startswith(("data:", "#")):
                self.external.append(a[name])
        if tag == "table":
            self._table = a.get("class")
            self.tables.setdefault(self._table, {})
            self.header.setdefault(self._table, [])
            self.row_order.setdefault(self._table, [])
        elif tag == "th" and self._table:
            self._th = []
        elif tag == "tr" and self._table and "data-key" in a:
            self._row = a["data-key"]
            self._cells: list[str] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "figure" and "data-key" in a:
            self._figure_key = a["data-key"]
            self.figure_kinds[a["data-key"]] = a.get("data-kind", "")
            self.figure_attrs[a["data-key"]] = a
        elif tag == "svg" and self._figure_key:
            self.svg_figures.append(self._figure_key)
            self._svg_key, self._figure_key = self._figure_key, None
            self.svg_text[self._svg_key] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "th" and self._th is not None:
            self.header[self._table].append("".join(self._th).strip())
            self._th = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table][self._row] = self._cells
            self.row_order[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "svg":
            self._svg_key = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._th is not None:
            self._th.append(data)
        elif self._svg_key is not None:
            self.svg_text[self._svg_key] += data + "\n"

    def cell(self, table: str, row: str, column: str) -> str:
        return self.tables[table][row][self.header[table].index(column)]


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="session")
def read_report():
    """The HTML page of `vaedist.compare`, parsed by the standard library's HTMLParser: read_report(path)."""
    return parse_report


def _inspect_wandb_run(offline_run: Path) -> list[dict]:
    """`wandb leet inspect --json`: one JSON record per line of the run's .wandb transaction log."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def inspect_records():
    """inspect_records(OFFLINE_RUN_DIR): the records of a W&B offline run, as `wandb leet inspect --json` reads them."""
    return _inspect_wandb_run
