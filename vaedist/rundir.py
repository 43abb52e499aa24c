"""The run directory: the one home of its layout, as `vaedist.shard.format` is the shard directory's.

    RUN_DIR/
      config.yaml                  the resolved config (file + overrides), written at every start
      metrics.jsonl                one JSON object per logged row, appended a line at a time
      images/<kind>_e<NNN>.png     one per evaluation (kind: IMAGE_KINDS; the last logging.keep_images
                                   evaluations), and <kind>_latest.png, a copy of the newest
      checkpoints/step-<NNNNNNNN>/ Accelerate's state (.tmp-step-* and .old-step-* only while one is saved)
      final/                       the trained model: model.safetensors + config.yaml (`ModelFiles`)
      wandb/, wandb_run_id         W&B's own folder and the W&B run id a resumed training continues
      bad_samples.jsonl            one JSON object per sample that failed to decode (`BadSample.to_json`)
      run.lock                     flock'ed for the life of a training (`vaedist.runlock`): host, pid, start
    Under a W&B sweep agent RUN_DIR is run.dir/<W&B run id>, under `python -m vaedist.sweep` the point's own
    SWEEP_DIR/point-NNN (`RunDir.for_training`).

Every module that writes or reads a run directory goes through `RunDir`; none spells a name itself
(tests/test_architecture.py checks it). A new file is one `_Name` line in `RunDir`. No torch here:
`vaedist.compare` reads run directories on machines without it.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from vaedist.errors import UserError
from vaedist.files import write_bytes_atomic, write_text_atomic
from vaedist.sweepenv import current_point

CONFIG_NAME = "config.yaml"  # in the run directory and, with the weights, in final/
WEIGHTS_NAME = "model.safetensors"
# The pictures of every evaluation, in the order reports show them.
IMAGE_KINDS = ("reconstructions", "interpolations", "prior_samples", "latent_pca", "kl_per_dim")
_CHECKPOINT = re.compile(r"^step-(\d{8,})$")
_EPOCH_IMAGE = re.compile(r"^(?P<kind>.+)_e(?P<epoch>\d{3,})\.png$")
_WANDB_ID = re.compile(r"[A-Za-z0-9_-]+")


class _Name:
    """A file or folder of a run directory: `RunDir(p).metrics` is `p / "metrics.jsonl"`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: RunDir | None, owner: type) -> Path:
        return self if run is None else run.path / self.name  # type: ignore[return-value]


