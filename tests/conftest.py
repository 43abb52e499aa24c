"""Shared fixtures: the embedded sample photographs laid out as dataset trees, built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaedist.sample import SampleSizes, build_coco, build_food101

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
