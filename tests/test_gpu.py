"""GPU paths only a CUDA machine can run (skipped elsewhere; `bash launch/gpu_check.sh` runs them first):
DALI `mixed` decoding of full-size photographs against both CPU backends, the decode-once cache in GPU memory,
bf16 and fp16 steps with the two optimizers and the one scaler update, torch.compile, and SyncBatchNorm over
two processes against BatchNorm over the whole batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from vaedist.config import DataConfig, ModelConfig, load_config
from vaedist.data import build_loader
from vaedist.sample import build_full_size_jpegs
from vaedist.shard import shard_dataset

pytestmark = pytest.mark.gpu
LEVEL = 2 / 255  # one uint8 level in [-1, 1] units
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each trainer here has its own precision; Accelerate keeps one per process unless reset."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    """96 COCO-sized 640x480 photographs in one class folder, sharded (split train)."""
    root = tmp_path_factory.mktemp("photos")
    build_full_size_jpegs(root / "photos" / "photo", 96)
    shard_dataset("folder", root / "photos", root / "shards", workers=2, progress=False)
    return root / "shards"


def images(shards: Path, backend: str, device: torch.device, **kw) -> torch.Tensor:
    loader = build_loader(DataConfig(shards=str(shards), backend=backend, workers=4, **kw), "train", train=False,
                          batch_size=32, device=device)
    return torch.cat([x for x, _ in loader])


def test_mixed_decoding_of_full_size_photos_matches_the_cpu_backends(photo_shards):
    mixed = images(photo_shards, "dali", CUDA)
    assert mixed.is_cuda and mixed.shape == (96, 3, 64, 64)
    for backend in ("dali", "reference"):  # DALI on CPU threads, and Pillow
        other = images(photo_shards, backend, torch.device("cpu"))
        diff = (mixed.cpu() - other).abs()
        # the hardware JPEG engine / nvJPEG round a little differently from libjpeg-turbo, and DALI's GPU
        # resize is not torch's or Pillow's filter: the same bounds as the Food-101 parity test
        assert diff.mean() < 1.0 * LEVEL, backend
        assert diff.mean(dim=(1, 2, 3)).max() < 2.0 * LEVEL, backend


def test_the_gpu_cache_serves_exactly_the_images_it_decoded(photo_shards):
    loader = build_loader(DataConfig(shards=str(photo_shards), backend="dali", cache="device", workers=4), "train",
                          train=False, batch_size=32, device=CUDA)
    assert loader.cache is not None and loader.cache.plan.location == "device" and loader.cache.images.is_cuda
    decoded = torch.cat([x for x, _ in loader])  # epoch 0: DALI mixed, stored as it goes
    assert loader.cache.complete
    loader.set_epoch(1)
    served = torch.cat([x for x, _ in loader])  # epoch 1: from GPU memory (evaluation order: the same)
    assert served.is_cuda and torch.equal(served, decoded)


def trainer(tmp_path: Path, *overrides: str, batch: int = 64):
    from vaedist.bench.train import SyntheticLoader
    from vaedist.train import setup

    cfg = load_config(None, [f"run.dir={tmp_path}", f"train.batch_size={batch}", "logging.wandb=false", *overrides])
    return setup(cfg, loaders=(SyntheticLoader(batch, cfg.data.size, 4, CUDA, seed=0), None))


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def first_loss(tmp_path: Path, *overrides: str) -> tuple[float, bool, bool]:
    """The first step's encoder loss (at the initial weights) and whether each sub-network moved."""
    from accelerate.state import AcceleratorState, GradientState

    from vaedist.train import close, train_step

    t = trainer(tmp_path, *overrides)
    encoder, decoder = snapshot(t.vae.encoder), snapshot(t.vae.decoder)
    loss = float(train_step(t, next(iter(t.train_loader))[0]).loss_encoder)
    result = loss, moved(encoder, t.vae.encoder), moved(decoder, t.vae.decoder)
    close(t)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return result


def test_a_bf16_step_computes_the_fp32_loss_and_moves_both_sub_networks(tmp_path):
    fp32, *_ = first_loss(tmp_path / "fp32", "train.precision=no")
    bf16, encoder_moved, decoder_moved = first_loss(tmp_path / "bf16", "train.precision=bf16", "train.channels_last=true")
    assert abs(bf16 - fp32) < 0.02 * abs(fp32)  # same weights, batch and noise; losses summed in fp32
    assert encoder_moved and decoder_moved


