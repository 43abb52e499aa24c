"""The training loop: epochs of data -> step -> log -> checkpoint, an evaluation every train.eval_every epochs,
the final weights at the end. Set-up, resume, the step and the collective bookkeeping are behind the calls.

A collective that times out (train.collective_timeout: a rank frozen or gone) ends the run with one line
naming the late rank (vaedist.collective); bad samples are exchanged at log rows and after evaluations
(vaedist.train.bad_samples).
"""
from __future__ import annotations

import itertools
import shutil
import signal
import sys
from typing import Iterator

import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from vaedist.checkpoint import save_checkpoint
from vaedist.collective import is_collective_timeout, raise_together
from vaedist.config import Config
from vaedist.errors import UserError
from vaedist.evaluate import evaluate
from vaedist.files import write_failure
from vaedist.losses import kl_warmup_factor
from vaedist.models import LOGVAR_MAX, save_model
from vaedist.train.trainer import Trainer, close, setup
from vaedist.train.step import train_step
from vaedist.train.window import LogWindow, WindowTotals


def train(cfg: Config, loaders: tuple | None = None, evaluate_at_end: bool = True) -> int:
    """The whole run; returns the exit code (0, or 128+signal when stopped by SIGTERM/SIGINT)."""
    t = setup(cfg, loaders)
    broken = False
    try:
        return run(t, evaluate_at_end)
    except RuntimeError as err:
        if t.accelerator.num_processes == 1 or not is_collective_timeout(err):
            raise
        broken = True
        raise t.roll.timeout(t.progress.step + 1, cfg.train.collective_timeout) from None
    finally:
        close(t, process_group_broken=broken)


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
    window = LogWindow(t.accelerator.device, t.cfg.train.blowup_kl)
    with progress_bar(t, epoch) as bar:
        for images, _ in window.timed(epoch_batches(t, epoch)):
            t.roll.at(p.step + 1)  # the heartbeat tells which step this rank is in
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
    totals = window.flush(t.accelerator, t.stop, t.last_checkpoint, bad_found=t.bad_samples.pending())
    if totals.bad_found:  # some rank found a sample that fails to decode: every rank learns of it
        t.bad_samples.share(t.accelerator, t.tracker)
    (opt_e, opt_d), (sched_e, sched_d) = t.optimizers, t.schedules
    row = totals.row(t.progress.epoch, sched_e.lr(opt_e), sched_d.lr(opt_d), values_per_image=3 * t.cfg.data.size**2)
    if (bad := t.bad_samples.count(t.cfg.data.train_split)) is not None:
        row["train/bad_samples"] = bad
    row["train/kl_warmup"] = kl_warmup_factor(t.cfg.train, t.progress.step - 1, len(t.train_loader))  # the last step's
    t.tracker.log(row, t.progress.step)
    if totals.blowups:
        warn_blowups(t, totals)
    if bar is not None:
        bar.set_postfix(img_s=f"{row['train/images_per_s']:.0f}", loss=f"{row['train/loss_encoder']:.4g}")


def warn_blowups(t: Trainer, totals: WindowTotals) -> None:
    t.blowups += totals.blowups
    t.accelerator.print(
        f"warning: {totals.blowups} of the {totals.steps} steps up to step {t.progress.step} blew up (KL per latent "
        f"value above train.blowup_kl={t.cfg.train.blowup_kl:g}, or a log-variance at its clamp {LOGVAR_MAX:g}); "
        f"largest KL of one image {totals.kl_max:.3g}. Counted in train/blowups; lower the learning rate or use a "
        "KL/lr warm-up", file=sys.stderr)


def checkpoint(t: Trainer) -> None:
    t.last_checkpoint = save_checkpoint(t.accelerator, t.run_dir, t.progress.step, t.cfg.train.keep_checkpoints)


def end_epoch(t: Trainer) -> None:
    t.progress.epoch, t.progress.batch_in_epoch = t.progress.epoch + 1, 0
    for schedule in t.schedules:
        schedule.after_epoch()


def stop(t: Trainer) -> int:
    """Every rank agreed to stop (SIGTERM/SIGINT): checkpoint, say how to resume, exit with 128 + signal."""
    checkpoint(t)
    t.bad_samples.share(t.accelerator, t.tracker)
    name = signal.Signals(t.stop.agreed).name
    t.accelerator.print(f"stopped by {name} at step {t.progress.step}: checkpoint {t.last_checkpoint}; "
                        "run the same command to resume")
    print_bad_samples(t)
    return 128 + t.stop.agreed


def evaluate_and_log(t: Trainer, epoch: int, last: bool = False) -> None:
    """Evaluate the whole validation split and log it; `last`: the run's final evaluation (its latent table
    is always logged)."""
    if t.val_loader is None:
        return
    average_batchnorm_statistics(t)
    result = evaluate(t.model, t.val_loader, t.accelerator, t.cfg, t.probe_loader)
    t.bad_samples.share(t.accelerator, t.tracker)  # those the evaluation found (dropped from its metrics)
    if (bad := t.bad_samples.count(t.cfg.data.val_split)) is not None:
        result.metrics["val/bad_samples"] = float(bad)
    t.tracker.log_evaluation(result, t.vae, step=t.progress.step, epoch=epoch, last=last)
    t.accelerator.print(f"epoch {epoch} step {t.progress.step}: " + "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))


def export_weights(t: Trainer) -> None:
    """Collective: final/ written whole or not at all (a temporary folder renamed), then the run's summary."""
    t.bad_samples.share(t.accelerator, t.tracker)
    average_batchnorm_statistics(t)
    error = None
    if t.accelerator.is_main_process:
        folder = t.run_dir.final_being_written
        shutil.rmtree(folder, ignore_errors=True)
        try:
            save_model(t.vae, t.cfg, folder)
            t.run_dir.publish_final()
        except Exception as err:  # a full disk surfaces as SafetensorError or OSError: write_failure tells
            reason = write_failure(err, folder)
            shutil.rmtree(folder, ignore_errors=True)
            if reason is None:
                raise
            error = UserError(f"saving the final weights into '{t.run_dir.final}' failed: {reason}; make room "
                              f"and run the same command again to export them (checkpoint {t.last_checkpoint} is intact)")
    raise_together(t.accelerator, error)
    blowups = f", {t.blowups} blow-up steps (train/blowups)" if t.blowups else ""
    t.accelerator.print(f"done: {t.progress.step} steps, {t.progress.epoch} epochs{blowups}; weights in {t.run_dir.final}")
    print_bad_samples(t)


def print_bad_samples(t: Trainer) -> None:
    if summary := t.bad_samples.summary():
        t.accelerator.print(summary)


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
