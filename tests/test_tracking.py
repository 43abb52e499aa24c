"""The Tracker: a real offline W&B run read back with `wandb leet inspect --json`, the PNGs and metrics.jsonl
in the run dir, online/offline detection, resume, the sweep definitions, and rank-0-only side effects.

The run dirs come from conftest's `tracking_sample`: a small real VAE encoding the embedded Food-101
photographs, its EvalResult computed directly, so these tests do not depend on the trainer's evaluation loop.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.transform import downscale_local_mean

from vaedist import sweepenv, visualize
from vaedist.config import load_config
from vaedist.errors import UserError
from vaedist.models import SeedVAE as VAE
from vaedist.rundir import IMAGE_KINDS, RunDir
from vaedist.tracking import Tracker, has_wandb_credentials, resolve_wandb_mode, run_identity

REPO = Path(__file__).resolve().parents[1]
def history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


# --- a real offline W&B run, read back ---------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_run(inspect_records, tracking_sample, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)  # logging.mode=offline must be enough on its own
        mp.setenv("WANDB_SILENT", "true")
        tracker, model, results = tracking_sample.run(run_dir, ["train.kl_weight=one"])
        run_id = tracker.run.id
        tracker.finish()
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    return {"dir": run_dir, "offline": offline, "records": inspect_records(offline), "model": model,
            "results": results, "tracker": tracker, "run_id": run_id}


def test_offline_run_read_back_has_metrics_images_table_and_histogram(tracking_sample, offline_run):
    rows = history(offline_run["records"])
    assert rows, "no history records in the .wandb log"
    logged = {k.split(".")[0] for row in rows for k in row}
    for key in ("train/loss_encoder", "train/loss_decoder", "train/kl", "train/lr_encoder", "train/images_per_s",
                "train/data_wait", "val/mse", "val/psnr", "val/kl", "val/active_units", "epoch"):
        assert key in logged, key
    evals = [row for row in rows if "val/mse" in row]
    assert len(evals) == 2  # one per evaluation, on the step of the last training row
    assert [row["_step"] for row in evals] == [30, 60]
    for row in evals:
        for kind in IMAGE_KINDS:
            assert row[f"images/{kind}._type"] == "image-file", kind
            assert (offline_run["offline"] / "files" / row[f"images/{kind}.path"]).is_file()
        assert row["latents/means._type"] == "table-file"
        assert row["latents/means.nrows"] == 10  # bounded by logging.table_rows
        assert row["latents/means.ncols"] == 3 + tracking_sample.LATENT  # thumbnail, class, class_name, one per dimension
        assert row["latents/kl_per_dim._type"] == "histogram"
        assert sum(row["latents/kl_per_dim.values"]) == tracking_sample.LATENT
    # val/active_units is the count of dimensions whose KL exceeds 0.01 nats
    result = offline_run["results"][-1]
    assert evals[-1]["val/active_units"] == int((result.kl_per_dim > 0.01).sum())
    assert evals[-1]["val/mse"] == pytest.approx(result.metrics["val/mse"])


def test_latent_table_rows_hold_thumbnail_class_and_latent_means(tracking_sample, offline_run):
    """The table is logged as a run_table artifact; its JSON (staged inside the run dir) holds the rows."""
    records = offline_run["records"]
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact" and "latentsmeans" in r["artifact"]["name"]][-1:]
    files = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    assert all(offline_run["dir"] / "wandb" in p.parents for p in files.values())  # staged with the run
    table = json.loads(files["latents/means.table.json"].read_text())
    assert table["columns"][:3] == ["thumbnail", "class", "class_name"]
    assert table["columns"][3:] == [f"mu_{d:03d}" for d in range(tracking_sample.LATENT)]
    assert table["nrows"] == 10
    first = table["data"][0]
    assert first[0]["_type"] == "image-file" and first[0]["path"] in files  # the thumbnail travels with it
    thumb = np.asarray(Image.open(files[first[0]["path"]]))
    result = offline_run["results"][-1]
    np.testing.assert_array_equal(thumb, result.thumbnails[0].permute(1, 2, 0).numpy())
    assert first[1] == int(result.labels[0])
    assert first[2] == offline_run["tracker"].class_names[first[1]]  # the class name from the manifest
    assert first[3:] == pytest.approx(result.mu[0].tolist(), abs=1e-6)


def test_offline_run_records_name_group_tags_and_nested_config(tracking_sample, offline_run):
    records = offline_run["records"]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["display_name"] == "food101-vae-kl-one-lmse1e-06"
    assert run["run_group"] == "food101-vae"
    assert {"food101", "vae", "kl_weight=one", "lambda_mse=1e-06"} <= set(run["tags"])
    assert run["run_id"] == offline_run["run_id"] == RunDir(offline_run["dir"]).wandb_run_id.read_text().strip()
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    assert config["train"]["kl_weight"] == "one"  # nested, as W&B's run table filters on train.kl_weight
    assert config["model"]["latent_dim"] == tracking_sample.LATENT
    assert config["dataset"]["name"] == "food101" and config["dataset"]["classes"] == 6
    # W&B's files live inside the run dir
    assert offline_run["offline"].parent == offline_run["dir"] / "wandb"


def test_quality_metrics_keep_their_best_value_as_the_wandb_summary(offline_run):
    """W&B's run table shows a run's summary: the best val/mse (min) and val/psnr (max), the last val/kl."""
    records = offline_run["records"]
    declared = {r["metric"]["name"]: r["metric"]["summary"] for r in records if r["type"] == "metric" and r["metric"].get("name")}
    assert declared == {"val/mse": {"min": True}, "val/psnr": {"max": True}, "val/ssim": {"max": True}, "val/pcc": {"max": True},
                        "val/probe_acc": {"max": True}, "val/knn_acc": {"max": True}}
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    results = offline_run["results"]
    assert summary["val/mse"] == {"min": pytest.approx(min(r.metrics["val/mse"] for r in results))}
    assert summary["val/psnr"] == {"max": pytest.approx(max(r.metrics["val/psnr"] for r in results))}
    assert summary["val/kl"] == pytest.approx(results[-1].metrics["val/kl"])  # no better direction: the last value


@pytest.mark.parametrize("launcher", ["vaedist.sweep", "wandb-agent"])
def test_sweep_points_share_the_sweeps_group_and_tags_in_the_offline_run(inspect_records, launcher, tracking_sample, tmp_path, monkeypatch):
    """What `wandb sync` uploads later: every point of one sweep in one group, with the sweep's tags."""
    if launcher == "vaedist.sweep":
        env = sweepenv.point_environment("k3j9x2ab", "kl-sweep", "k3j9x2ab-004", tmp_path / "sweep" / "point-004")
        group, tags, run_dir = "kl-sweep-k3j9x2ab", {"sweep", "sweep-k3j9x2ab", "kl-sweep"}, tmp_path / "sweep" / "point-004"
    else:
        env = {"WANDB_SWEEP_ID": "k3j9x2ab", "WANDB_RUN_ID": "qwerty12"}
        group, tags, run_dir = "sweep-k3j9x2ab", {"sweep", "sweep-k3j9x2ab"}, tmp_path / "runs" / "qwerty12"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the command line's run.dir is shared; each point gets its own
    assert RunDir.for_training(tmp_path / "runs").path.resolve() == run_dir.resolve()
    tracker, _, _ = tracking_sample.run(run_dir, ["train.kl_weight=one"], epochs=1)
    tracker.finish()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = inspect_records(offline)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_group"] == group and tags <= set(run["tags"]) and {"food101", "kl_weight=one"} <= set(run["tags"])
    assert run["run_id"] == (env.get("VAEDIST_SWEEP_RUN_ID") or env["WANDB_RUN_ID"])
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    sweep = config["sweep"].get("value", config["sweep"])  # filterable in W&B's run table
    assert sweep["id"] == "k3j9x2ab" and sweep["launcher"] == launcher


