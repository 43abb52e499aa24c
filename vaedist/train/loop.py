"""The training loop: epochs of data -> step -> log -> checkpoint, an evaluation every train.eval_every epochs,
the final weights at the end. Set-up, resume, the step and the collective bookkeeping are behind the calls.
"""
from __future__ import annotations

import itertools
import signal
from typing import Iterator

import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from vaedist.checkpoint import save_checkpoint
from vaedist.config import Config
from vaedist.evaluate import evaluate
from vaedist.model import save_model
from vaedist.train.setup import Trainer, close, setup
from vaedist.train.step import train_step
from vaedist.train.window import LogWindow


def train(cfg: Config, loaders: tuple | None = None, evaluate_at_end: bool = True) -> int:
    """The whole run; returns the exit code (0, or 128+signal when stopped by SIGTERM/SIGINT)."""
    t = setup(cfg, loaders)
    try:
        return run(t, evaluate_at_end)
    finally:
        close(t)


def run(t: Trainer, evaluate_at_end: bool = True) -> int:
    """Epochs until train.epochs (or train.max_steps), then the final weights; returns the exit code."""
    cfg, p = t.cfg.train, t.progress
    evaluated_at = p.step if evaluated_before(t) else None  # a finished run started again: export the weights only
    while p.epoch < cfg.epochs and not steps_done(t):
        epoch = p.epoch
        train_epoch(t, epoch)
        if t.stop.agreed:
            return stop(t)
        if p.batch_in_epoch >= len(t.train_loader):  # a whole epoch (not cut short by max_steps)
            end_epoch(t)
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            evaluate_and_log(t, epoch, last=p.epoch >= cfg.epochs or steps_done(t))
            evaluated_at = p.step
        checkpoint(t)
    if evaluate_at_end and evaluated_at != p.step:
        evaluate_and_log(t, max(p.epoch - 1, 0), last=True)
    export_weights(t)
    return 0


def train_epoch(t: Trainer, epoch: int) -> None:
    """One epoch from the position in `t.progress` (inside the epoch after a mid-epoch resume)."""
    cfg, p = t.cfg.train, t.progress
    window = LogWindow(t.accelerator.device)
    with progress_bar(t, epoch) as bar:
        for images, _ in window.timed(epoch_batches(t, epoch)):
            losses = train_step(t, images)
            p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
            window.add(losses, images.shape[0], p.step)
            bar.update(1)
            checkpoint_due = bool(cfg.checkpoint_every) and p.step % cfg.checkpoint_every == 0
            if p.step % cfg.log_every == 0 or checkpoint_due:  # a checkpoint follows a log row (its non-finite check)
                log(t, window, bar)
                if t.stop.agreed:
                    return
                if checkpoint_due:
                    checkpoint(t)
    if window.steps:
        log(t, window)  # also the last non-finite check before the epoch's checkpoint


# --- behind the calls ----------------------------------------------------------------------------------


def epoch_batches(t: Trainer, epoch: int) -> Iterator:
    """The epoch's batches from the saved position (the loader decodes none before it), up to train.max_steps."""
    t.train_loader.set_epoch(epoch, start_batch=t.progress.batch_in_epoch)
    max_steps = t.cfg.train.max_steps
    return itertools.islice(t.train_loader, max(max_steps - t.progress.step, 0) if max_steps else None)


def steps_done(t: Trainer) -> bool:
    return bool(t.cfg.train.max_steps) and t.progress.step >= t.cfg.train.max_steps


def progress_bar(t: Trainer, epoch: int) -> tqdm:
    """Main process only; shows images/s and the encoder loss at every log row."""
    return tqdm(total=len(t.train_loader), initial=t.progress.batch_in_epoch, desc=f"epoch {epoch}", unit="batch",
                disable=not t.accelerator.is_main_process, dynamic_ncols=True)


def log(t: Trainer, window: LogWindow, bar: tqdm | None = None) -> None:
    """Collective (non-finite check, stop vote): the window's training row to metrics.jsonl and W&B."""
    totals = window.flush(t.accelerator, t.stop, t.last_checkpoint)
    (opt_e, opt_d), (sched_e, sched_d) = t.optimizers, t.schedules
    row = totals.row(t.progress.epoch, sched_e.lr(opt_e), sched_d.lr(opt_d), values_per_image=3 * t.cfg.data.size**2)
    t.tracker.log(row, t.progress.step)
    if bar is not None:
        bar.set_postfix(img_s=f"{row['train/images_per_s']:.0f}", loss=f"{row['train/loss_encoder']:.4g}")


def checkpoint(t: Trainer) -> None:
    t.last_checkpoint = save_checkpoint(t.accelerator, t.run_dir, t.progress.step, t.cfg.train.keep_checkpoints)


def end_epoch(t: Trainer) -> None:
    t.progress.epoch, t.progress.batch_in_epoch = t.progress.epoch + 1, 0
    for schedule in t.schedules:
        schedule.after_epoch()


def stop(t: Trainer) -> int:
    """Every rank agreed to stop (SIGTERM/SIGINT): checkpoint, say how to resume, exit with 128 + signal."""
    checkpoint(t)
    name = signal.Signals(t.stop.agreed).name
    t.accelerator.print(f"stopped by {name} at step {t.progress.step}: checkpoint {t.last_checkpoint}; "
                        "run the same command to resume")
    return 128 + t.stop.agreed


def evaluate_and_log(t: Trainer, epoch: int, last: bool = False) -> None:
    """Evaluate the whole validation split and log it; `last`: the run's final evaluation (its latent table
    is always logged)."""
    if t.val_loader is None:
        return
    average_batchnorm_statistics(t)
    result = evaluate(t.model, t.val_loader, t.accelerator, t.cfg)
    t.tracker.log_evaluation(result, t.vae, step=t.progress.step, epoch=epoch, last=last)
    t.accelerator.print(f"epoch {epoch} step {t.progress.step}: " + "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))


def export_weights(t: Trainer) -> None:
    average_batchnorm_statistics(t)
    if t.accelerator.is_main_process:
        save_model(t.vae, t.cfg, t.run_dir.final)
    t.accelerator.wait_for_everyone()
    t.accelerator.print(f"done: {t.progress.step} steps, {t.progress.epoch} epochs; weights in {t.run_dir.final}")


def evaluated_before(t: Trainer) -> bool:
    """Collective: did an earlier session log an evaluation at this step? (Rank 0's tracker knows; all agree.)"""
    answer = [t.progress.step in t.tracker.evaluated_steps]
    if t.accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


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
