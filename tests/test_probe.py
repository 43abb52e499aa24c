"""The latent space's numbers and pictures at evaluation: linear probe / k-NN against their chance level (on
scikit-learn's own separable blobs and on the real Food-101 sample, for every architecture: the spatial latent is
probed as its flattened means), interpolation strips whose ends are the reconstructions, and both shown in W&B (read back with `wandb leet inspect`) and in the comparison page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from sklearn.datasets import make_blobs

from vaedist.accelerator import build_accelerator
from vaedist.compare import compare
from vaedist.config import ProbeConfig, load_config
from vaedist.data import build_loader
from vaedist.evaluate import evaluate
from vaedist.evaluate.probe import PROBE_KEYS, build_probe_loader, probe_scores, probe_subset
from vaedist.models import build_model, save_model
from vaedist.rundir import RunDir
from vaedist.shard.format import load_manifest
from vaedist.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.size=32", "data.workers=2", "logging.num_reconstructions=8", "logging.interpolation_pairs=3",
         "logging.interpolation_steps=5", "probe.knn_k=5", "logging.mode=offline"]


def blobs(classes: int, n: int, seed: int, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_blobs(n_samples=n, n_features=16, centers=classes, cluster_std=spread, random_state=seed)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def test_probe_is_above_chance_on_separable_data_and_at_chance_on_shuffled_labels():
    x, y = blobs(classes=5, n=3000, seed=0, spread=1.0)
    train, val = slice(0, 2000), slice(2000, None)
    scores = probe_scores(x[train], y[train], x[val], y[val], ProbeConfig(knn_k=20))
    assert set(scores) == set(PROBE_KEYS)
    assert abs(scores["val/probe_chance"] - 0.2) < 0.03  # make_blobs: balanced classes
    assert scores["val/probe_acc"] > 0.95 and scores["val/knn_acc"] > 0.95
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    chance = probe_scores(x[train], shuffled[train], x[val], shuffled[val], ProbeConfig(knn_k=20))
    # 1000 validation images: the standard error of an accuracy near 0.2 is 0.013
    assert abs(chance["val/probe_acc"] - 0.2) < 0.05 and abs(chance["val/knn_acc"] - 0.2) < 0.05


def test_chance_level_is_the_share_of_the_most_frequent_training_class():
    x = torch.randn(20, 4)
    y = torch.tensor([0] * 14 + [1] * 4 + [2] * 2)
    scores = probe_scores(x, y, x, y, ProbeConfig(knn_k=3))
    assert scores["val/probe_chance"] == pytest.approx(0.7)
    assert probe_scores(x, torch.zeros(20, dtype=torch.int64), x, y, ProbeConfig()) == {}  # one class: nothing to learn


def test_probe_subset_is_seeded_sorted_and_bounded():
    chosen = probe_subset(1000, 50, seed=3)
    assert len(chosen) == len(set(chosen.tolist())) == 50 and (np.diff(chosen) > 0).all()
    assert np.array_equal(chosen, probe_subset(1000, 50, seed=3))
    assert np.array_equal(probe_subset(10, 50, seed=3), np.arange(10))


@pytest.fixture(scope="module", params=["seed", "spatial"])  # every architecture (test_encode checks the list)
def evaluated(request, tiny_models, food_shards, tmp_path_factory):
    """The real evaluation of a small VAE of each architecture on the Food-101 sample shards, with the probe's
    training subset."""
    arch = request.param
    cfg = load_config(None, SMALL + tiny_models[arch][0] + [f"data.shards={food_shards}"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # (seed) running statistics away from BatchNorm's (0, 1) start, as after training: images vary
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.01, 0.1)
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = build_accelerator(cfg, training=False, cpu=True)
    val = build_loader(cfg.data, "val", train=False, batch_size=5, accelerator=accelerator)
    probe = build_probe_loader(cfg, accelerator, batch_size=5)
    result = evaluate(model, val, accelerator, cfg, probe)
    return {"arch": arch, "latent_shape": tiny_models[arch][1], "cfg": cfg, "model": model, "result": result, "val": val, "probe": probe}


def test_probe_on_the_food101_sample_is_above_its_chance_level(evaluated):
    """Each sample class is crops of one photograph: even an untrained encoder's means tell them apart."""
    metrics = evaluated["result"].metrics
    assert set(PROBE_KEYS) <= set(metrics)
    assert metrics["val/probe_chance"] == pytest.approx(1 / 6, abs=0.05)  # 6 balanced classes
    assert metrics["val/probe_acc"] > metrics["val/probe_chance"] + 0.3
    assert metrics["val/knn_acc"] > metrics["val/probe_chance"] + 0.3
    assert evaluated["probe"].plan.subset_size == load_manifest(evaluated["cfg"].data.shards).splits["train"].samples


