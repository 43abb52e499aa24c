"""The trainer in one process: resume after SIGTERM and kill -9, non-finite loss, schedules, fp16 scaler."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaedist.config import OptimConfig, load_config
from vaedist.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
# 60 training images, batch 16, drop-last: 3 steps per epoch, 15 steps in all
SMALL_RUN = ["--config", "configs/demo.yaml", "train.epochs=5", "train.batch_size=16", "train.log_every=1",
             "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.eval_every=0", "logging.wandb=false"]
# in-process runs on RandomBatches: a 16x16 model that trains in milliseconds
TINY_MODEL = ["data.size=16", "model.latent_dim=4", "model.encoder_channels=[4, 8]", "model.hidden_dim=8",
              "model.decoder_channels=[8, 4]", "train.batch_size=4", "logging.wandb=false"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Tests that call train() in this process each build their own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def start_training(shards: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    # CPU on any host: the weights of the interrupted run are compared with the straight run's at rtol 1e-5,
    # and GPU decoding (hardware JPEG engine or CUDA decoder by load) and cuDNN are not bit-deterministic.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "ACCELERATE_USE_CPU": "true"}
    return subprocess.Popen([sys.executable, "launch/train.py", *SMALL_RUN, f"data.shards={shards}", f"run.dir={run_dir}", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint_after(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = RunDir(run_dir).latest_checkpoint()
        if latest is not None and int(latest.name.split("-")[1]) > step:
            return int(latest.name.split("-")[1])
        assert proc.poll() is None, "training ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_run_stopped_by_sigterm_then_killed_resumes_to_the_same_steps_and_weights(food_shards, tmp_path):
    # The straight run is the reference; it runs beside the interrupted one (each process has one thread, CI two cores)
    straight = start_training(food_shards, tmp_path / "straight")
    run = tmp_path / "interrupted"
    proc = start_training(food_shards, run)
    wait_for_checkpoint_after(proc, run, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    log = proc.stdout.read()
    assert "stopped by SIGTERM at step" in log
    stopped_at = int(log.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert RunDir(run).latest_checkpoint().name == f"step-{stopped_at:08d}"  # saved on the way out, mid-epoch or not

    proc = start_training(food_shards, run)
    wait_for_checkpoint_after(proc, run, stopped_at)
    proc.kill()  # kill -9: no chance to save anything
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run / "final").exists()

    assert straight.wait(timeout=300) == 0, straight.stdout.read()[-3000:]
    assert [p.name for p in RunDir(tmp_path / "straight").list_checkpoints()] == ["step-00000012", "step-00000014", "step-00000015"]  # last 3

    proc = start_training(food_shards, run)
    assert proc.wait(timeout=300) == 0
    log = proc.stdout.read()
    assert "resuming from" in log and "done: 15 steps" in log
    assert RunDir(run).latest_checkpoint().name == RunDir(tmp_path / "straight").latest_checkpoint().name == "step-00000015"
    # Same data order, flips, noise and optimizer states: the interrupted run ends with the same weights
    resumed, reference = load_file(run / "final" / "model.safetensors"), load_file(tmp_path / "straight" / "final" / "model.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["coco", "food101", "seed_coco", "seed_food101"])
@pytest.mark.slow
def test_every_shipped_config_trains_and_evaluates_as_written(name, food_shards, tmp_path):
    """Only the sizes shrink (the sample's 60 images); precision, channels_last, cache, schedules stay as shipped."""
    from vaedist.train import train

    cfg = load_config(REPO / "configs" / f"{name}.yaml", [f"data.shards={food_shards}", f"run.dir={tmp_path}",
                                                          "train.batch_size=16", "train.epochs=1", "logging.wandb=false"])
    assert train(cfg) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if "val/ssim" in row][-1]
    assert final["val/images"] == 24 and 0 < final["val/pcc"] <= 1 and final["val/mse"] > 0
    assert (tmp_path / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_starting_a_finished_run_again_exports_the_weights_without_a_second_evaluation(food_shards, tmp_path):
    from vaedist.train import train

    cfg = [f"data.shards={food_shards}", f"run.dir={tmp_path}", "train.batch_size=16", "train.epochs=1", "logging.wandb=false"]
    assert train(load_config(REPO / "configs" / "demo.yaml", cfg)) == 0
    (tmp_path / "final" / "model.safetensors").unlink()
    assert train(load_config(REPO / "configs" / "demo.yaml", cfg)) == 0
    assert (tmp_path / "final" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([row for row in rows if "val/mse" in row]) == 1


class RandomBatches:
    """Random 16x16 batches of 4; batch number `nan_at` (if any) holds a NaN pixel."""

    def __init__(self, count: int, nan_at: int | None = None):
        self.count, self.nan_at, self.start = count, nan_at, 0

    def __len__(self):
        return self.count

    def set_epoch(self, epoch, start_batch=0):
        self.start = start_batch

    def __iter__(self):
        for i in range(self.start, self.count):
            x = torch.rand(4, 3, 16, 16) * 2 - 1
            if i == self.nan_at:
                x[0, 0, 0, 0] = float("nan")
            yield x, None


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    from vaedist.train import NonFiniteLoss, train

    cfg = load_config(None, [f"run.dir={tmp_path}", *TINY_MODEL, "train.log_every=1", "train.checkpoint_every=2"])
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, loaders=(RandomBatches(6, nan_at=4), None))
    message = str(err.value)
    assert "non-finite loss at step 5" in message and str(tmp_path / "checkpoints" / "step-00000004") in message
    assert "\n" not in message
    assert RunDir(tmp_path).latest_checkpoint().name == "step-00000004"  # nothing saved after the bad step


def test_resume_keeps_the_position_and_takes_learning_rates_and_epochs_from_the_new_config(tmp_path):
    """A run resumed with more epochs or a lower lr follows the new config, not the checkpoint's values."""
    from accelerate.state import AcceleratorState, GradientState

    from vaedist.optim import WarmupCosine
    from vaedist.train import close, setup, train

    first = [f"run.dir={tmp_path}", *TINY_MODEL, "train.epochs=2", "train.encoder.name=adamw",
             "train.encoder.scheduler=cosine", "train.decoder.gamma=0.5"]
    assert train(load_config(None, first), loaders=(RandomBatches(6), None), evaluate_at_end=False) == 0
    # 12 steps done: the cosine over 2 epochs ended at 0, the decoder's lr halved twice
    resumed = load_config(None, [*first, "train.epochs=4", "train.encoder.lr=5e-4", "train.encoder.betas=[0.5, 0.9]",
                                 "train.encoder.weight_decay=0.125", "train.decoder.lr=2e-3"])
    t = setup(resumed, loaders=(RandomBatches(6), None))
    try:
        assert t.progress.step == 12 and t.progress.epoch == 2
        encoder_group, decoder_group = t.optimizers[0].param_groups[0], t.optimizers[1].param_groups[0]
        assert encoder_group["lr"] == pytest.approx(5e-4 * WarmupCosine(0, 24, 0.0)(12)) == pytest.approx(2.5e-4)
        assert encoder_group["betas"] == (0.5, 0.9) and encoder_group["weight_decay"] == 0.125
        assert decoder_group["lr"] == pytest.approx(2e-3 * 0.5**2)
        assert len(t.optimizers[0].state) > 0  # Adam's running averages still come from the checkpoint
        t.schedules[0].after_step()  # the cosine continues over the new 24 steps
        assert encoder_group["lr"] == pytest.approx(5e-4 * WarmupCosine(0, 24, 0.0)(13))
        t.schedules[1].after_epoch()
        assert decoder_group["lr"] == pytest.approx(2e-3 * 0.5**3)
    finally:
        close(t)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    # Another scheduler altogether: the decoder goes from per-epoch exponential to a per-step cosine
    t = setup(load_config(None, [*first, "train.epochs=4", "train.decoder.scheduler=cosine"]), loaders=(RandomBatches(6), None))
    try:
        assert t.optimizers[1].param_groups[0]["lr"] == pytest.approx(1e-3 * WarmupCosine(0, 24, 0.0)(12))
    finally:
        close(t)


@pytest.mark.slow
def test_compiled_run_saves_plain_weights_and_resumes(tmp_path):
    """train.compile=true: final/ holds the VAE's own keys (not torch.compile's `_orig_mod.` wrapper) and a
    checkpoint loads back into a new compiled run."""
    from vaedist.models import load_model
    from vaedist.train import train

    base = [f"run.dir={tmp_path}", *TINY_MODEL, "train.compile=true"]
    assert train(load_config(None, [*base, "train.epochs=1"]), loaders=(RandomBatches(2), None), evaluate_at_end=False) == 0
    assert type(load_model(tmp_path / "final")).__name__ == "SeedVAE"  # strict load_state_dict
    assert train(load_config(None, [*base, "train.epochs=2"]), loaders=(RandomBatches(2), None), evaluate_at_end=False) == 0
    assert RunDir(tmp_path).latest_checkpoint().name == "step-00000004"


def test_resume_inside_an_epoch_with_another_batch_size_is_refused(tmp_path):
    """The data position is a count of batches: another batch size would skip or repeat samples."""
    from vaedist.errors import ConfigError
    from vaedist.train import train

    base = [f"run.dir={tmp_path}", *TINY_MODEL, "train.epochs=2", "train.checkpoint_every=2"]
    assert train(load_config(None, [*base, "train.max_steps=2"]), loaders=(RandomBatches(6), None), evaluate_at_end=False) == 0
    with pytest.raises(ConfigError, match=r"inside epoch 0 \(after batch 2\) with train.batch_size=4 on 1 process"):
        train(load_config(None, [*base, "train.batch_size=8"]), loaders=(RandomBatches(6), None))


def test_resume_with_a_different_model_is_refused_naming_the_key(tmp_path):
    from vaedist.errors import ConfigError
    from vaedist.train import train

    base = [f"run.dir={tmp_path}", *TINY_MODEL, "train.epochs=1"]
    assert train(load_config(None, base), loaders=(RandomBatches(2), None), evaluate_at_end=False) == 0
    with pytest.raises(ConfigError) as err:
        train(load_config(None, [*base, "model.latent_dim=6"]), loaders=(RandomBatches(2), None))
    assert "model.latent_dim=4" in str(err.value) and "model.latent_dim=6" in str(err.value) and str(tmp_path) in str(err.value)


def test_schedules_follow_the_seed_per_epoch_and_cosine_with_warmup_per_step():
    from vaedist.optim import build_optimizer, build_schedule

    params = [torch.nn.Parameter(torch.zeros(1))]
    seed = OptimConfig()
    opt = build_optimizer(seed, params)
    schedule = build_schedule(seed, opt, steps_per_epoch=10, epochs=3)
    for _ in range(10):
        opt.step()
        schedule.after_step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # unchanged within an epoch
    schedule.after_epoch()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.75e-3)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9 and opt.defaults["eps"] == 1e-8

    cosine = OptimConfig(name="adamw", scheduler="cosine", warmup_epochs=1.0, min_lr=1e-5)
    opt = build_optimizer(cosine, [torch.nn.Parameter(torch.zeros(1))])
    schedule = build_schedule(cosine, opt, steps_per_epoch=4, epochs=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_step()
    assert lrs[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])  # linear warm-up over one epoch
    assert lrs[4] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # cosine ends at min_lr


