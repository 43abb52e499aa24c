"""kill -9 the sharder mid-run (twice), run it again: exactly the right samples, no duplicates, no stray files,
byte-identical to an uninterrupted run."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaedist.sample import build_full_size_jpegs
from vaedist.shard import load_manifest, shard_dataset

REPO = Path(__file__).resolve().parents[1]
IMAGES = 200  # 640x480 photographs: ~1-2 s of decoding on one worker, so the kill lands mid-run
ARGS = ("--workers", "1", "--shard-size", "300KB", "--seed", "7", "--val-fraction", "0.1", "--no-progress")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    return build_full_size_jpegs(tmp_path_factory.mktemp("full") / "photos", IMAGES)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_and_kill(root: Path, out: Path, after_shards: int, extra: tuple[str, ...] = ()) -> None:
    """Start the CLI, SIGKILL it as soon as `after_shards` finished train tars exist; its workers must die too."""
    proc = subprocess.Popen([sys.executable, "-m", "vaedist.shard", "folder", "--root", str(root), "--out", str(out),
                             *ARGS, *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _children(proc.pid)
        if out.is_dir() and len(list(out.glob("train-*.tar"))) >= after_shards:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the sharder finished before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "manifest.json").exists()
    assert workers, "no worker process seen"
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed sharder"


def _assert_same_tables_and_hashes(out: Path, reference: Path, manifest) -> None:
    """Each split's table and hashes file, and duplicates.json: byte for byte the uninterrupted run's, and what
    the manifest lists."""
    data = (out / manifest.duplicates["name"]).read_bytes()
    assert data == (reference / manifest.duplicates["name"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.duplicates["sha256"]
    for split in manifest.splits.values():
        assert split.hashes is not None and split.hashes.rows == split.table.rows
        for info in (split.table, split.hashes):
            data = (out / info.name).read_bytes()
            assert data == (reference / info.name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.bytes


@pytest.mark.slow
def test_killed_sharder_resumes_without_duplicates(photo_folder, tmp_path, read_shards, dali_read_all):
    out = tmp_path / "out"
    _start_and_kill(photo_folder, out, after_shards=1)
    first_kill = len(list(out.glob("train-*.tar")))
    _start_and_kill(photo_folder, out, after_shards=first_kill + 2)  # killed again, while resuming

    finish = subprocess.run([sys.executable, "-m", "vaedist.shard", "folder", "--root", str(photo_folder), "--out",
                             str(out), *ARGS[:-1]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert "resuming" in finish.stdout

    manifest = load_manifest(out)
    reference = shard_dataset("folder", photo_folder, tmp_path / "reference", workers=2, shard_size="300KB", seed=7,
                              val_fraction=0.1, progress=False)
    assert manifest.splits == reference.splits  # same shards, same bytes (sha256), same counts, same tables
    assert all(s.table is not None and s.table.rows == s.samples for s in manifest.splits.values())
    _assert_same_tables_and_hashes(out, tmp_path / "reference", manifest)
    assert manifest.splits["train"].samples + manifest.splits["val"].samples == IMAGES
    assert len(manifest.splits["train"].shards) > 10
    samples = read_shards(out, manifest)  # asserts every key is in one shard only
    assert sorted(s["meta"]["path"] for s in samples.values()) == sorted(p.name for p in photo_folder.iterdir())
    expected = {"manifest.json", "duplicates.json"} | {n for s in manifest.splits.values() for n in (s.table.name, s.hashes.name)} | \
        {n for s in manifest.splits.values() for sh in s.shards for n in (sh.name, sh.index)}
    assert {p.name for p in out.iterdir()} == expected  # no temporary, state or done files left
    for split in ("train", "val"):
        assert len(dali_read_all(out, manifest, split, ["jpg", "json"])) == manifest.splits[split].samples


@pytest.mark.slow
def test_killed_drop_run_resumes_to_the_same_shards_tables_and_dropped_images(photo_folder, tmp_path):
    """--dedup drop decides each train image from the images kept before it: a resumed run must replay the
    finished shards' kept hashes (their done records) to decide the rest exactly as an uninterrupted run."""
    out = tmp_path / "out"
    _start_and_kill(photo_folder, out, after_shards=2, extra=("--dedup", "drop"))
    finish = subprocess.run([sys.executable, "-m", "vaedist.shard", "folder", "--root", str(photo_folder), "--out",
                             str(out), *ARGS[:-1], "--dedup", "drop"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert "resuming" in finish.stdout and "dropped (--dedup drop):" in finish.stdout
    manifest = load_manifest(out)
    reference = shard_dataset("folder", photo_folder, tmp_path / "reference", workers=2, shard_size="300KB", seed=7,
                              val_fraction=0.1, dedup="drop", progress=False)
    assert manifest.dropped and manifest.dropped == reference.dropped
    assert manifest.splits == reference.splits  # same shards and the same tables, byte for byte
    _assert_same_tables_and_hashes(out, tmp_path / "reference", manifest)
    assert manifest.splits["train"].samples + manifest.splits["val"].samples + len(manifest.dropped) == IMAGES


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_the_same_command_finishes_the_job(photo_folder, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) mid-run: exit 130 with one line, no
    traceback, no worker left, nothing but temporaries and done records beside the finished shards; the same
    command then writes exactly what an uninterrupted run writes."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vaedist.shard", "folder", "--root", str(photo_folder), "--out", str(out), *ARGS]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("train-*.tar")):
        workers |= _children(proc.pid)
        time.sleep(0.005)
    assert proc.poll() is None, f"the sharder finished before Ctrl-C: {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip() == "vaedist.shard: interrupted"
    assert workers and not any(_alive(w) for w in workers)
    planned = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert planned and all(name.startswith("train-") and name.endswith((".tar", ".idx")) for name in planned)

    finish = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    reference = shard_dataset("folder", photo_folder, tmp_path / "reference", workers=2, shard_size="300KB", seed=7,
                              val_fraction=0.1, progress=False)
    assert load_manifest(out).splits == reference.splits
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
