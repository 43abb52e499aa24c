"""python -m vaedist.encode on the embedded Food-101 sample, for every architecture (a [8] and a [4, 8, 8] latent):
latents read back with our reader, webdataset's and DALI's wds2idx, against the model's own encode; resume after a
kill; one-line errors; two processes = one."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from accelerate.state import AcceleratorState

from vaedist import latents
from vaedist.accelerator import build_accelerator
from vaedist.config import load_config
from vaedist.data import build_loader
from vaedist.encode import encode_split, load_for_encoding
from vaedist.models import ARCHITECTURES, build_model, save_model
from vaedist.shard.format import load_manifest, split_member_name

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.size=32", "data.workers=2"]


@pytest.fixture(scope="module")
def shards(sample_trees, tmp_path_factory) -> Path:
    """The Food-101 sample in small tars (several per split), so that resuming has tars to skip."""
    from vaedist.shard import shard_dataset

    out = tmp_path_factory.mktemp("encode_shards") / "food101"
    shard_dataset("food101", sample_trees["food101"], out, workers=2, seed=0, progress=False, shard_size=300_000)
    assert len(load_manifest(out).splits["val"].shards) >= 3
    return out


ARCHS = ["seed", "spatial"]  # every architecture the trainer supports (checked below)


def test_the_encoder_tests_cover_every_architecture(tiny_models):
    assert sorted(ARCHS) == sorted(ARCHITECTURES) == sorted(tiny_models)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    """model.arch; a test that is about no model's shape takes one (indirect parametrisation)."""
    return request.param


@pytest.fixture(scope="module")
def model_dir(arch, tiny_models, tmp_path_factory) -> Path:
    """A small real VAE of `arch` saved the way the trainer saves it (final/model.safetensors + config.yaml)."""
    cfg = load_config(None, SMALL + tiny_models[arch][0])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # BatchNorm statistics away from their (0, 1) defaults, as after training (seed)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return save_model(model, cfg, tmp_path_factory.mktemp(f"encode_run_{arch}") / "final")


def accelerator_for(cfg):
    AcceleratorState._reset_state(reset_partial_state=True)  # several Accelerators in one pytest process
    return build_accelerator(cfg, training=False, cpu=True)


def encode(model_dir: Path, shards: Path, out: Path, **kwargs) -> latents.Latents:
    model, cfg, sha = load_for_encoding(model_dir)
    encode_split(model, cfg, sha, shards=shards, split="val", out=out, accelerator=accelerator_for(cfg), batch_size=5, **kwargs)
    return latents.load(out)