def test_finish_prints_the_wandb_sync_command(tracking_sample, tmp_path, capfd):
    run_dir = tmp_path / "run"
    tracker, _, _ = tracking_sample.run(run_dir, [], epochs=1)
    tracker.finish()
    out = capfd.readouterr().out
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb sync {offline.resolve()}" in out


def test_evaluation_pngs_per_epoch_and_latest(offline_run):
    images = offline_run["dir"] / "images"
    for kind in IMAGE_KINDS:
        for name in (f"{kind}_e000.png", f"{kind}_e001.png", f"{kind}_latest.png"):
            assert (images / name).is_file(), name
        assert (images / f"{kind}_latest.png").read_bytes() == (images / f"{kind}_e001.png").read_bytes()
    assert not list(images.glob("*.tmp"))


def test_prior_samples_decode_the_same_noise_every_evaluation(tracking_sample, offline_run):
    images = offline_run["dir"] / "images"
    # The model did not change between the two evaluations, so the same noise must give the same picture.
    assert (images / "prior_samples_e000.png").read_bytes() == (images / "prior_samples_e001.png").read_bytes()
    # ... and that noise is N(0, I) drawn from a generator seeded with train.seed: decode it ourselves.
    tracker, model = offline_run["tracker"], offline_run["model"]
    expected = torch.randn(9, tracking_sample.LATENT, generator=torch.Generator().manual_seed(tracker.cfg.train.seed))
    model.eval()
    with torch.no_grad():
        first = ((model.decode(expected[:1]) + 1) / 2)[0]
    grid = np.asarray(Image.open(images / "prior_samples_e000.png"))
    tile = grid[2 : 2 + tracking_sample.IMAGE_SIZE, 2 : 2 + tracking_sample.IMAGE_SIZE]  # make_grid's 2-pixel padding
    np.testing.assert_allclose(tile, visualize.to_uint8_hwc(first), atol=1)
    assert grid.shape[0] == grid.shape[1] == 3 * tracking_sample.IMAGE_SIZE + 4 * 2  # 9 samples: 3 x 3


