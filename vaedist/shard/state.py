"""What a run leaves in OUT_DIR while it works, so that a killed run can resume (img2dataset-style status).

    .vaedist-shard-state.json      written first: the inputs' fingerprint, the measured bytes ratio and
                                   (--val-fraction) the inputs its validation pass rejected
    .train-000003.done.json        one per finished shard: its ShardInfo, the inputs it rejected or dropped,
                                   and its rows (keys, the loader's columns, hashes: table.TableRows), from
                                   which the split's table and hashes file are written
    .train-000004.tar.tmp, .idx.tmp   the shard being written (swept away at the next start, like every .tmp)
    .train-000004.part00012.tmp    16 images a worker packed, not yet appended to the shard
    train-000003.tar / .idx        finished shards
    manifest.json                  written last; then the state and done files are removed

Every file is written to a temporary name, fsynced and renamed, so each of them is either absent or whole.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from vaedist.errors import UserError
from vaedist.files import write_json_atomic
from vaedist.shard.format import LOADER_COLUMNS, SHARD_FILES, ShardInfo, index_name, is_directory_file, tar_name
from vaedist.shard.plan import PlannedShard

STATE_NAME = ".vaedist-shard-state.json"
STATE_VERSION = 2  # 2: done records hold the table rows
DONE_FILE = re.compile(r"^\.[a-z]+-\d{6}\.done\.json$")


class OutputDir:
    """The sharder's view of OUT_DIR: finished shards, resumable state, leftovers to sweep."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, path: Path) -> "OutputDir":
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create --out '{path}': {err.strerror or err}") from None
        if not os.access(path, os.W_OK):
            raise UserError(f"--out '{path}' is not writable")
        return cls(path)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One sharder per OUT_DIR: two writing the same shards would corrupt each other's output.

        flock on the directory itself: no lock file to leave behind, released by the kernel even on kill -9.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another sharder is writing to '{self.path}': wait for it, or choose another "
                                "--out") from None
            yield
        finally:
            os.close(fd)

    @property
    def state_path(self) -> Path:
        return self.path / STATE_NAME

    def done_path(self, shard: PlannedShard) -> Path:
        return self.path / f".{shard.stem}.done.json"

    def sweep_temporaries(self) -> None:
        """Half-written files of a killed run (`.*.tmp`, and `manifest.json.tmp`): never complete, always safe
        to delete."""
        for p in self.path.iterdir():
            if p.name.endswith(".tmp") and (p.name.startswith(".") or is_directory_file(p.name[: -len(".tmp")])):
                p.unlink(missing_ok=True)

    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if is_directory_file(p.name, SHARD_FILES))

    def remove_everything_we_wrote(self) -> None:
        """--overwrite: our shards, index files, manifest and state; any other file of the user stays."""
        self.sweep_temporaries()
        for p in self.path.iterdir():
            if is_directory_file(p.name) or DONE_FILE.match(p.name) or p.name == STATE_NAME:
                p.unlink()

    def remove_progress_files(self) -> None:
        """After the manifest: the state and done files are no longer needed (no stray files)."""
        for p in self.path.iterdir():
            if DONE_FILE.match(p.name):
                p.unlink()
        self.state_path.unlink(missing_ok=True)

    # --- state -----------------------------------------------------------------------------------------

    def read_state(self) -> dict | None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # cannot happen with atomic writes; treat as absent and start over
        return state if state.get("version") == STATE_VERSION else None

    def write_state(self, fingerprint: str, bytes_ratio: float, rejected: dict[str, str] | None = None) -> None:
        """`rejected` (--val-fraction): the inputs the validation pass rejected, path -> reason; the split,
        hence the plan, depends on them."""
        state = {"version": STATE_VERSION, "fingerprint": fingerprint, "bytes_ratio": bytes_ratio}
        if rejected is not None:
            state["rejected"] = rejected
        write_json_atomic(self.state_path, state)

    # --- finished shards ---------------------------------------------------------------------------------

    def finished(self, shard: PlannedShard) -> dict | None:
        """The done record of `shard` if it was finished under the same plan and its files are intact."""
        try:
            record = json.loads(self.done_path(shard).read_text())
        except (FileNotFoundError, ValueError):
            return None
        # no "rows", or rows without the loader's columns: a record of an older vaedist, the shard is written again
        if record.get("plan") != shard.digest() or not set(LOADER_COLUMNS) <= set(record.get("rows", {})):
            return None
        info = record.get("shard")
        if info is not None:  # None: every sample was rejected, nothing to check on disk
            tar, idx = self.path / info["name"], self.path / info["index"]
            if not (tar.is_file() and idx.is_file() and tar.stat().st_size == info["bytes"]):
                return None
        return record

    def mark_finished(self, shard: PlannedShard, info: ShardInfo | None, skipped: list[dict], dropped: list[dict],
                      rows: dict) -> dict:
        record = {"plan": shard.digest(), "shard": asdict(info) if info else None, "skipped": skipped,
                  "dropped": dropped, "rows": rows}
        write_json_atomic(self.done_path(shard), record)
        return record

    def discard_unfinished(self, shard: PlannedShard) -> None:
        """A shard without a valid done record is rewritten from scratch: remove what a killed run left."""
        for name in (tar_name(shard.stem), index_name(shard.stem)):
            (self.path / name).unlink(missing_ok=True)
        self.done_path(shard).unlink(missing_ok=True)