def test_interpolation_ends_are_the_reconstructions(evaluated):
    result, model, cfg = evaluated["result"], evaluated["model"], evaluated["cfg"]
    strips = result.interpolations
    assert strips.shape == (3, 5, 3, 32, 32)
    assert list(model.latent_shape) == evaluated["latent_shape"]
    # atol: other batch sizes round differently in the last bits (1e-4 is 1/40 of one grey level)
    torch.testing.assert_close(strips[:, 0], result.reconstructions[0:6:2], rtol=0, atol=1e-4)
    torch.testing.assert_close(strips[:, -1], result.reconstructions[1:6:2], rtol=0, atol=1e-4)
    images = torch.cat([images for images, _ in evaluated["val"]])[:6]
    with torch.no_grad():  # the model's own encode and decode on the same images, and the midpoint of the line
        mu, _ = model.encode(images)
        middle = model.decode((mu[0:6:2] + mu[1:6:2]) / 2)
    torch.testing.assert_close(strips[:, 2], ((middle + 1) / 2).clamp(0, 1), rtol=0, atol=1e-4)
    assert not torch.allclose(strips[:, 0], strips[:, 2], atol=1e-3)  # the strip moves


@pytest.mark.parametrize("evaluated", ["seed"], indirect=True)  # W&B and the page: the same for any latent
def test_probe_and_interpolations_reach_wandb_the_run_dir_and_the_comparison_page(evaluated, tmp_path):
    cfg, result = evaluated["cfg"], evaluated["result"]
    cfg.run.dir = str(tmp_path / "run")
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = build_accelerator(cfg, cpu=True)
    tracker = Tracker(cfg, accelerator, RunDir(cfg.run.dir), load_manifest(cfg.data.shards))
    tracker.log_evaluation(result, evaluated["model"], step=5, epoch=0)
    run_id = tracker.run.id
    tracker.finish()
    run = RunDir(cfg.run.dir)
    assert run.latest_image("interpolations").is_file() and run.image("interpolations", 0).is_file()
    (offline,) = run.offline_wandb_runs(run_id)
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    (row,) = [r["history"]["item"] for r in records if r["type"] == "history" and "val/mse" in r["history"]["item"]]
    for key in PROBE_KEYS:
        assert row[key] == pytest.approx(result.metrics[key])
    assert row["images/interpolations._type"] == "image-file"
    assert (offline / "files" / row["images/interpolations.path"]).is_file()
    page = compare([cfg.run.dir], tmp_path / "report.html").read_text()
    assert "val/probe_acc" in page and "val/knn_acc" in page and "Interpolations" in page


@pytest.mark.slow
@pytest.mark.parametrize("evaluated", ["spatial"], indirect=True)  # the in-process evaluation covers the seed's
def test_evaluate_command_reports_probe_and_knn(evaluated, tmp_path):
    save_model(evaluated["model"], evaluated["cfg"], tmp_path / "final")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "vaedist.evaluate", str(tmp_path / "final"), "--shards",
                           evaluated["cfg"].data.shards, "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    for key in PROBE_KEYS:
        assert metrics[key] == pytest.approx(evaluated["result"].metrics[key], abs=1e-6)