class RunDir:
    """One training run's directory. Paths are attributes (`run.config`, `run.checkpoints`, ...); reading and
    writing the files that have a format (metrics, images, checkpoints' names, the W&B id) are methods."""

    config = _Name(CONFIG_NAME)
    metrics = _Name("metrics.jsonl")
    images = _Name("images")
    checkpoints = _Name("checkpoints")
    final = _Name("final")
    final_being_written = _Name(".tmp-final")  # final/ is written here, then renamed: never half there
    final_being_replaced = _Name(".old-final")
    wandb = _Name("wandb")
    # Tables logged offline wait here for `wandb sync` (W&B's WANDB_DATA_DIR), so they travel with the run.
    wandb_staging = _Name("wandb/data")
    wandb_run_id = _Name("wandb_run_id")
    bad_samples = _Name("bad_samples.jsonl")
    lock = _Name("run.lock")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def for_training(cls, run_dir: str | Path) -> RunDir:
        """The run directory of a training with run.dir=`run_dir`: itself, or run_dir/<W&B run id> under a W&B
        sweep agent, or the point's own run dir under `python -m vaedist.sweep` (SWEEP_DIR/point-NNN). Every
        run of a sweep gets the same command line, hence the same run.dir; without this, the second sweep run
        would resume the first one's checkpoints and W&B run. (The agent's `${envvar:...}` macro cannot
        help: wandb 0.31 expands it before it sets WANDB_RUN_ID.)"""
        point = current_point()
        if point is None:
            return cls(run_dir)
        return cls(point.run_dir if point.run_dir is not None else Path(run_dir) / point.run_id)

    # --- config.yaml ---------------------------------------------------------------------------------

    def read_config(self) -> dict | None:
        """The saved config as a nested dict, None when there is none; a damaged file is a one-line UserError."""
        if not self.config.is_file():
            return None
        try:
            loaded = yaml.safe_load(self.config.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"'{self.config}' is not valid YAML ({getattr(err, 'problem', err)}); was the run dir copied whole?")
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"'{self.config}' does not hold a vaedist config (a mapping of sections)")
        return loaded or {}

    # --- metrics.jsonl -------------------------------------------------------------------------------

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(row) + "\n")  # one write per row: a kill leaves at most a torn last line

    def read_metrics(self) -> list[dict]:
        """The logged rows in order; a torn last line (a killed process) is ignored."""
        return _read_jsonl(self.metrics)

    def keep_metrics_until(self, step: int) -> list[dict]:
        """Drop the rows logged after `step` (the checkpoint a training resumes from, 0 for a fresh start), so
        that the steps trained again are not logged twice; return the rows kept."""
        if not self.metrics.is_file():
            return []
        kept = [row for row in self.read_metrics() if int(row.get("step", 0)) <= step]
        write_text_atomic(self.metrics, "".join(json.dumps(row) + "\n" for row in kept))
        return kept

    # --- bad_samples.jsonl ---------------------------------------------------------------------------

    def append_bad_samples(self, records: list[dict]) -> None:
        """Samples found damaged, one line each (appended once per finding: the trainer skips known ones)."""
        if records:
            with open(self.bad_samples, "a") as fh:
                fh.write("".join(json.dumps(row) + "\n" for row in records))

    def read_bad_samples(self) -> list[dict]:
        """The recorded bad samples in order; a torn last line (a killed process) is ignored."""
        return _read_jsonl(self.bad_samples)

    # --- images/ -------------------------------------------------------------------------------------

    def image(self, kind: str, epoch: int) -> Path:
        return self.images / f"{kind}_e{epoch:03d}.png"

    def latest_image(self, kind: str) -> Path:
        return self.images / f"{kind}_latest.png"

    def save_image(self, kind: str, epoch: int, png: bytes) -> None:
        """The PNG of one evaluation, under its epoch's name and as the kind's latest (each atomically)."""
        write_bytes_atomic(self.image(kind, epoch), png)
        write_bytes_atomic(self.latest_image(kind), png)

    def image_epochs(self) -> list[int]:
        """Epochs that have at least one per-evaluation PNG, oldest first."""
        if not self.images.is_dir():
            return []
        found = {int(m["epoch"]) for p in self.images.iterdir() if (m := _EPOCH_IMAGE.match(p.name))}
        return sorted(found)

    def prune_images(self, keep: int) -> list[Path]:
        """Delete the per-evaluation PNGs of all but the newest `keep` evaluations (0: keep all); the
        *_latest.png copies always stay. Returns what was deleted."""
        epochs = self.image_epochs()
        if keep <= 0 or len(epochs) <= keep:
            return []
        old = set(epochs[:-keep])
        removed = []
        for path in sorted(self.images.iterdir()):
            match = _EPOCH_IMAGE.match(path.name)
            if match and int(match["epoch"]) in old:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # --- checkpoints/ --------------------------------------------------------------------------------

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    def checkpoint_being_written(self, step: int) -> Path:
        """Where every rank writes a checkpoint before it is renamed to `checkpoint(step)`: a dot-folder, never
        resumed from."""
        return self.checkpoints / f".tmp-step-{step:08d}"

    def checkpoint_being_replaced(self, step: int) -> Path:
        """Where a checkpoint of the same step goes while the new one is renamed into place."""
        return self.checkpoints / f".old-step-{step:08d}"

    def unfinished_checkpoints(self) -> list[Path]:
        """The dot-folders a save killed half-way leaves behind."""
        if not self.checkpoints.is_dir():
            return []
        return [*self.checkpoints.glob(".tmp-step-*"), *self.checkpoints.glob(".old-step-*")]

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.list_checkpoints()
        return checkpoints[-1] if checkpoints else None

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> RunDir | None:
        """The run directory a checkpoint folder belongs to (RUN/checkpoints/step-N), None for any other path."""
        path = Path(path)
        if _CHECKPOINT.match(path.name) and path.parent.name == cls.checkpoints.name:
            return cls(path.parent.parent)
        return None

    # --- final/ --------------------------------------------------------------------------------------

    @property
    def final_files(self) -> ModelFiles:
        return ModelFiles.in_folder(self.final)

    def publish_final(self) -> None:
        """`final_being_written` (complete) becomes final/, replacing an earlier export."""
        if self.final.exists():
            shutil.rmtree(self.final_being_replaced, ignore_errors=True)
            self.final.rename(self.final_being_replaced)
        self.final_being_written.rename(self.final)
        shutil.rmtree(self.final_being_replaced, ignore_errors=True)

    # --- W&B -----------------------------------------------------------------------------------------

    def read_wandb_run_id(self) -> str | None:
        """The W&B run id stored by an earlier start, None when there is none (or it is not an id)."""
        if not self.wandb_run_id.is_file():
            return None
        run_id = self.wandb_run_id.read_text().strip()
        return run_id if _WANDB_ID.fullmatch(run_id) else None

    def write_wandb_run_id(self, run_id: str) -> None:
        write_text_atomic(self.wandb_run_id, run_id + "\n")

    def offline_wandb_runs(self, run_id: str) -> list[Path]:
        """Every offline-run-<time>-<id> folder W&B wrote for this run, oldest first (`wandb sync` takes them
        all: a resumed run has one per session)."""
        return sorted(self.wandb.resolve().glob(f"offline-run-*-{run_id}"))


@dataclass(frozen=True)
class ModelFiles:
    """A trained model on disk: its weights and the config they were trained with, side by side."""

    weights: Path
    config: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> ModelFiles:
        return cls(Path(folder) / WEIGHTS_NAME, Path(folder) / CONFIG_NAME)

    @classmethod
    def find(cls, path: str | Path) -> ModelFiles:
        """The model of a `final/` folder, of a run folder (its `final/`), of a checkpoint folder (Accelerate's
        model.safetensors with the run's config.yaml), or of a `model.safetensors` file (its config.yaml
        beside it); one-line UserErrors when something is missing."""
        path = Path(path)
        if path.is_dir() and not (path / WEIGHTS_NAME).is_file() and RunDir(path).final_files.weights.is_file():
            path = RunDir(path).final
        files = cls.in_folder(path) if path.is_dir() else cls(path, path.parent / CONFIG_NAME)
        run = RunDir.of_checkpoint(path) if path.is_dir() else None
        if run is not None and not files.config.is_file():  # a checkpoint: its config is the run's
            files = cls(files.weights, run.config)
        if not files.weights.is_file():
            raise UserError(f"no trained model at '{path}': expected {WEIGHTS_NAME} (a run's {RunDir.final.name}/ folder)")
        if not files.config.is_file():
            raise UserError(f"'{files.config}' is missing: it holds the model's widths next to {WEIGHTS_NAME}")
        return files


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of an append-only file, in order; a torn last line (a killed writer) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# Every name a run directory holds (for tests/test_architecture.py: no other module spells one).
LAYOUT_NAMES = tuple(value.name for value in vars(RunDir).values() if isinstance(value, _Name)) + (WEIGHTS_NAME,)