def test_one_grad_scaler_skips_both_optimizers_together_and_backs_off_once(tmp_path):
    """Accelerate's optimizer wrapper updates the scaler after EACH optimizer's step (so the second would be
    unscaled with a changed scale); the trainer unscales both, steps both, updates once. fp16 autocast needs
    CUDA, so on CPU the same path runs with a CPU GradScaler in place of Accelerate's (fp32 forward)."""
    from vaedist.bench.train import SyntheticLoader
    from vaedist.train import close, setup, train_step

    cfg = load_config(None, [f"run.dir={tmp_path}", "train.batch_size=8", "logging.wandb=false", "data.size=16",
                             "model.encoder_channels=[4, 8]", "model.decoder_channels=[8, 4]", "model.hidden_dim=16", "model.latent_dim=4"])
    t = setup(cfg, loaders=(SyntheticLoader(8, 16, 4, torch.device("cpu")), None))
    t.accelerator.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # loss * scale overflows fp32
    before = [p.detach().clone() for p in t.vae.parameters()]
    x = next(iter(t.train_loader))[0]
    train_step(t, x)
    assert all(torch.equal(a, b) for a, b in zip(before, t.vae.parameters())), "an overflowing step must move nothing"
    assert scaler.get_scale() == 2.0**126  # backed off once, not once per optimizer
    scaler.update(2.0**8)
    for _ in range(2):
        train_step(t, x)
    assert not torch.equal(before[0], next(t.vae.encoder.parameters()))
    assert not torch.equal(before[-1], list(t.vae.decoder.parameters())[-1])
    assert scaler.get_scale() == 2.0**8
    close(t)


