"""How a training process learns that it is one point of a sweep: the environment its launcher gives it.

Two launchers run sweep points, with the same command line for every point:
- W&B's agent (`wandb agent`) sets WANDB_SWEEP_ID and WANDB_RUN_ID (the run id W&B chose for the point).
- `python -m vaedist.sweep` (air-gapped clusters) sets the VAEDIST_SWEEP_* variables below. It cannot set
  WANDB_SWEEP_ID: wandb.init would then attach the run to a server-side sweep that does not exist (offline,
  wandb 0.31 also files such a run under the project "uncategorized").

The trainer reads this (vaedist.tracking) to give each point its own run dir and W&B run id, and to put all
runs of one sweep in one W&B group with the same tags; the runner writes it. Standard library only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SWEEP_ID = "VAEDIST_SWEEP_ID"  # the sweep's id (8 characters, like W&B's), the same for all its points
SWEEP_NAME = "VAEDIST_SWEEP_NAME"  # the sweep file's `name:` (or the file's stem)
RUN_ID = "VAEDIST_SWEEP_RUN_ID"  # the point's W&B run id: <sweep id>-<point index>
RUN_DIR = "VAEDIST_SWEEP_RUN_DIR"  # the point's run dir (absolute); replaces the command line's run.dir
# Names W&B's agent uses (wandb.env.SWEEP_ID, wandb.env.RUN_ID).
WANDB_SWEEP_ID = "WANDB_SWEEP_ID"
WANDB_RUN_ID = "WANDB_RUN_ID"

_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SweepPoint:
    """The sweep this process is a point of."""

    sweep_id: str
    name: str  # '' under W&B's agent (it does not pass the sweep's name on)
    run_id: str  # W&B run id of this point
    run_dir: Path | None  # None: derived from the command's run.dir (W&B's agent)
    launcher: str  # "wandb-agent" | "vaedist.sweep"

    @property
    def group(self) -> str:
        """W&B group of every run of the sweep."""
        return f"{self.name}-{self.sweep_id}" if self.name else f"sweep-{self.sweep_id}"

    @property
    def tags(self) -> list[str]:
        return ["sweep", f"sweep-{self.sweep_id}"] + ([self.name] if self.name else [])


def current_point(environ: os._Environ | dict | None = None) -> SweepPoint | None:
    """The sweep point this process runs, or None outside a sweep. vaedist.sweep's variables win over W&B's."""
    env = os.environ if environ is None else environ
    sweep_id, run_id = env.get(SWEEP_ID, "").strip(), env.get(RUN_ID, "").strip()
    if _ID.fullmatch(sweep_id) and _ID.fullmatch(run_id):
        run_dir = env.get(RUN_DIR, "").strip()
        return SweepPoint(sweep_id, env.get(SWEEP_NAME, "").strip(), run_id, Path(run_dir) if run_dir else None, "vaedist.sweep")
    sweep_id, run_id = env.get(WANDB_SWEEP_ID, "").strip(), env.get(WANDB_RUN_ID, "").strip()
    if _ID.fullmatch(sweep_id) and _ID.fullmatch(run_id):
        return SweepPoint(sweep_id, "", run_id, None, "wandb-agent")
    return None


def point_environment(sweep_id: str, name: str, run_id: str, run_dir: Path) -> dict[str, str]:
    """The variables `python -m vaedist.sweep` sets for one point (see current_point)."""
    return {SWEEP_ID: sweep_id, SWEEP_NAME: name, RUN_ID: run_id, RUN_DIR: str(Path(run_dir).resolve())}


# Variables a point must not inherit from the sweep process: W&B's agent's (a vaedist.sweep started inside an
# agent's run would otherwise hand that run's id to every point) and the W&B service of the parent.
NOT_INHERITED = (WANDB_SWEEP_ID, WANDB_RUN_ID, "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE")