def test_reconstruction_grid_puts_each_image_above_its_reconstruction(tracking_sample, offline_run):
    result = offline_run["results"][-1]
    grid = np.asarray(Image.open(offline_run["dir"] / "images" / "reconstructions_e001.png"))
    k = result.originals.shape[0]
    step = tracking_sample.IMAGE_SIZE + 2
    assert grid.shape[:2] == (2 * step + 2, k * step + 2)  # one row of originals, one of reconstructions
    for i in (0, k - 1):
        top = grid[2 : 2 + tracking_sample.IMAGE_SIZE, 2 + i * step : 2 + i * step + tracking_sample.IMAGE_SIZE]
        bottom = grid[2 + step : 2 + step + tracking_sample.IMAGE_SIZE, 2 + i * step : 2 + i * step + tracking_sample.IMAGE_SIZE]
        np.testing.assert_allclose(top, visualize.to_uint8_hwc(result.originals[i]), atol=1)
        np.testing.assert_allclose(bottom, visualize.to_uint8_hwc(result.reconstructions[i]), atol=1)


def test_metrics_jsonl_has_one_row_per_log_call(offline_run):
    rows = RunDir(offline_run["dir"]).read_metrics()
    assert [r["step"] for r in rows] == [10, 20, 30, 30, 40, 50, 60, 60]
    evals = [r for r in rows if "val/active_units" in r]
    assert [r["epoch"] for r in evals] == [0, 1]
    assert all("train/loss_encoder" in r for r in rows if "val/mse" not in r)


# --- W&B off, auto mode, resume ---------------------------------------------------------------------


def test_wandb_off_still_writes_metrics_and_pngs(tracking_sample, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, ["logging.wandb=false"])
    assert tracking_sample.accelerator(cfg).log_with == []
    tracker, _, _ = tracking_sample.run(run_dir, ["logging.wandb=false"], epochs=1)
    assert tracker.run is None
    tracker.finish()
    assert not (run_dir / "wandb").exists() and not RunDir(run_dir).wandb_run_id.exists()
    assert len(RunDir(run_dir).read_metrics()) == 4
    assert {p.name for p in (run_dir / "images").glob("*_latest.png")} == {f"{k}_latest.png" for k in IMAGE_KINDS}