@pytest.mark.slow
def test_train_benchmark_prints_the_three_variants_side_by_side(food_shards, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "vaedist.bench", "train", "--shards", str(food_shards), "--config", "configs/demo.yaml",
                           "--rounds", "1", "--json", str(out), "train.batch_size=16"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("images/s")[-1]
    for variant in ("synthetic", "pipeline", "pipeline+cache"):
        assert f"\n{variant} " in table
    figures = json.loads(out.read_text())["best"]
    assert set(figures) == {"synthetic", "pipeline", "pipeline+cache"} and all(v > 0 for v in figures.values())


@pytest.mark.gpu
def test_fp16_one_scaler_skips_both_optimizers_together_and_backs_off_once(tmp_path):
    """Accelerate's optimizer wrapper updates the scaler after EACH optimizer; ours updates it once per step."""
    from vaedist.bench.train import SyntheticLoader
    from vaedist.train import close, setup, train_step

    cfg = load_config(None, [f"run.dir={tmp_path}", "train.precision=fp16", "train.batch_size=32", "logging.wandb=false"])
    t = setup(cfg, loaders=(SyntheticLoader(32, 64, 4, torch.device("cuda")), None))
    scaler = t.accelerator.scaler
    assert scaler is not None
    scaler.scale(torch.ones((), device="cuda"))  # the scaler makes its scale tensor lazily, at the first scale()
    scaler.update(2.0**60)  # overflow guaranteed (fp16 tops out at 65504): both optimizers must skip the step
    before = [p.detach().clone() for p in t.vae.parameters()]
    x = next(iter(t.train_loader))[0]
    train_step(t, x)
    assert all(torch.equal(a, b) for a, b in zip(before, t.vae.parameters()))
    assert scaler.get_scale() == 2.0**59  # backed off once, not once per optimizer
    scaler.update(2.0**16)  # a scale that fits: the next steps learn
    for _ in range(3):
        train_step(t, x)
    assert not torch.equal(before[0], next(t.vae.encoder.parameters()))
    assert not torch.equal(before[-1], list(t.vae.decoder.parameters())[-1])
    close(t)


@pytest.mark.gpu
def test_gpu_run_with_dali_bf16_and_channels_last_learns(food_shards, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.yaml", f"data.shards={food_shards}",
                           f"run.dir={tmp_path}", "train.epochs=4", "train.batch_size=16", "train.precision=bf16",
                           "train.channels_last=true", "train.log_every=3", "logging.wandb=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mse = [r["train/mse"] for r in RunDir(tmp_path).read_metrics() if "train/mse" in r]
    assert all(v == v for v in mse) and mse[-1] < mse[0]
    assert load_config(tmp_path / "config.yaml").train.precision == "bf16"


TINY_SPATIAL = ["model.arch=spatial", "model.spatial.channels=[8, 8, 8, 8]", "model.spatial.norm_groups=4",
                "model.spatial.latent_channels=2"]  # a [2, 8, 8] latent at 64 px


@pytest.mark.parametrize("arch", ["seed", "spatial"])
def test_each_architecture_trains_evaluates_logs_and_reloads_through_load_model(arch, food_shards, tmp_path):
    """One code path for both: two optimizers, evaluation, W&B (offline) pictures and latent table, final
    weights; the standalone evaluation (load_model) reproduces the trainer's last evaluation."""
    from vaedist.models import SeedVAE, SpatialVAE, load_model
    from vaedist.train import train

    model = TINY_SPATIAL if arch == "spatial" else ["model.latent_dim=8", "model.encoder_channels=[4, 8]",
                                                    "model.hidden_dim=8", "model.decoder_channels=[8, 4]"]
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.shards={food_shards}", f"run.dir={tmp_path}", *model,
                                                       "train.epochs=1", "train.batch_size=16", "train.log_every=1",
                                                       "logging.mode=offline", "logging.table_rows=8"])
    assert train(cfg) == 0
    rows = RunDir(tmp_path).read_metrics()
    train_rows, val_rows = [r for r in rows if "train/kl" in r], [r for r in rows if "val/psnr" in r]
    assert len(train_rows) == 3 and all(r["train/blowups"] == 0 and r["train/kl_max"] > 0 for r in train_rows)
    assert len(val_rows) == 1 and val_rows[0]["val/images"] == 24 and val_rows[0]["val/active_units"] >= 0
    for kind in ("reconstructions", "prior_samples", "latent_pca", "kl_per_dim"):
        assert (tmp_path / "images" / f"{kind}_latest.png").is_file(), kind
    assert list((tmp_path / "wandb").glob("offline-run-*"))

    loaded = load_model(tmp_path)
    assert isinstance(loaded, SpatialVAE if arch == "spatial" else SeedVAE)
    assert loaded.latent_dim == (128 if arch == "spatial" else 8)
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "vaedist.evaluate", str(tmp_path), "--shards", str(food_shards), "--out", str(out)],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    standalone = json.loads(out.read_text())
    for key in ("val/psnr", "val/ssim", "val/pcc", "val/kl"):
        assert standalone[key] == pytest.approx(val_rows[0][key], rel=1e-4), key


