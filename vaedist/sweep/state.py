"""The sweep directory and its record, SWEEP_DIR/sweep.json: the one home that writes and reads them.

    SWEEP_DIR/
      sweep.json          every point: parameters, run dir, status, exit code, attempts, final/best metric
      sweep.log           what happened, with times, and the table every minute (a plain text log)
      status.txt          the live table, rewritten every couple of seconds (`watch cat SWEEP_DIR/status.txt`)
      report.html         vaedist.compare's page of all the sweep's runs, written at the end
      logs/point-NNN.log  the point's stdout and stderr, every attempt appended, with start/end marks
      point-NNN/          the point's run dir (config.yaml, metrics.jsonl, checkpoints/, final/, wandb/)
      sweep.lock          held by the running `python -m vaedist.sweep` (one per sweep directory)

sweep.json is written to a temporary name and renamed, so a kill at any moment leaves the previous whole
version. Paths in it are relative to SWEEP_DIR, so the folder can be copied elsewhere and compared there.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaedist.errors import UserError
from vaedist.files import write_text_atomic

STATE_FILE = "sweep.json"
LOG_FILE = "sweep.log"
STATUS_FILE = "status.txt"
REPORT_FILE = "report.html"
LOCK_FILE = "sweep.lock"
LOGS_DIR = "logs"
FORMAT = 1

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
STATUSES = (PENDING, RUNNING, DONE, FAILED, INTERRUPTED)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PointState:
    index: int
    name: str  # point-NNN: also the run dir's name
    run_id: str  # its W&B run id: <sweep id>-NNN
    parameters: dict[str, Any]  # swept and constant parameters, as passed on the command line
    status: str = PENDING
    exit_code: int | None = None  # of the last attempt (None: not ended, or ended while no sweep process ran)
    attempts: int = 0  # starts, a resume included
    device: str | None = None  # "gpu 1", "cpu 0-7"
    command: list[str] | None = None  # the argv of the last attempt
    started: str | None = None
    ended: str | None = None
    step: int | None = None  # the last metrics.jsonl row's
    epoch: int | None = None
    metric: dict[str, Any] = field(default_factory=dict)  # {"final": x, "best": y, "best_step": s}

    @property
    def run_dir(self) -> str:
        return self.name

    @property
    def log(self) -> str:
        return f"{LOGS_DIR}/{self.name}.log"

    def to_json(self) -> dict:
        return {**asdict(self), "run_dir": self.run_dir, "log": self.log}


@dataclass
class SweepState:
    sweep_id: str  # 8 characters, like a W&B sweep id; part of every point's W&B run id and the W&B group
    name: str
    sweep_file: str  # absolute path of the file it was started from
    method: str
    seed: int
    metric: str | None
    goal: str
    swept: list[str]  # parameters that vary between points
    command: list[str]  # the file's command template
    program: str | None
    cwd: str  # where the points run (relative paths in the command mean this folder)
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    report: str | None = None
    points: list[PointState] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "points"}
        data["points"] = [p.to_json() for p in self.points]
        return data


def state_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / STATE_FILE


def is_sweep_dir(path: str | Path) -> bool:
    return state_path(path).is_file()


def read_state(sweep_dir: str | Path) -> SweepState | None:
    """sweep.json of `sweep_dir`, or None when it has none. A damaged one is a one-line UserError."""
    path = state_path(sweep_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise UserError(f"'{path}' has format {data.get('format')!r}; this vaedist reads format {FORMAT}")
        point_names = {f.name for f in fields(PointState)}
        points = [PointState(**{k: v for k, v in p.items() if k in point_names}) for p in data.pop("points")]
        state_names = {f.name for f in fields(SweepState)}
        return SweepState(**{k: v for k, v in data.items() if k in state_names}, points=points)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise UserError(f"'{path}' is not a sweep record vaedist can read ({type(err).__name__}: {err}); "
                        "restore it or start the sweep in a new --out") from None


def write_state(sweep_dir: str | Path, state: SweepState) -> None:
    state.updated = now()
    write_text_atomic(state_path(sweep_dir), json.dumps(state.to_json(), indent=1) + "\n")


def point_run_dirs(sweep_dir: str | Path, state: SweepState, started_only: bool = True) -> list[Path]:
    """The run dirs of the sweep's points, in point order (only those that were started, by default)."""
    base = Path(sweep_dir)
    return [base / p.run_dir for p in state.points if not started_only or (base / p.run_dir).is_dir()]
