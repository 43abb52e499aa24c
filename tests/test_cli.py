"""The command line's two ways to end that are not the work's own: a Ctrl-C while the command is still importing
(torch, DALI, numpy take up to seconds) and a reader of the output that went away (`| head`, a `tee` killed with
its ssh session). Real processes, real signals, real pipes."""
from __future__ import annotations

import ast
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vaedist import errors
from vaedist.shard.format import load_manifest

REPO = Path(__file__).resolve().parents[1]

# Every command a user types (README), as (argv after the interpreter, the prefix of its Ctrl-C line).
COMMANDS = [
    (["-m", "vaedist.shard", "--help"], "vaedist.shard"),
    (["-m", "vaedist.shard.rebuild_table", "--help"], "vaedist.shard.rebuild_table"),
    (["-m", "vaedist.dedup", "--help"], "vaedist.dedup"),
    (["-m", "vaedist.compare", "--help"], "vaedist.compare"),
    (["-m", "vaedist.encode", "--help"], "vaedist.encode"),
    (["-m", "vaedist.bench", "shard", "--help"], "vaedist.bench"),  # its sub-command imports inside main
    (["-m", "vaedist.sweep", "--help"], "vaedist.sweep"),
    (["-m", "vaedist.evaluate", "--help"], "vaedist.evaluate"),
    (["-m", "vaedist.sample", "--help"], "vaedist.sample"),
    (["-m", "vaedist.data.verify", "--help"], "vaedist.data.verify"),
    (["-m", "vaedist.train", "--help"], "vaedist.train"),
    (["-m", "vaedist.launch", "launch/train.py", "--help"], "vaedist.launch"),
    (["launch/train.py", "--help"], "train"),
]
SMALLEST_PIPE = 4096  # one page: the pipe's capacity once shrunk (F_SETPIPE_SZ)


def _interrupt_while_importing(argv: list[str], delay: float) -> subprocess.CompletedProcess:
    """Start the command with `python -v` (every import written to stderr as it completes) into a one-page pipe,
    read it until the first import after vaedist's own, stop reading, wait `delay`, then Ctrl-C its process
    group as a terminal does. Once nobody reads, the command blocks on the full pipe within a page of imports,
    so the Ctrl-C finds it importing whatever the delay and the machine's load (the commands import hundreds
    of modules; `--help` would print and exit right after)."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, SMALLEST_PIPE)
    child = subprocess.Popen([sys.executable, "-v", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=write_end,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(write_end)
    stderr = os.fdopen(read_end, "rb")
    seen_vaedist = False
    for line in stderr:  # what the pipe holds at most is read ahead: the child still blocks a page or two later
        if line.startswith(b"import 'vaedist'"):
            seen_vaedist = True
        elif seen_vaedist and line.startswith(b"import '"):
            break
    else:
        pytest.fail(f"{argv}: no import after vaedist's")
    time.sleep(delay)
    os.killpg(child.pid, signal.SIGINT)
    rest = stderr.read()
    stderr.close()
    out = child.stdout.read()
    child.stdout.close()
    code = child.wait(timeout=60)
    return subprocess.CompletedProcess(argv, code, out.decode(errors="replace"), rest.decode(errors="replace"))


@pytest.mark.parametrize("argv, prog", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_ctrl_c_while_a_command_imports_is_one_line_and_exit_130(argv, prog):
    for delay in (0.0, 0.1):  # at once (the first module after vaedist), and well into the imports (or blocked)
        result = _interrupt_while_importing(argv, delay)
        # Once, maybe right after a half-written -v line (the pipe was full mid-line); -v's own lines around it.
        assert (result.returncode, result.stdout) == (130, ""), (delay, result.stderr[-2000:])
        assert result.stderr.count(f"{prog}: interrupted\n") == 1, (delay, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, delay


def test_run_cli_gives_ctrl_c_back_to_python_before_main():
    """After the import phase a Ctrl-C is a KeyboardInterrupt again: main may have files to clean up."""
    before = signal.getsignal(signal.SIGINT)
    seen = []
    try:
        errors.interrupt_quietly_until_main("test")
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        with pytest.raises(SystemExit) as stop:
            errors.run_cli(lambda: seen.append(signal.getsignal(signal.SIGINT)), prog="test")
        assert stop.value.code == 0
        assert seen == [signal.default_int_handler]
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_ignored_ctrl_c_stays_ignored():
    """A command started in the background by a script (SIGINT ignored) is not made interruptible."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        errors.interrupt_quietly_until_main("test")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("orig_argv, module", [
    (["python", "-m", "vaedist.shard", "folder"], "vaedist.shard"),
    (["python", "-mvaedist.dedup"], "vaedist.dedup"),
    (["python", "-u", "-X", "importtime", "-Wignore", "-m", "vaedist.encode"], "vaedist.encode"),
    (["python", "-Bum", "vaedist.sweep"], "vaedist.sweep"),
    (["python", "-W", "m", "--check-hash-based-pycs", "always", "-m", "vaedist.compare"], "vaedist.compare"),
    (["python", "-c", "import vaedist", "-m", "vaedist.shard"], None),
    (["python", "launch/train.py", "-m", "vaedist.shard"], None),
])
def test_the_module_python_dash_m_runs_is_read_from_its_command_line(orig_argv, module):
    assert errors.command_module(orig_argv) == module