def run_encode(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vaedist.encode", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_encoded_latents_load_back_equal_the_models_own_encode(arch, tiny_models, model_dir, shards, tmp_path):
    got = encode(model_dir, shards, tmp_path / "out")
    shape = tiny_models[arch][1]
    assert load_manifest(tmp_path / "out").options["latents"]["latent_shape"] == shape == got.info.latent_shape
    model, cfg, _ = load_for_encoding(model_dir)
    cfg.data.shards = str(shards)
    loader = build_loader(cfg.data, "val", train=False, batch_size=7)  # another batch size than the encoder's
    with torch.no_grad():
        pairs = [(model.encode(images), labels) for images, labels in loader]
    mu = torch.cat([p[0][0] for p in pairs])
    logvar = torch.cat([p[0][1] for p in pairs])
    labels = torch.cat([p[1] for p in pairs])
    assert got.mu.dtype == torch.float32 and got.mu.shape == got.logvar.shape == (len(loader.index), *shape)
    assert mu.shape == got.mu.shape  # the model's own latent shape
    torch.testing.assert_close(got.mu, mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.logvar, logvar, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.labels, labels)
    assert got.keys == loader.index.keys and got.classes == loader.manifest.classes
    assert got.info.weights_sha256 == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_latent_tars_read_by_webdataset_and_indexed_like_dali_wds2idx(model_dir, shards, tmp_path):
    got = encode(model_dir, shards, tmp_path / "out")
    manifest = load_manifest(tmp_path / "out")
    rows = []
    wds2idx = shutil.which("wds2idx", path=str(Path(sys.executable).parent)) or "wds2idx"
    for shard in manifest.splits["val"].shards:
        tar = tmp_path / "out" / shard.name
        rows += list(wds.WebDataset(str(tar), shardshuffle=False).decode())
        subprocess.run([wds2idx, str(tar), str(tmp_path / "reference.idx")], check=True, capture_output=True)
        assert (tmp_path / "reference.idx").read_bytes() == (tmp_path / "out" / shard.index).read_bytes()
    assert [r["__key__"] for r in rows] == got.keys
    assert np.array_equal(np.stack([r["mu.npy"] for r in rows]), got.mu.numpy())
    assert np.array_equal(np.stack([r["logvar.npy"] for r in rows]), got.logvar.numpy())
    assert [int(r["cls"]) for r in rows] == got.labels.tolist()


def test_fp16_latents_are_the_fp32_latents_rounded(model_dir, shards, tmp_path):
    full = encode(model_dir, shards, tmp_path / "fp32")
    half = encode(model_dir, shards, tmp_path / "fp16", dtype="fp16")
    assert half.mu.dtype == torch.float16 and half.info.dtype == "float16"
    assert torch.equal(half.mu, full.mu.half()) and torch.equal(half.logvar, full.logvar.half())


def test_killed_encoder_resumes_without_duplicates(model_dir, shards, tmp_path):
    reference = encode(model_dir, shards, tmp_path / "whole")
    out = tmp_path / "out"

    def killed(stem: str) -> None:
        (out / f".{Path(stem).name}-next.tar.tmp").write_bytes(b"half a tar")  # what a kill mid-tar leaves
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode(model_dir, shards, out, after_shard=killed)
    assert not (out / "manifest.json").exists()  # not complete, and not claimed to be
    first = sorted(out.glob("val-*.tar"))
    assert len(first) == 1
    written_at = first[0].stat().st_mtime_ns
    again = encode(model_dir, shards, out)
    assert first[0].stat().st_mtime_ns == written_at  # kept, not encoded twice
    assert not list(out.glob(".*"))  # no temporaries, no state file
    keys = []
    for tar in sorted(out.glob("val-*.tar")):
        with tarfile.open(tar) as archive:
            keys += [split_member_name(m.name)[0] for m in archive.getmembers() if m.name.endswith(".mu.npy")]
    assert len(keys) == len(set(keys)) == len(reference.keys)
    assert again.keys == reference.keys
    torch.testing.assert_close(again.mu, reference.mu, rtol=1e-5, atol=1e-6)  # other batches round differently in the last bits


@pytest.mark.parametrize("arch", ["seed"], indirect=True)  # about the weights' hash, not the latent's shape
def test_latents_of_another_model_in_the_same_out_are_a_one_line_error(model_dir, shards, tmp_path):
    out = tmp_path / "out"
    encode(model_dir, shards, out)
    before = (out / "manifest.json").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    model, cfg, _ = load_for_encoding(other)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model(model, cfg, other)
    proc = run_encode(str(other), "--shards", str(shards), "--split", "val", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in lines[0] and "another weights" in lines[0] and "--overwrite" in lines[0]
    assert (out / "manifest.json").read_bytes() == before
    replaced = run_encode(str(other), "--shards", str(shards), "--split", "val", "--out", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert latents.load(out).info.weights_sha256 == hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()


WIDER_LATENT = {"seed": ("latent_dim: 8", "latent_dim: 9"), "spatial": ("latent_channels: 4", "latent_channels: 2")}


def test_weights_that_do_not_fit_their_config_are_a_one_line_error(arch, model_dir, shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    config = broken / "config.yaml"
    old, new = WIDER_LATENT[arch]
    assert old in config.read_text()
    config.write_text(config.read_text().replace(old, new))
    proc = run_encode(str(broken), "--shards", str(shards), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert str(broken / "model.safetensors") in line and "config.yaml" in line
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_encode_what_one_process_encodes(model_dir, shards, tmp_path):
    one = encode(model_dir, shards, tmp_path / "one")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vaedist.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vaedist.encode",
           str(model_dir), "--shards", str(shards), "--split", "val", "--out", str(tmp_path / "two"), "--batch-size", "3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    two = latents.load(tmp_path / "two")
    assert two.keys == one.keys and torch.equal(two.labels, one.labels)
    torch.testing.assert_close(two.mu, one.mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two.logvar, one.logvar, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_encoding_on_the_gpu_matches_the_cpu(model_dir, shards, tmp_path):
    """DALI's GPU decoding + the model on CUDA (fp32): the latents the CPU run writes, to GPU rounding."""
    cpu = encode(model_dir, shards, tmp_path / "cpu")
    model, cfg, sha = load_for_encoding(model_dir)
    cfg.train.precision = "no"
    AcceleratorState._reset_state(reset_partial_state=True)
    encode_split(model, cfg, sha, shards=shards, split="val", out=tmp_path / "gpu",
                 accelerator=build_accelerator(cfg, training=False), batch_size=5)
    gpu = latents.load(tmp_path / "gpu")
    assert gpu.keys == cpu.keys
    # nvJPEG and libjpeg-turbo may differ by a grey level on some pixels: compare the latents loosely
    torch.testing.assert_close(gpu.mu, cpu.mu, rtol=0, atol=0.05)
