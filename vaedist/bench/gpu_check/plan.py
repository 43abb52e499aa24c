"""The stages of the GPU check: the exact command lines, the time each may take, and what each needs.

Budgets are seconds of wall time on the GPU machine (one H200, 16 cores) for the default sizes. `budget_s`
is a stage's hard limit; `reserve_s` is what the stages before it leave for it (about what it needs), so
that an earlier stage that overruns eats into its own budget, not into the stages after it. Their sum
stays under the 6-minute deadline; `train_compile` reserves nothing and runs on what is left.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# Run whatever --only says: a rerun on a fresh machine needs the wheels, and every report the machine's facts
ALWAYS_RUN = ("install", "environment")


@dataclass
class CheckOptions:
    out: Path
    work: Path  # data, logs, the installed wheels, the run directory (not under `out`: only the report returns)
    wheels: Path | None = None
    images: int = 16384  # training images (train2017 + test2017); ~2-3 s per epoch at 5,000-10,000 images/s
    val_images: int = 512
    batch: int = 512  # train bench and the real run (the batch)
    loader_batch: int = 256
    loader_epochs: int = 3  # loader bench rounds (the first is a warm-up)
    rounds: int = 3  # train bench timed rounds after its warm-up round
    epochs: int = 3  # the real run
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    config: str = "configs/coco.yaml"  # the real run's and the train bench's config
    deadline_s: float = 360.0  # the whole check, installation included
    budgets: dict[str, float] = field(default_factory=dict)  # per-stage overrides of budget_s
    only: set[str] | None = None  # run these stages (and ALWAYS_RUN) only; the others: "not selected by --only"

    @property
    def site(self) -> Path:
        return self.work / "site"  # where the wheels are installed (pip --target)

    @property
    def photos(self) -> Path:
        return self.work / "data" / "coco"

    @property
    def shards(self) -> Path:
        return self.work / "data" / "shards"

    @property
    def run_dir(self) -> Path:
        return self.work / "run"

    def result(self, name: str) -> Path:
        return self.work / "results" / name


@dataclass
class Stage:
    name: str
    title: str
    commands: list[list[str]]
    budget_s: float
    reserve_s: float
    needs_cuda: bool = False  # a GPU row: "skipped (no CUDA)" on a machine without one
    needs: tuple[str, ...] = ()  # stages whose failure makes this one pointless (skipped when they fail)
    result: Path | None = None  # the file the stage writes its figures to (JSON; junit XML for the tests)
    skip_reason: str = ""  # set when the plan already knows the stage cannot run
    min_s: float = 0.0  # fewer seconds left than this: skipped ("no time left") rather than started
    clean: tuple[Path, ...] = ()  # removed before the stage starts (the run directory: a new run, not a resume)

    def minimum(self) -> float:
        return self.min_s or 0.5 * self.reserve_s


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def train_bench(opts: CheckOptions, name: str, variants: str, *overrides: str) -> list[str]:
    return python("-m", "vaedist.bench", "train", "--shards", str(opts.shards), "--config", opts.config,
                  "--rounds", str(opts.rounds), "--variants", variants, "--json", str(opts.result(f"{name}.json")),
                  f"train.batch_size={opts.batch}", *overrides)


def pytest_timeout_available() -> bool:
    import importlib.util  # stdlib; only this probe needs it

    return importlib.util.find_spec("pytest_timeout") is not None


def build_plan(opts: CheckOptions) -> list[Stage]:
    tests_xml = opts.result("gpu-tests.xml")
    per_test = ["--timeout", "240"] if pytest_timeout_available() else []  # one hung test must not take the rest
    stages = [
        Stage("install", "install the wheels the machine lacks (pip --no-index --no-deps --target)",
              [python("-m", "vaedist.bench.gpu_check.wheels", str(opts.wheels), "--work", str(opts.work / "wheels"),
                      "--target", str(opts.site), "--json", str(opts.result("install.json")))],
              budget_s=75, reserve_s=25, result=opts.result("install.json"),
              skip_reason="" if opts.wheels else "no wheels folder given: using what is installed"),
        Stage("environment", "every runtime dependency imports; device, driver, versions",
              [python("-m", "vaedist.bench.gpu_check.environment", "--json", str(opts.result("environment.json")))],
              budget_s=45, reserve_s=10, result=opts.result("environment.json")),
        Stage("data", f"{opts.images:,} + {opts.val_images:,} full-size 640x480 JPEG photographs, sharded as COCO",
              [python("-m", "vaedist.bench.gpu_check.dataset", str(opts.photos), "--images", str(opts.images),
                      "--val-images", str(opts.val_images), "--workers", str(opts.workers),
                      "--shards", str(opts.shards), "--json", str(opts.result("data.json"))),
               python("-m", "vaedist.shard", "coco", "--root", str(opts.photos), "--out", str(opts.shards),
                      "--workers", str(opts.workers))],
              budget_s=90, reserve_s=30, result=opts.result("data.json")),
        Stage("gpu_tests", "the GPU-marked tests (pytest -m gpu)",
              [python("-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                      *per_test, f"--junitxml={tests_xml}", "tests")],
              budget_s=150, reserve_s=90, result=tests_xml),
        Stage("loader", "loader bench: seed pipeline, DALI cpu, DALI mixed, reference, decode-once cache",
              [python("-m", "vaedist.bench", "loader", "--shards", str(opts.shards), "--workers", str(opts.workers),
                      "--batch", str(opts.loader_batch), "--epochs", str(opts.loader_epochs),
                      "--json", str(opts.result("loader.json")))],
              budget_s=90, reserve_s=40, needs=("data",), result=opts.result("loader.json")),
        Stage("train", f"train bench, batch {opts.batch}, precision auto (bf16 on the GPU), channels_last: "
              "ceiling, pipeline, cached pipeline",
              [train_bench(opts, "train", "synthetic,pipeline,pipeline+cache", "train.precision=auto",
                           "train.channels_last=true")],
              budget_s=75, reserve_s=35, needs=("data",), result=opts.result("train.json")),
        Stage("train_fp16", "train bench, fp16 (one gradient scaler, two optimizers): ceiling",
              [train_bench(opts, "train_fp16", "synthetic", "train.precision=fp16", "train.channels_last=true")],
              budget_s=45, reserve_s=20, needs_cuda=True, needs=("data",), result=opts.result("train_fp16.json")),
        Stage("train_fp32", "train bench, fp32: ceiling",
              [train_bench(opts, "train_fp32", "synthetic", "train.precision=no", "train.channels_last=true")],
              budget_s=45, reserve_s=20, needs_cuda=True, needs=("data",), result=opts.result("train_fp32.json")),
        Stage("train_nchw", "train bench, precision auto, channels_last off: ceiling",
              [train_bench(opts, "train_nchw", "synthetic", "train.precision=auto", "train.channels_last=false")],
              budget_s=45, reserve_s=20, needs_cuda=True, needs=("data",), result=opts.result("train_nchw.json")),
        Stage("real_run", f"{opts.epochs}-epoch training run: python -m vaedist.launch launch/train.py --config {opts.config}",
              [python("-m", "vaedist.launch", "--num_processes", "1", "--num_machines", "1",
                      "--mixed_precision", "no", "--dynamo_backend", "no",
                      "launch/train.py", "--config", opts.config, f"data.shards={opts.shards}",
                      f"run.dir={opts.run_dir}", f"train.epochs={opts.epochs}", f"train.batch_size={opts.batch}",
                      "logging.mode=offline"),
               python("-m", "vaedist.bench.gpu_check.readback", str(opts.run_dir),
                      "--json", str(opts.result("real_run.json")))],
              budget_s=120, reserve_s=50, needs=("data",), result=opts.result("real_run.json"), clean=(opts.run_dir,)),
        Stage("train_compile", "train bench, precision auto + torch.compile: ceiling (runs on the time left)",
              [train_bench(opts, "train_compile", "synthetic", "train.precision=auto", "train.channels_last=true",
                           "train.compile=true")],
              budget_s=150, reserve_s=0, min_s=45, needs_cuda=True, needs=("data",),
              result=opts.result("train_compile.json")),
    ]
    for stage in stages:
        stage.budget_s = opts.budgets.get(stage.name, stage.budget_s)
        if opts.only is not None and stage.name not in opts.only | set(ALWAYS_RUN) and not stage.skip_reason:
            stage.skip_reason = "not selected by --only"
    return stages