def _main_blocks() -> list[tuple[Path, ast.If]]:
    found = []
    for path in sorted([*(REPO / "vaedist").rglob("*.py"), *(REPO / "launch").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                    and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                found.append((path, node))
    return found


def test_every_command_runs_through_run_cli():
    """run_cli ends the import phase's Ctrl-C handling (and guards the output): a command that skipped it would
    end at the first Ctrl-C without cleaning up. __main__.py files call it at their top level."""
    blocks = _main_blocks()
    assert len(blocks) >= 12
    # The sweep's supervisor is no command: the runner starts it as a script in isolated mode (`python -I
    # .../supervise.py`, standard library only, no vaedist on its path); it takes SIGINT first thing.
    standalone = {REPO / "vaedist" / "sweep" / "supervise.py"}
    missing = [str(path.relative_to(REPO)) for path, node in blocks
               if path not in standalone and "run_cli" not in {n.func.id for n in ast.walk(node)
                                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}]
    for path in (REPO / "vaedist").rglob("__main__.py"):
        if "run_cli(" not in path.read_text():
            missing.append(str(path.relative_to(REPO)))
    assert not missing


# --- a reader that went away ---------------------------------------------------------------------------------


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (40, 30), (i * 40, 100, 50)).save(root / "a" / f"{i}.jpg")
    return root


def _shard_into_closed_pipe(root: Path, out: Path, stderr_too: bool) -> subprocess.CompletedProcess:
    """`python -m vaedist.shard ... | head -c 0`: stdout (and stderr) a pipe whose reader has closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "vaedist.shard", "folder", "--root", str(root), "--out", str(out),
                               "--workers", "1", "--dedup", "off"], cwd=REPO, stdout=write_end,
                              stderr=write_end if stderr_too else subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


def test_a_closed_stdout_costs_the_summary_not_the_shards(photo_folder, tmp_path):
    result = _shard_into_closed_pipe(photo_folder, tmp_path / "out", stderr_too=False)
    assert result.returncode == errors.READER_GONE_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    notes = [ln for ln in result.stderr.splitlines() if "broken pipe" in ln]
    assert notes == ["vaedist.shard: stdout's reader went away (broken pipe): the rest of the output is discarded, "
                     "the work goes on; exit code 141 at the end"]
    assert sum(s.samples for s in load_manifest(tmp_path / "out").splits.values()) == 6


def test_progress_into_a_closed_pipe_does_not_stop_the_sharding(photo_folder, tmp_path):
    """The progress bar (stderr) is the first write: before the fix it ended the run before any shard."""
    result = _shard_into_closed_pipe(photo_folder, tmp_path / "out", stderr_too=True)
    assert result.returncode == errors.READER_GONE_EXIT
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 6
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary left


def test_help_into_a_closed_pipe_is_exit_141_without_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "vaedist.dedup", "--help"], cwd=REPO, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == errors.READER_GONE_EXIT
    assert len(result.stderr.splitlines()) == 1 and "broken pipe" in result.stderr