def test_a_blow_up_is_counted_in_the_metrics_and_reported_not_silent(tmp_path, capsys):
    """A planted log-variance of 1e4: the clamp keeps the step finite (without it: a non-finite loss), and every
    step is counted in train/blowups, with the share of clamped values, and reported on the console."""
    from vaedist.train import close, setup
    from vaedist.train.loop import train_epoch

    t = setup(load_config(None, [f"run.dir={tmp_path}", *TINY_MODEL, "train.log_every=2"]), loaders=(RandomBatches(4), None))
    try:
        with torch.no_grad():
            t.vae.encoder.logvar.bias.fill_(1e4)
        train_epoch(t, 0)
    finally:
        close(t)
    rows = [r for r in RunDir(tmp_path).read_metrics() if "train/blowups" in r]
    assert [r["train/blowups"] for r in rows] == [2, 2] and t.blowups == 4
    assert all(r["train/logvar_clamped"] == 1.0 and 1e7 < r["train/kl_max"] < float("inf") for r in rows)
    assert "2 of the 2 steps up to step 2 blew up" in capsys.readouterr().err


def test_the_kl_warm_up_is_logged_and_reaches_the_full_weight(tmp_path):
    from vaedist.train import train

    cfg = load_config(None, [f"run.dir={tmp_path}", *TINY_MODEL, "train.log_every=1", "train.epochs=2", "train.kl_warmup_epochs=1"])
    assert train(cfg, loaders=(RandomBatches(4), None), evaluate_at_end=False) == 0
    factors = [r["train/kl_warmup"] for r in RunDir(tmp_path).read_metrics() if "train/kl_warmup" in r]
    assert factors == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]


