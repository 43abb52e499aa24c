"""Set-up: everything a training run needs, built once, and restored from the run's latest checkpoint.

    t = setup(cfg)        # Accelerator, the run dir's lock, model, two optimizers and their schedules,
    ...                   # loaders, tracker, the bad samples recorded so far
    close(t)              # every rank: the signals given back, the tracker (and the process group) finished,
                          # the lock released

The run directory is locked (vaedist.runlock) right after the Accelerator is built, before any loader is
built or anything is written: a second training on the same run.dir, or a run.dir that cannot hold a run, is
one line while the shards have not been opened yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from vaedist.accelerator import build_accelerator
from vaedist.batch import GlobalBatch
from vaedist.checkpoint import Progress
from vaedist.collective import RollCall, raise_together
from vaedist.config import Config, save_config
from vaedist.data import Loader, build_loader
from vaedist.evaluate.probe import build_probe_loader
from vaedist.losses import LossWeights, loss_weights
from vaedist.models import VAEBase, build_model
from vaedist.optim import Schedule, build_optimizer, build_schedule
from vaedist.errors import UserError
from vaedist.rundir import RunDir
from vaedist.runlock import RunLock
from vaedist.threads import plan_threads
from vaedist.tracking import Tracker
from vaedist.train.bad_samples import BadSampleLog
from vaedist.train.resume import resume
from vaedist.train.signals import StopRequest


class TrainLoader(Protocol):
    """What the loop draws batches from: a `vaedist.data.Loader`, or a stand-in (synthetic data in benchmarks
    and tests)."""

    def __len__(self) -> int: ...  # batches per epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...  # what the next iteration yields

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]: ...  # images [N,3,S,S], labels


@dataclass
class Trainer:
    """Everything the loop needs, built once by `setup`."""

    cfg: Config
    accelerator: Accelerator
    batch: GlobalBatch  # train.batch_size over the processes: vaedist.batch
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    vae: VAEBase  # the same model, unwrapped: encode/decode/sample
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]  # (encoder's, decoder's), unwrapped
    schedules: tuple[Schedule, Schedule]
    weights: LossWeights  # at the full KL weight; train_step applies the KL warm-up
    train_loader: TrainLoader
    val_loader: Loader | None
    run_dir: RunDir
    tracker: Tracker
    progress: Progress  # where training stands; saved in every checkpoint
    stop: StopRequest  # SIGTERM/SIGINT: save a checkpoint and exit
    roll: RollCall  # who is who, and heartbeats: which rank is late when a collective times out
    bad_samples: BadSampleLog  # samples that failed to decode: exchanged, recorded, judged alike
    lock: RunLock | None  # the run directory's (rank 0 holds it)
    last_checkpoint: Path | None = None
    probe_loader: Loader | None = None  # labelled datasets: the probe's training subset (vaedist.evaluate.probe)
    blowups: int = 0  # training steps of this session counted as blow-ups (LogWindow), reported at the end


def setup(cfg: Config, loaders: tuple[TrainLoader, Loader | None] | None = None) -> Trainer:
    """Build the run and restore its latest checkpoint. `loaders=(train, val)` replaces the shard loaders
    (benchmarks and tests: synthetic data, no manifest)."""
    accelerator = build_accelerator(cfg)
    run_dir = RunDir.for_training(cfg.run.dir)  # under a W&B sweep agent, a sub-directory per run
    cfg.run.dir = str(run_dir.path)
    lock = lock_run_dir(accelerator, run_dir)
    roll = RollCall.start(accelerator)
    try:
        return build(cfg, accelerator, run_dir, lock, roll, loaders)
    except BaseException:
        roll.stop()
        if lock is not None:
            lock.release()  # a run that failed to start leaves the run dir free (in this process too)
        raise


def lock_run_dir(accelerator: Accelerator, run_dir: RunDir) -> RunLock | None:
    """Collective: rank 0 takes the run directory's lock; a refusal is every rank's one-line error."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(run_dir)
        except UserError as err:
            error = err
    raise_together(accelerator, error)
    return lock