def test_auto_mode_is_online_only_with_credentials(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    cfg = load_config(None, ["logging.mode=auto"])
    assert not has_wandb_credentials() and resolve_wandb_mode(cfg) == "offline"
    netrc.write_text("machine example.org\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode(cfg) == "offline"  # an entry for another host is not a W&B login
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    assert has_wandb_credentials() and resolve_wandb_mode(cfg) == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert resolve_wandb_mode(cfg) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the usual W&B switch wins over auto-detection
    assert resolve_wandb_mode(cfg) == "offline"
    assert resolve_wandb_mode(load_config(None, ["logging.mode=online"])) == "online"  # explicit setting wins
    monkeypatch.delenv("WANDB_API_KEY")
    assert resolve_wandb_mode(load_config(None, ["logging.mode=offline"])) == "offline"


def test_resumed_tracker_continues_the_same_wandb_run_and_drops_rows_after_the_checkpoint(inspect_records, tracking_sample, tmp_path):
    run_dir = tmp_path / "run"
    first, model, _ = tracking_sample.run(run_dir, [], epochs=1)
    first_id = first.run.id
    first.finish()
    # Killed after step 30 was logged; the last checkpoint was at step 20.
    cfg = first.cfg
    accelerator = tracking_sample.accelerator(cfg)
    second = Tracker(cfg, accelerator, RunDir(run_dir), tracking_sample.manifest(first.class_names), resumed_step=20)
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [10, 20]
    second.log({"train/loss_encoder": 1.0, "epoch": 0}, 30)
    assert second.run.id == first_id
    second.finish()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    run_ids = [[r["run"]["run_id"] for r in inspect_records(d) if r["type"] == "run"][0] for d in offline]
    assert run_ids == [first_id, first_id]
    assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [10, 20, 30]
    # No checkpoint to resume from (a fresh start in the same dir): a new W&B run and a new metrics file.
    third = Tracker(cfg, tracking_sample.accelerator(cfg), RunDir(run_dir), None, resumed_step=0)
    assert third.run.id != first_id and RunDir(run_dir).wandb_run_id.read_text().strip() == third.run.id
    assert RunDir(run_dir).read_metrics() == []
    third.finish()


def test_run_identity_separates_the_ablations(tracking_sample):
    vae_batch = run_identity(load_config(None, ["train.kl_weight=batch"]), tracking_sample.manifest(["a"]))
    vae_one = run_identity(load_config(None, ["train.kl_weight=one", "train.lambda_mse=0.01"]), tracking_sample.manifest(["a"]))
    beta = run_identity(load_config(None, ["train.mode=beta-vae", "train.beta=4"]), None)
    assert vae_batch[0] != vae_one[0] and vae_batch[1] == vae_one[1] == "food101-vae"
    assert "kl_weight=one" in vae_one[2] and "lambda_mse=0.01" in vae_one[2]
    assert beta == ("coco-beta-vae-beta4-lmse1e-06", "coco-beta-vae", ["coco", "beta-vae", "beta=4", "lambda_mse=1e-06"])
    named = run_identity(load_config(None, ["run.name=mine", "logging.group=g", "logging.tags=[x]"]), None)
    assert named[0] == "mine" and named[1] == "g" and "x" in named[2]


# --- sweeps -------------------------------------------------------------------------------------------


def test_shipped_sweeps_spend_their_points_on_axes_that_matter():
    """lambda_mse changes nothing with RMSprop (README, measured): it is an axis only next to plain SGD."""
    from vaedist.sweep.spec import load_spec

    axes = {}
    for path in sorted((REPO / "configs").glob("sweep*.yaml")):
        spec = load_spec(path)
        assert spec.metric == "val/mse" and spec.goal == "minimize" and spec.command[-1] == "${args_no_hyphens}"
        axes[path.name] = set(spec.swept)
        if "train.lambda_mse" in spec.swept:
            assert set(spec.parameters["train.decoder.name"].grid_values()) == {"rmsprop", "sgd"}, path
    assert axes["sweep.yaml"] == {"train.kl_weight", "model.latent_dim"}
    assert axes["sweep_beta.yaml"] == {"train.beta"} and 1.0 in load_spec(REPO / "configs" / "sweep_beta.yaml").parameters["train.beta"].grid_values()
    assert {"train.encoder.lr", "train.decoder.lr", "train.batch_size"} <= axes["sweep_random.yaml"]
    assert [name for name, swept in axes.items() if "train.lambda_mse" in swept] == ["sweep_lambda_mse.yaml"]


def test_sweep_agent_runs_get_their_own_run_dir_and_the_agents_run_id(tmp_path, monkeypatch):
    from vaedist.tracking import _read_or_create_run_id

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert RunDir.for_training(tmp_path / "runs").path == tmp_path / "runs"
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    monkeypatch.setenv("WANDB_RUN_ID", "abc123xy")
    run_dir = RunDir.for_training(tmp_path / "runs")
    assert run_dir.path == tmp_path / "runs" / "abc123xy"
    run_dir.path.mkdir(parents=True)
    assert _read_or_create_run_id(run_dir) == "abc123xy"
    assert (tmp_path / "runs" / "abc123xy" / "wandb_run_id").read_text().strip() == "abc123xy"


# --- several processes --------------------------------------------------------------------------------

RANKS_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from vaedist.accelerator import build_accelerator
    from vaedist.config import load_config
    from vaedist.evaluate import EvalResult
    from vaedist.rundir import RunDir
    from vaedist.tracking import Tracker

    run_dir = Path(sys.argv[1])
    cfg = load_config(None, ["model.latent_dim=4", "logging.num_samples=4", "logging.mode=offline"])
    accelerator = build_accelerator(cfg)
    assert accelerator.num_processes == 2, accelerator.num_processes
    tracker = Tracker(cfg, accelerator, RunDir(run_dir), None)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3 * 8 * 8)
        def decode(self, z):
            return torch.tanh(self.fc(z)).view(-1, 3, 8, 8)

    for step in (1, 2, 3):
        tracker.log({"train/loss_encoder": float(step), "train/rank": float(accelerator.process_index)}, step)
    images = torch.rand(4, 3, 8, 8)
    result = EvalResult({"val/mse": 0.5}, torch.rand(4), torch.randn(6, 4), None,
                        torch.zeros(6, 3, 8, 8, dtype=torch.uint8), images, images)
    tracker.log_evaluation(result, Decoder(), step=3, epoch=0)
    tracker.finish()
    """
)


@pytest.mark.slow
def test_only_the_main_process_writes_metrics_images_and_wandb(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vaedist.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(run_dir)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = RunDir(run_dir).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 3]  # not doubled by the second process
    assert {r["train/rank"] for r in rows if "train/rank" in r} == {0.0}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert proc.stdout.count("wandb sync ") == 1
    assert {p.name for p in (run_dir / "images").glob("*_e000.png")} == {
        "reconstructions_e000.png", "prior_samples_e000.png", "latent_pca_e000.png", "kl_per_dim_e000.png"}


@pytest.mark.slow
def test_auto_mode_with_credentials_but_no_server_falls_back_to_offline(inspect_records, tracking_sample, tmp_path, monkeypatch, capfd):
    """A ~/.netrc on a shared home of an air-gapped cluster: online is tried, fails, and the run goes offline."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "c" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    import wandb

    wandb.teardown()  # wandb reads its environment once per process set-up: make it see the timeout
    cfg = load_config(None, tracking_sample.SMALL[:-1] + ["logging.mode=auto"])
    assert resolve_wandb_mode(cfg) == "online"
    try:
        tracker = Tracker(cfg, tracking_sample.accelerator(cfg), RunDir(tmp_path / "run"), None)
        assert tracker.wandb_mode == "offline"
        tracker.log({"train/loss_encoder": 1.0}, 1)
        tracker.finish()
    finally:
        wandb.teardown()  # later wandb users in this process set up again from the restored environment
    out = capfd.readouterr().out
    assert "logging offline instead" in out and "wandb sync" in out
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert [r for r in history(inspect_records(offline)) if r.get("train/loss_encoder") == 1.0]


def test_non_finite_latent_means_are_left_out_of_the_projection(tracking_sample, tmp_path):
    cfg = load_config(None, tracking_sample.SMALL + ["logging.wandb=false"])
    model = VAE(cfg.model, image_size=tracking_sample.IMAGE_SIZE)
    x, labels, classes = tracking_sample.photos(per_class=2)
    result = tracking_sample.evaluation(model, x, labels, cfg)
    result.mu[0, 0] = float("nan")
    result.mu[1, 3] = float("inf")
    tracker = Tracker(cfg, tracking_sample.accelerator(cfg), RunDir(tmp_path / "run"), tracking_sample.manifest(classes))
    tracker.log_evaluation(result, model, step=1, epoch=0)
    tracker.finish()
    assert (tmp_path / "run" / "images" / "latent_pca_latest.png").is_file()


def test_an_infinite_kl_is_logged_without_ending_the_wandb_run(inspect_records, tracking_sample, tmp_path, monkeypatch):
    """Early in training a log-variance can explode: val/kl=inf must not take the run down with W&B on."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(None, tracking_sample.SMALL + [f"run.dir={tmp_path / 'run'}", "logging.mode=offline"])
    model = VAE(cfg.model, image_size=tracking_sample.IMAGE_SIZE)
    x, labels, classes = tracking_sample.photos(per_class=2)
    result = tracking_sample.evaluation(model, x, labels, cfg)
    result.kl_per_dim[0] = float("inf")
    result.metrics["val/kl"] = float("inf")
    result.mu[1, 3] = float("inf")
    tracker = Tracker(cfg, tracking_sample.accelerator(cfg), RunDir(tmp_path / "run"), tracking_sample.manifest(classes))
    tracker.log_evaluation(result, model, step=1, epoch=0)
    tracker.finish()
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = {key.split(".")[0] for row in history(inspect_records(offline)) for key in row}  # "x._type" -> "x"
    assert {"val/kl", "images/kl_per_dim", "latents/kl_per_dim"} <= logged, logged
    assert (tmp_path / "run" / "images" / "kl_per_dim_latest.png").is_file()


def test_online_mode_without_credentials_is_a_one_line_error(tracking_sample, tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no login anywhere
    import wandb

    wandb.teardown()
    cfg = load_config(None, tracking_sample.SMALL[:-1] + ["logging.mode=online"])
    try:
        with pytest.raises(UserError, match=r"W&B could not start its run in online mode .*logging.mode=online.*wandb login"):
            Tracker(cfg, tracking_sample.accelerator(cfg), RunDir(tmp_path / "run"), None)
    finally:
        wandb.teardown()


# --- long runs stay bounded: the latent table every logging.table_every evaluations and at the last, small
# thumbnails, the run dir's PNGs of the last logging.keep_images evaluations -------------------------------


@pytest.fixture(scope="module")
def bounded_run(inspect_records, tracking_sample, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bounded") / "run"
    tracker, _, results = tracking_sample.run(
        run_dir, ["logging.table_every=2", "logging.keep_images=2", "logging.thumbnail_size=16"], epochs=5)
    tracker.finish()
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    return {"dir": run_dir, "records": inspect_records(offline), "results": results}


def test_latent_table_every_k_evaluations_and_at_the_last(bounded_run):
    evals = [row for row in history(bounded_run["records"]) if "val/mse" in row]
    assert [row["epoch"] for row in evals] == [0, 1, 2, 3, 4]
    with_table = [row["epoch"] for row in evals if "latents/means._type" in row]
    assert with_table == [1, 3, 4]  # evaluations 2 and 4 (every 2nd) and 5 (the last)
    assert all(f"images/{kind}._type" in row for row in evals for kind in ("reconstructions", "prior_samples"))


def test_table_thumbnails_are_box_filtered_to_thumbnail_size(bounded_run):
    records = bounded_run["records"]
    artifact = [r["artifact"] for r in records if r["type"] == "artifact" and "latentsmeans" in r["artifact"]["name"]][-1]
    files = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    table = json.loads(files["latents/means.table.json"].read_text())
    result = bounded_run["results"][-1]
    for row, original in zip(table["data"], result.thumbnails):
        thumb = np.asarray(Image.open(files[row[0]["path"]])).astype(float)
        assert thumb.shape == (16, 16, 3)
        expected = downscale_local_mean(original.permute(1, 2, 0).numpy().astype(float), (2, 2, 1))
        assert np.abs(thumb - expected).max() <= 1.0  # 8-bit rounding of the same 2x2 means


def test_run_dir_keeps_the_last_n_evaluations_pngs_and_the_latest(bounded_run):
    images = bounded_run["dir"] / "images"
    for kind in IMAGE_KINDS:
        kept = sorted(p.name for p in images.glob(f"{kind}_e*.png"))
        assert kept == [f"{kind}_e003.png", f"{kind}_e004.png"], kind
        assert (images / f"{kind}_latest.png").read_bytes() == (images / f"{kind}_e004.png").read_bytes()