class FixedBatches:
    """Random 16x16 batches of 4, the same for a given (epoch, batch): a resumed run sees the data of a straight one."""

    manifest = None

    def __init__(self, count: int):
        self.count, self.epoch, self.start = count, 0, 0

    def __len__(self):
        return self.count

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start = epoch, start_batch

    def __iter__(self):
        for i in range(self.start, self.count):
            yield torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1000 * self.epoch + i)) * 2 - 1, None


def test_spatial_run_resumed_from_its_checkpoint_ends_with_the_weights_of_a_straight_run(tmp_path):
    from vaedist.train import train

    spatial = ["model.arch=spatial", "model.spatial.channels=[8, 8]", "model.spatial.downsample=2", "model.spatial.norm_groups=4",
               "model.spatial.latent_channels=2", "train.mode=per-image", "train.kl_warmup_epochs=1", "train.encoder.name=adam",
               "train.decoder.name=adam", "train.encoder.scheduler=cosine", "train.decoder.scheduler=cosine"]
    for run, sessions in (("straight", [[]]), ("resumed", [["train.max_steps=4"], []])):  # stopped inside epoch 1
        for extra in sessions:
            cfg = load_config(None, [f"run.dir={tmp_path / run}", *TINY_MODEL, *spatial, "train.epochs=3", *extra])
            assert train(cfg, loaders=(FixedBatches(3), None), evaluate_at_end=False) == 0
    assert RunDir(tmp_path / "resumed").latest_checkpoint().name == RunDir(tmp_path / "straight").latest_checkpoint().name == "step-00000009"
    straight, resumed = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and any("layers" in k for k in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