def test_fp16_skips_both_optimizers_on_overflow_and_halves_the_scale_once_per_step(tmp_path):
    """From the default scale (65536) the seed's summed losses may overflow fp16 for a while: each such step
    must skip (an optimizer whose gradients overflowed leaves its weights as they were) and halve the scale
    exactly once (one scaler update for two optimizers), until the scale fits and both sub-networks learn."""
    from vaedist.train import close, train_step

    t = trainer(tmp_path, "train.precision=fp16")
    scaler = t.accelerator.scaler
    x = next(iter(t.train_loader))[0]
    skipped = taken = 0
    for _ in range(40):
        encoder, decoder = snapshot(t.vae.encoder), snapshot(t.vae.decoder)
        scale = scaler.get_scale()
        losses = train_step(t, x)
        assert torch.isfinite(losses.loss_encoder)
        if scaler.get_scale() < scale:
            assert scaler.get_scale() == scale / 2, "backed off more than once in one step"
            assert not (moved(encoder, t.vae.encoder) and moved(decoder, t.vae.decoder)), "an overflow skipped nothing"
            skipped += 1
        else:
            assert moved(encoder, t.vae.encoder) and moved(decoder, t.vae.decoder)
            taken += 1
            if taken == 3:
                break
    close(t)
    assert taken == 3, f"fp16 never found a scale that fits in 40 steps ({skipped} skipped)"


def test_a_compiled_model_computes_the_eager_losses_on_cuda(tmp_path, monkeypatch):
    import torch._dynamo
    import torch._inductor.config

    from vaedist.train import close, train_step

    # eager random numbers inside the compiled graph too, so that both draw the same reparameterisation noise
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager, *_ = first_loss(tmp_path / "eager", "train.precision=no")
    torch._dynamo.reset()
    t = trainer(tmp_path / "compiled", "train.precision=no", "train.compile=true")
    assert isinstance(t.model, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(t.vae, torch._dynamo.eval_frame.OptimizedModule)  # what is saved and evaluated
    x = next(iter(t.train_loader))[0]
    losses = [float(train_step(t, x).loss_encoder) for _ in range(3)]
    close(t)
    assert abs(losses[0] - eager) < 0.01 * abs(eager)
    assert losses[-1] < losses[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic part of the VAE (no sampling): encode, decode the means, a summed loss, backward."""
    mu, _ = model.encode(x)
    out = model.decode(mu)
    (out.square().sum() + mu.square().sum()).backward()
    return out.detach(), mu.detach()


def _build_vae(sync: bool) -> torch.nn.Module:
    from vaedist.models import SeedVAE as VAE

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)  # the same initial weights in every process
    model = VAE(ModelConfig(), image_size=64)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # what setup() does with several GPUs
    return model.to(CUDA).train()


def _sync_batchnorm_rank(rank: int, world: int, port: int, x: torch.Tensor, out_dir: str, sync: bool) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)  # two ranks on one GPU: NCCL refuses that
    model = _build_vae(sync)
    out, mu = _forward_backward(model, x.chunk(world)[rank].to(CUDA))
    grads = [p.grad.clone() for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)  # the sum of both halves' gradients: the whole batch's
    stats = [b.clone() for name, b in model.named_buffers() if name.endswith("running_mean")]
    torch.save({"out": out.cpu(), "mu": mu.cpu(), "grads": [g.cpu() for g in grads],
                "running_means": [s.cpu() for s in stats]}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_two_ranks(x: torch.Tensor, out_dir: Path, sync: bool) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_sync_batchnorm_rank, args=(2, _free_port(), x, str(out_dir), sync), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(2)]


@pytest.mark.timeout(300)
def test_syncbatchnorm_over_two_processes_equals_batchnorm_over_the_whole_batch(tmp_path):
    x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    reference = _build_vae(sync=False)
    out, mu = _forward_backward(reference, x.to(CUDA))
    ref_grads = [p.grad for p in reference.parameters()]
    ref_stats = [b for name, b in reference.named_buffers() if name.endswith("running_mean")]

    (tmp_path / "sync").mkdir()
    ranks = run_two_ranks(x, tmp_path / "sync", sync=True)
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.cpu(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.cat([r["mu"] for r in ranks]), mu.cpu(), rtol=1e-3, atol=1e-4)
    for synced, expected in zip(ranks[0]["grads"], ref_grads):
        assert (synced - expected.cpu()).norm() <= 1e-3 * expected.norm().cpu() + 1e-6
    for synced, expected in zip(ranks[0]["running_means"], ref_stats):
        torch.testing.assert_close(synced, expected.cpu(), rtol=1e-4, atol=1e-5)

    # the same two processes with per-rank BatchNorm: visibly different, so the comparison above can fail
    (tmp_path / "plain").mkdir()
    plain = run_two_ranks(x, tmp_path / "plain", sync=False)
    assert (torch.cat([r["out"] for r in plain]) - out.cpu()).abs().max() > 1e-2