def build(cfg: Config, accelerator: Accelerator, run_dir: RunDir, lock: RunLock | None, roll: RollCall,
          loaders: tuple[TrainLoader, Loader | None] | None) -> Trainer:
    use_cores(cfg, accelerator)
    batch = GlobalBatch(cfg.train.batch_size, accelerator.num_processes)
    set_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_prepared_model(cfg, accelerator)
    optimizers = (build_optimizer(cfg.train.encoder, model.encoder.parameters()),
                  build_optimizer(cfg.train.decoder, model.decoder.parameters()))
    if loaders is None:
        train_loader, val_loader = build_loaders(cfg, accelerator, batch.per_process)
        manifest = train_loader.manifest
        probe_loader = build_probe_loader(cfg, accelerator, batch.per_process, train_loader.bad_samples)
    else:
        (train_loader, val_loader), manifest, probe_loader = loaders, None, None
    schedules = (build_schedule(cfg.train.encoder, optimizers[0], len(train_loader), cfg.train.epochs),
                 build_schedule(cfg.train.decoder, optimizers[1], len(train_loader), cfg.train.epochs))
    prepared, _, _ = accelerator.prepare(model, *optimizers)
    progress = Progress()
    accelerator.register_for_checkpointing(progress, *schedules)  # order is part of the checkpoint format

    last_checkpoint = resume(accelerator, run_dir, cfg, batch, progress, optimizers, schedules)
    progress.batch_size, progress.processes = batch.size, batch.processes
    bad_samples = BadSampleLog.start(accelerator, run_dir, (train_loader, val_loader))
    if accelerator.is_main_process:
        save_config(cfg, run_dir.config)
    accelerator.wait_for_everyone()

    t = Trainer(
        cfg=cfg, accelerator=accelerator, batch=batch, model=prepared,
        vae=accelerator.unwrap_model(prepared, keep_torch_compile=False), optimizers=optimizers,
        schedules=schedules, weights=loss_weights(cfg.train, batch), train_loader=train_loader,
        val_loader=val_loader, run_dir=run_dir,
        tracker=Tracker(cfg, accelerator, run_dir, manifest, resumed_step=progress.step),
        progress=progress, stop=StopRequest(accelerator.process_index), roll=roll, bad_samples=bad_samples,
        lock=lock, last_checkpoint=last_checkpoint, probe_loader=probe_loader,
    )
    t.stop.install()
    return t


def build_prepared_model(cfg: Config, accelerator: Accelerator) -> VAEBase:
    """The model of `model.arch`, with SyncBatchNorm and channels-last where the config asks for them."""
    model = build_model(cfg)
    if accelerator.num_processes > 1 and cfg.train.sync_batchnorm and accelerator.device.type == "cuda":
        # The seed normalised over its whole batch; per-rank statistics would change the model with the GPU count.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def use_cores(cfg: Config, accelerator: Accelerator) -> None:
    """Split this process's cores between the decoder's threads and torch's (vaedist.threads)."""
    on_cpu = accelerator.device.type == "cpu"
    threads = plan_threads(cfg.data.workers, cfg.train.torch_threads, on_cpu=on_cpu)
    if threads.torch:
        torch.set_num_threads(threads.torch)
    if on_cpu:
        accelerator.print(f"CPU threads per process: {threads.data} decoder + {threads.torch} torch "
                          f"({threads.cores} cores each; data.workers, train.torch_threads)")


def build_loaders(cfg: Config, accelerator: Accelerator, per_process_batch: int) -> tuple[Loader, Loader]:
    def split(name: str, train: bool) -> Loader:
        return build_loader(cfg.data, name, train=train, batch_size=per_process_batch, accelerator=accelerator)

    return split(cfg.data.train_split, True), split(cfg.data.val_split, False)


def close(t: Trainer, process_group_broken: bool = False) -> None:
    """End what `setup` started, on every rank: give the signals back, then finish the tracker (which also
    ends the process group: left to the interpreter's final garbage collection, a gloo thread finishing its
    work cannot take the GIL and aborts the process after a successful run), then release the lock.
    `process_group_broken` (a collective timed out): no collective is tried on the way out."""
    t.stop.restore()
    t.roll.stop()
    try:
        if not process_group_broken:
            t.tracker.finish()
    finally:
        if t.lock is not None:
            t.lock.release()
