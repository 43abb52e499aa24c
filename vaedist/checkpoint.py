"""Training checkpoints: Accelerate's full state (model, both optimizers, schedulers, scaler, RNG per rank)
plus our progress counters, saved atomically in the run directory (`RunDir.checkpoint(step)`).

Atomic: every rank writes into the checkpoint's temporary folder, then the main process renames it once all
ranks are done, so a kill at any moment leaves either a complete checkpoint or none (the temporary folder
is removed on the next save). Only the last `keep` checkpoints stay. A save that fails for the disk's sake
(full, quota, I/O error) is one line on every rank, its temporary folder removed: the checkpoints before it
are intact, and the run resumes from the latest once there is room.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from vaedist.batch import GlobalBatch
from vaedist.collective import raise_together
from vaedist.config import flatten
from vaedist.errors import ConfigError, UserError
from vaedist.files import write_failure
from vaedist.rundir import RunDir

# Config keys a checkpoint fixes: they decide the shapes of the weights and of the optimizers' states.
# Everything else (epochs, learning rates, batch size, data, logging) may change between resumes.
FIXED_BY_CHECKPOINT = ("model.", "data.size", "train.encoder.name", "train.decoder.name")


@dataclass
class Progress:
    """Where training stands; saved inside every checkpoint (accelerator.register_for_checkpointing)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already trained on: the data position to skip to on resume
    # What a batch meant when the checkpoint was written: `batch_in_epoch` counts batches of this global size
    # split over this many processes (None: a checkpoint from before these were recorded).
    batch_size: int | None = None
    processes: int | None = None

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.batch_size, self.processes = state.get("batch_size"), state.get("processes")


def check_resumable(saved_config: dict, config: dict, run_dir: str | Path) -> None:
    """Refuse, in one line naming the key, a config that the run's checkpoints cannot be loaded into.

    `saved_config` is the run's config.yaml as written when it last started, `config` this run's; both as
    nested dicts (vaedist.config.to_dict).
    """
    saved, wanted = flatten(saved_config), flatten(config)
    for key, value in wanted.items():
        if key.startswith(FIXED_BY_CHECKPOINT) and key in saved and saved[key] != value:
            raise ConfigError(
                f"run.dir '{run_dir}' holds checkpoints of a run with {key}={saved[key]}, this config has "
                f"{key}={value}: set it back to resume, or give the new run its own run.dir"
            )


def check_mid_epoch_resume(progress: Progress, batch: GlobalBatch, checkpoint: str | Path) -> None:
    """Refuse to resume inside an epoch with another global batch size or process count: the data position
    is a count of batches, and batches of another size would skip or repeat samples of that epoch."""
    saved = (progress.batch_size, progress.processes)
    batch_size, processes = batch.size, batch.processes
    if progress.batch_in_epoch == 0 or None in saved or saved == (batch_size, processes):
        return
    raise ConfigError(
        f"checkpoint '{checkpoint}' stopped inside epoch {progress.epoch} (after batch {progress.batch_in_epoch}) with "
        f"train.batch_size={saved[0]} on {saved[1]} process(es), this run has train.batch_size={batch_size} on "
        f"{processes}: resume with the same to finish the epoch, then change them at the epoch's end"
    )


def save_checkpoint(accelerator, run_dir: RunDir, step: int, keep: int) -> Path:
    """Collective: every process must call it. Returns the checkpoint folder."""
    done, tmp = run_dir.checkpoint(step), run_dir.checkpoint_being_written(step)
    if accelerator.is_main_process:
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.unfinished_checkpoints():  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(tmp))
    except Exception as err:  # torch.save and safetensors do not raise OSError on a full disk: write_failure
        reason = write_failure(err, tmp)
        if reason is None:
            raise
        latest = run_dir.latest_checkpoint()
        error = UserError(f"saving the checkpoint '{done}' failed: {reason}; make room under '{run_dir.path}' and run "
                          f"the same command to resume ({f'from {latest}' if latest else 'no checkpoint was saved before'})")
    try:
        raise_together(accelerator, error)  # also the barrier before the rename
    except UserError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if done.exists():  # e.g. a mid-epoch checkpoint at the epoch's last step: the epoch-end state wins
            replaced = run_dir.checkpoint_being_replaced(step)
            done.rename(replaced)  # dot-folders are never resumed from; a kill here falls back one checkpoint
            tmp.rename(done)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            tmp.rename(done)
        for old in run_dir.list_checkpoints()[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return done
