"""Train the seed VAE with Accelerate: set-up, the step, the epoch, the run. Entry: `launch/train.py`.

    accelerate launch launch/train.py --config configs/coco.yaml train.epochs=2 run.dir=runs/x

Reads like the algorithm: `setup` builds everything once (Accelerator, model, two optimizers, their
schedules, loaders, tracker, and resumes from the latest checkpoint); `train_step` is one forward and
one backward; `train_epoch` loops over batches; `train` loops over epochs, evaluates and checkpoints.

Scaling: the seed's losses are SUMS over the batch. DDP averages gradients over ranks, so each rank's
loss is multiplied by the number of processes: the update is the seed's update for the global batch.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env, set_seed
from tqdm.auto import tqdm

from vaedist.checkpoint import Progress, check_mid_epoch_resume, check_resumable, latest_checkpoint, save_checkpoint
from vaedist.config import Config, load_config, save_config, to_dict
from vaedist.errors import ConfigError, UserError, is_rank_zero
from vaedist.evaluate import evaluate
from vaedist.losses import LossWeights, VAELosses, loss_weights, scale_decoder_gradients, vae_losses
from vaedist.model import CONFIG_NAME, VAE, save_model
from vaedist.optim import Schedule, apply_config_after_resume, build_optimizer, build_schedule
from vaedist.tracking import sweep_run_dir


class NonFiniteLoss(UserError):
    every_rank = True  # raised by the collective check in flush_window, on every rank alike


def resolve_precision(precision: str) -> str:
    """'auto' -> bf16 where the GPU supports it natively, else full precision (CPU autocast, and bf16 emulated
    on pre-Ampere GPUs, are slower than fp32)."""
    # The device Accelerate will train on: ACCELERATE_USE_CPU=true keeps a GPU host's run on the CPU.
    cuda = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    if precision == "fp16" and not cuda:
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA GPU (its loss scaler); use bf16 or no")
    if precision != "auto":
        return precision
    if not cuda:
        return "no"
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no such argument and reports native support only
        native = torch.cuda.is_bf16_supported()
    return "bf16" if native else "no"


@dataclass
class Trainer:
    """Everything the loop needs, built once by `setup`."""

    cfg: Config
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    vae: VAE  # the same model, unwrapped: encode/decode/sample
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]  # (encoder's, decoder's), unwrapped
    schedules: tuple[Schedule, Schedule]
    weights: LossWeights
    train_loader: object  # iterable of (images [N,3,S,S] in [-1,1] on device, labels [N] | None); len, set_epoch
    val_loader: object | None
    tracker: object
    run_dir: Path
    progress: Progress = field(default_factory=Progress)
    stop_requested: int = 0  # set on this rank by SIGTERM/SIGINT
    stop_signal: int = 0  # agreed by all ranks at the next log row: save a checkpoint and exit
    previous_handlers: dict = field(default_factory=dict)
    last_checkpoint: Path | None = None

    @property
    def decoder_params(self) -> list[torch.nn.Parameter]:
        return list(self.vae.decoder.parameters())


# --- set-up ------------------------------------------------------------------------------------------


def build_loaders(cfg: Config, accelerator: Accelerator, per_process_batch: int):
    from vaedist.data import build_loader

    train_loader = build_loader(cfg.data, cfg.data.train_split, train=True, batch_size=per_process_batch, accelerator=accelerator)
    val_loader = build_loader(cfg.data, cfg.data.val_split, train=False, batch_size=per_process_batch, accelerator=accelerator)
    return train_loader, val_loader


def setup(cfg: Config, loaders: tuple | None = None) -> Trainer:
    """Build the run. `loaders=(train, val)` replaces the shard loaders (benchmarks: synthetic data)."""
    from vaedist.tracking import Tracker

    accelerator = Accelerator(
        mixed_precision=resolve_precision(cfg.train.precision),
        dynamo_backend="inductor" if cfg.train.compile else None,
        **Tracker.accelerator_kwargs(cfg),
    )
    world = accelerator.num_processes
    if cfg.train.batch_size % world:
        raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by the {world} processes")
    if cfg.train.batch_size // world < 2:  # BatchNorm needs two images per process
        raise ConfigError(f"config key 'train.batch_size' ({cfg.train.batch_size}) must be at least 2 per process, "
                          f"i.e. at least {2 * world} for the {world} processes")
    set_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)

    model = VAE(cfg.model, image_size=cfg.data.size)
    if world > 1 and cfg.train.sync_batchnorm and accelerator.device.type == "cuda":
        # The seed normalised over its whole batch; per-rank statistics would change the model with the GPU count.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_encoder = build_optimizer(cfg.train.encoder, model.encoder.parameters())
    opt_decoder = build_optimizer(cfg.train.decoder, model.decoder.parameters())

    train_loader, val_loader = loaders if loaders is not None else build_loaders(cfg, accelerator, cfg.train.batch_size // world)
    steps_per_epoch = len(train_loader)
    schedules = (
        build_schedule(cfg.train.encoder, opt_encoder, steps_per_epoch, cfg.train.epochs),
        build_schedule(cfg.train.decoder, opt_decoder, steps_per_epoch, cfg.train.epochs),
    )
    prepared, _, _ = accelerator.prepare(model, opt_encoder, opt_decoder)
    progress = Progress()
    accelerator.register_for_checkpointing(progress, *schedules)  # order is part of the checkpoint format

    # Under a W&B sweep every run gets the same command line: give each its own run dir, or the second
    # run would resume the first one's checkpoints.
    cfg.run.dir = str(sweep_run_dir(cfg.run.dir))
    run_dir = Path(cfg.run.dir)
    resume_from = latest_checkpoint(run_dir)
    if resume_from is not None:
        if (run_dir / CONFIG_NAME).is_file():
            check_resumable(yaml.safe_load((run_dir / CONFIG_NAME).read_text()) or {}, to_dict(cfg), run_dir)
        accelerator.load_state(str(resume_from))
        check_mid_epoch_resume(progress, cfg.train.batch_size, world, resume_from)
        for optim_cfg, optimizer, schedule in zip((cfg.train.encoder, cfg.train.decoder), (opt_encoder, opt_decoder), schedules):
            apply_config_after_resume(optim_cfg, optimizer, schedule, step=progress.step, epoch=progress.epoch)
        accelerator.print(f"resuming from {resume_from} (step {progress.step}, epoch {progress.epoch}, batch {progress.batch_in_epoch})")
    progress.batch_size, progress.processes = cfg.train.batch_size, world
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_NAME)
    accelerator.wait_for_everyone()
    manifest = getattr(train_loader, "manifest", None)
    trainer = Trainer(
        cfg=cfg, accelerator=accelerator, model=prepared, vae=accelerator.unwrap_model(prepared, keep_torch_compile=False),
        optimizers=(opt_encoder, opt_decoder), schedules=schedules, weights=loss_weights(cfg.train),
        train_loader=train_loader, val_loader=val_loader,
        tracker=Tracker(cfg, accelerator, run_dir, manifest, resumed_step=progress.step),
        run_dir=run_dir, progress=progress, last_checkpoint=resume_from,
    )
    _install_signal_handlers(trainer)
    return trainer


def _install_signal_handlers(t: Trainer) -> None:
    def request_stop(signum, _frame):
        t.stop_requested = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"[rank {t.accelerator.process_index}] {signal.Signals(signum).name}: saving a checkpoint, then exiting", file=sys.stderr, flush=True)

    t.previous_handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def close(t: Trainer) -> None:
    """End what `setup` started: give the signals back, then finish the tracker (every rank).

    The signal handlers hold the Trainer, hence the DDP model and its gloo/NCCL process group; left
    installed, they keep the group alive until the interpreter's final garbage collection, where a gloo
    thread finishing its work cannot take the GIL and aborts the process ("terminate called without an
    active exception") after a successful run.
    """
    for sig, handler in t.previous_handlers.items():
        signal.signal(sig, handler)
    t.previous_handlers = {}
    t.tracker.finish()


# --- the step ----------------------------------------------------------------------------------------


def train_step(t: Trainer, x: torch.Tensor) -> VAELosses:
    """One forward, one backward, both optimizers. x: [N, 3, S, S] in [-1, 1] on the device."""
    if t.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_rec, mu, logvar = t.model(x)  # Accelerate runs the forward under autocast and returns fp32
    losses = vae_losses(x, x_rec, mu, logvar, t.weights)
    # One backward of loss_encoder (see vaedist.losses for why that gives both sub-networks' gradients)
    t.accelerator.backward(losses.loss_encoder * t.accelerator.num_processes)
    step_optimizers(t)
    return losses


def step_optimizers(t: Trainer) -> None:
    """Scale the decoder's gradient, clip each sub-network, step both optimizers with ONE scaler update.

    Accelerate's optimizer wrapper calls scaler.update() after each optimizer's step; with two optimizers the
    second would then be unscaled with a changed scale (or twice). So with fp16 we drive the scaler here.
    """
    scaler = t.accelerator.scaler
    opt_encoder, opt_decoder = t.optimizers
    if scaler is not None:
        scaler.unscale_(opt_encoder)
        scaler.unscale_(opt_decoder)
    scale_decoder_gradients(t.decoder_params, t.weights.lambda_mse)
    for sub, cfg in ((t.vae.encoder, t.cfg.train.encoder), (t.vae.decoder, t.cfg.train.decoder)):
        if cfg.grad_clip > 0:  # gradients are already all-reduced, so every rank clips alike
            torch.nn.utils.clip_grad_norm_(sub.parameters(), cfg.grad_clip)
    if scaler is not None:
        # Each skips when its own gradients overflowed; an overflow in the decoder's backward reaches the
        # encoder's gradients through z, so in practice both skip together (tests/test_train.py).
        scaler.step(opt_encoder)
        scaler.step(opt_decoder)
        scaler.update()
    else:
        opt_encoder.step()
        opt_decoder.step()
    opt_encoder.zero_grad(set_to_none=True)
    opt_decoder.zero_grad(set_to_none=True)
    for schedule in t.schedules:
        schedule.after_step()


# --- metrics over a window of steps (no GPU sync per step) -------------------------------------------


class Window:
    """Sums since the last log row, kept on the device; `flush` syncs once for all ranks."""

    NO_BAD_STEP = float(2**52)

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(5, device=self.device)  # loss_encoder, loss_decoder, kl, mse, images
        self.first_bad_step = torch.full((), self.NO_BAD_STEP, device=self.device)
        self.steps, self.data_wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, losses: VAELosses, images: int, step: int) -> None:
        values = torch.stack([losses.loss_encoder, losses.loss_decoder, losses.kl, losses.mse]).detach()
        finite = torch.isfinite(values).all()
        # clamp with a Python number: no host-to-device copy, so no stream sync per step
        self.first_bad_step = torch.where(finite, self.first_bad_step, self.first_bad_step.clamp(max=float(step)))
        self.sums[:4] += torch.nan_to_num(values)
        self.sums[4] += images
        self.steps += 1


def flush_window(t: Trainer, window: Window) -> dict[str, float]:
    """Collective. Raises NonFiniteLoss (on every rank) when any rank saw a non-finite loss.
    Also agrees on a stop request across ranks (a signal may reach only some of them)."""
    local = torch.cat([window.sums, window.first_bad_step.view(1), torch.tensor([float(t.stop_requested)], device=window.device)])
    gathered = t.accelerator.gather(local.view(1, -1)).view(-1, local.numel()).cpu()  # [world, 7]
    bad_step = gathered[:, 5].min().item()
    t.stop_signal = int(gathered[:, 6].max().item())
    if bad_step < Window.NO_BAD_STEP:
        where = f"last good checkpoint: {t.last_checkpoint}" if t.last_checkpoint else "no checkpoint was saved yet"
        raise NonFiniteLoss(f"non-finite loss at step {int(bad_step)}; stopped ({where}). Try a lower lr, grad_clip or train.precision=no")
    loss_e, loss_d, kl, mse, images = gathered[:, :5].sum(0).tolist()
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    steps, values_per_image = max(window.steps, 1), 3 * t.cfg.data.size**2
    (opt_e, opt_d), (sched_e, sched_d) = t.optimizers, t.schedules
    row = {
        "epoch": t.progress.epoch,
        "train/loss_encoder": loss_e / steps,  # the seed's losses: sums over the global batch, mean over steps
        "train/loss_decoder": loss_d / steps,
        "train/kl": kl / max(images, 1),  # per image
        "train/mse": mse / max(images, 1) / values_per_image / 2,  # per value on [0, 1] images, like val/mse
        "train/lr_encoder": sched_e.lr(opt_e),
        "train/lr_decoder": sched_d.lr(opt_d),
        "train/images_per_s": images / elapsed,
        "train/data_wait": window.data_wait / elapsed,
    }
    window.reset()
    return row


# --- the epoch and the run ---------------------------------------------------------------------------


def checkpoint(t: Trainer) -> None:
    t.last_checkpoint = save_checkpoint(t.accelerator, t.run_dir, t.progress.step, t.cfg.train.keep_checkpoints)


def epoch_bar(t: Trainer, epoch: int) -> tqdm:
    """Main process only; shows images/s and the encoder loss at every log row."""
    return tqdm(total=len(t.train_loader), initial=t.progress.batch_in_epoch, desc=f"epoch {epoch}", unit="batch",
                disable=not t.accelerator.is_main_process, dynamic_ncols=True)


def train_epoch(t: Trainer, epoch: int) -> None:
    """Train over one epoch from `t.progress.batch_in_epoch` (non-zero when resumed mid-epoch)."""
    cfg, p = t.cfg.train, t.progress
    t.train_loader.set_epoch(epoch)
    batches = iter(t.train_loader)
    for _ in range(p.batch_in_epoch):  # the data position of a mid-epoch checkpoint: same order, same flips
        next(batches)
    window = Window(t.accelerator.device)
    with epoch_bar(t, epoch) as bar:
        while not (cfg.max_steps and p.step >= cfg.max_steps):
            wait_start = time.perf_counter()
            batch = next(batches, None)
            window.data_wait += time.perf_counter() - wait_start
            if batch is None:
                break
            losses = train_step(t, batch[0])
            p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
            window.add(losses, batch[0].shape[0], p.step)
            bar.update(1)
            checkpoint_due = bool(cfg.checkpoint_every) and p.step % cfg.checkpoint_every == 0
            if p.step % cfg.log_every == 0 or checkpoint_due:  # a checkpoint follows a log row (non-finite check)
                row = flush_window(t, window)
                t.tracker.log(row, p.step)
                bar.set_postfix(img_s=f"{row['train/images_per_s']:.0f}", loss=f"{row['train/loss_encoder']:.4g}")
                if t.stop_signal:
                    break
                if checkpoint_due:
                    checkpoint(t)
    if window.steps:
        t.tracker.log(flush_window(t, window), p.step)  # also the last non-finite check before the checkpoint


@torch.no_grad()
def average_batchnorm_statistics(t: Trainer) -> None:
    """Make the ranks' BatchNorm running statistics agree (their mean) before evaluating or saving weights.

    Without SyncBatchNorm (CPU, or train.sync_batchnorm=false) each rank's running statistics follow its own
    share of the batch, so the ranks would evaluate slightly different models. With equal shares the mean
    of the ranks' running means is the global batch's; with SyncBatchNorm this changes nothing.
    """
    if t.accelerator.num_processes == 1:
        return
    for module in t.vae.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(t.accelerator.reduce(module.running_mean.clone(), "mean"))
            module.running_var.copy_(t.accelerator.reduce(module.running_var.clone(), "mean"))


def run_evaluation(t: Trainer, epoch: int) -> None:
    if t.val_loader is None:
        return
    average_batchnorm_statistics(t)
    result = evaluate(t.model, t.val_loader, t.accelerator, t.cfg)
    t.tracker.log_evaluation(result, t.vae, step=t.progress.step, epoch=epoch)
    t.accelerator.print(f"epoch {epoch} step {t.progress.step}: " + "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))


def train(cfg: Config, loaders: tuple | None = None, evaluate_at_end: bool = True) -> int:
    """The whole run; returns the exit code (0, or 128+signal when stopped by SIGTERM/SIGINT)."""
    t = setup(cfg, loaders)
    try:
        return _run(t, evaluate_at_end)
    finally:
        close(t)


def _run(t: Trainer, evaluate_at_end: bool = True) -> int:
    cfg, p = t.cfg.train, t.progress
    # A finished run started again: its last evaluation is already logged; only the weights are exported again.
    evaluated_at = p.step if _evaluated_at_step(t, p.step) else -1
    while p.epoch < cfg.epochs and not (cfg.max_steps and p.step >= cfg.max_steps):
        epoch = p.epoch
        train_epoch(t, epoch)
        if t.stop_signal:
            checkpoint(t)
            name = signal.Signals(t.stop_signal).name
            t.accelerator.print(f"stopped by {name} at step {p.step}: checkpoint {t.last_checkpoint}; run the same command to resume")
            return 128 + t.stop_signal
        if p.batch_in_epoch >= len(t.train_loader):  # a whole epoch (not cut short by max_steps)
            p.epoch, p.batch_in_epoch = epoch + 1, 0
            for schedule in t.schedules:
                schedule.after_epoch()
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            run_evaluation(t, epoch)
            evaluated_at = p.step
        checkpoint(t)
    if evaluate_at_end and evaluated_at != p.step:
        run_evaluation(t, max(p.epoch - 1, 0))
    average_batchnorm_statistics(t)
    if t.accelerator.is_main_process:
        save_model(t.vae, t.cfg, t.run_dir / "final")
    t.accelerator.wait_for_everyone()
    t.accelerator.print(f"done: {p.step} steps, {p.epoch} epochs; weights in {t.run_dir / 'final'}")
    return 0


def _evaluated_at_step(t: Trainer, step: int) -> bool:
    """Collective: did an earlier session log an evaluation at `step`? (Rank 0's tracker knows; all agree.)"""
    from accelerate.utils import broadcast_object_list

    answer = [step in t.tracker.evaluated_steps]
    if t.accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


def parse_args(argv: list[str]) -> tuple[Path | None, list[str]]:
    parser = argparse.ArgumentParser(prog="launch/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (configs/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2 data.shards=DIR run.dir=DIR")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def main(argv: list[str] | None = None) -> int:
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(config_path, overrides)
    _show_info_messages()
    return train(cfg)


def _show_info_messages() -> None:
    """vaedist's own INFO lines (where the decode-once cache went, and why) on the console, from rank 0 only."""
    import logging

    if not is_rank_zero():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vaedist")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


if __name__ == "__main__":  # pragma: no cover
    from vaedist.errors import run_cli

    run_cli(main, prog="vaedist.train")
