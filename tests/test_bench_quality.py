"""The quality benchmark: its no-learning baselines against independent computations, and the CLI end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from vaedist.bench.quality import Thumbnail, baseline_sides

REPO = Path(__file__).resolve().parents[1]


def test_a_thumbnail_is_the_block_means_and_a_1x1_one_the_mean_colour():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    thumb, logvar = Thumbnail(8, 64).encode(x)
    blocks = x.numpy().reshape(2, 3, 8, 8, 8, 8).mean(axis=(3, 5))  # 8x8 pixel blocks, averaged by numpy
    np.testing.assert_allclose(thumb.numpy(), blocks, rtol=1e-5, atol=1e-6)
    assert torch.equal(logvar, torch.zeros_like(thumb)) and Thumbnail(8, 64).latent_dim == 192
    colour = Thumbnail(1, 64).decode(Thumbnail(1, 64).encode(x)[0])
    np.testing.assert_allclose(colour.numpy(), np.broadcast_to(x.numpy().mean(axis=(2, 3), keepdims=True), x.shape), rtol=1e-5, atol=1e-6)


def test_baselines_bracket_each_latent_size_tightly_and_by_powers_of_two():
    assert baseline_sides([128], 64) == [1, 4, 6, 7, 8]  # 108 < 128 < 147 numbers; 48 < 128 < 192
    assert baseline_sides([192], 64) == [1, 8]  # exactly 8x8
    assert baseline_sides([128, 256], 64) == [1, 4, 6, 7, 8, 9, 10, 16]


def test_quality_benchmark_trains_a_recipe_and_prints_it_beside_the_baselines(food_shards, tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, "-m", "vaedist.bench", "quality", "--shards", str(food_shards), "--config",
                           "configs/demo.yaml", "--steps", "4", "--batch-size", "16", "--keep", str(tmp_path / "runs"),
                           "--json", str(out), "data.workers=1"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("validation quality after 4 steps of 16 images")[1]
    # demo's 32 numbers lie between 3x3 and 4x4 thumbnails (27 and 48 numbers), and between 2x2 and 4x4
    for row in ("demo", "no learning: mean colour (1x1)", "no learning: 2x2 thumbnail", "no learning: 3x3 thumbnail",
                "no learning: 4x4 thumbnail"):
        assert f"\n  {row} " in table, row
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    demo = rows["demo"]
    assert demo["latent"] == 32 and not demo["error"] and set(demo["metrics"]) == {"val/psnr", "val/ssim", "val/pcc", "val/kl"}
    assert demo["blowups"] is not None and rows["no learning: 4x4 thumbnail"]["latent"] == 48
    # 60 training images, batch 16: 3 steps an epoch, so 4 steps are 2 epochs (the last cut short)
    saved = yaml.safe_load((tmp_path / "runs" / "demo" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["max_steps"] == 4 and saved["train"]["batch_size"] == 16
    assert [r["step"] for r in map(json.loads, (tmp_path / "runs" / "demo" / "metrics.jsonl").read_text().splitlines())
            if "val/psnr" in r] == [4]


def test_quality_benchmark_refuses_recipes_that_evaluate_different_images(food_shards, tmp_path):
    other = tmp_path / "small.yaml"
    other.write_text((REPO / "configs" / "demo.yaml").read_text().replace("workers: 2", "workers: 2\n  size: 32"))
    proc = subprocess.run([sys.executable, "-m", "vaedist.bench", "quality", "--shards", str(food_shards), "--config",
                           "configs/demo.yaml", str(other), "--steps", "1", "--batch-size", "16"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "recipes evaluate different data" in proc.stderr and "Traceback" not in proc.stderr
