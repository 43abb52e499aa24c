"""Run one stage: its commands one after another, each in its own process group, under the stage's timeout.

Everything a command prints goes to the stage's log file; the outcome keeps the last lines, which is what
the report shows for a failure. A stage that outlives its timeout is stopped with SIGTERM (SIGKILL 5 s
later) together with everything it started (DALI threads, DataLoader workers, the accelerate launcher's
child), so that the next stage starts on an idle machine.
"""
from __future__ import annotations

import os
import resource
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TAIL_LINES = 40
TAIL_CHARS = 6000


@dataclass
class CommandOutcome:
    command: str  # shell-quoted, exactly as run
    returncode: int | None  # None: stopped at the timeout
    seconds: float
    cpu_seconds: float = 0.0  # user + system time of the command and everything it started (and waited for)


@dataclass
class StageOutcome:
    status: str  # passed | failed | timed out | skipped
    reason: str = ""  # skipped: why; failed: the last line of the output
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    timeout_s: float = 0.0
    commands: list[CommandOutcome] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # last lines of the output (failures only)


def last_lines(path: Path, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> list[str]:
    """The end of a log: at most `lines` lines and `chars` characters, progress-bar redraws (\\r) collapsed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 64 * chars))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    kept = [line for line in kept if line.strip()][-lines:]
    while kept and sum(len(line) + 1 for line in kept) > chars:
        kept.pop(0)
    return kept


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the command's whole process group, wait up to 5 s for it, then SIGKILL whatever of the group is
    left: a child that ignores SIGTERM must not outlive its stage just because the group's leader exited."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_commands(commands: list[list[str]], timeout_s: float, log: Path, env: dict[str, str], cwd: Path,
                 current: list | None = None) -> StageOutcome:
    """Run `commands` in order until one fails; the whole sequence shares `timeout_s`.

    `current`, if given, holds the running process while it runs (the check stops it on SIGTERM)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    outcome = StageOutcome("passed", timeout_s=timeout_s)
    with open(log, "ab") as out:
        for argv in commands:
            left = timeout_s - (time.monotonic() - start)
            quoted = shlex.join(argv)
            out.write(f"$ {quoted}\n".encode())
            out.flush()
            began, cpu_before = time.monotonic(), _children_cpu()
            try:
                process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as err:  # the program itself is missing
                outcome.commands.append(CommandOutcome(quoted, 127, 0.0))
                outcome.status, outcome.reason = "failed", f"cannot start {argv[0]}: {err.strerror}"
                break
            if current is not None:
                current[:] = [process]
            try:
                code = process.wait(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                _stop(process)
                code = None
            finally:
                if current is not None:
                    current.clear()
            outcome.commands.append(CommandOutcome(quoted, code, time.monotonic() - began, _children_cpu() - cpu_before))
            if code is None:
                outcome.status = "timed out"
                outcome.reason = f"stopped after {timeout_s:.0f} s"
                break
            if code != 0:
                outcome.status = "failed"
                break
    outcome.seconds = time.monotonic() - start
    outcome.cpu_seconds = sum(c.cpu_seconds for c in outcome.commands)
    if outcome.status != "passed":
        outcome.tail = last_lines(log)
        if outcome.status == "failed" and not outcome.reason:
            code = outcome.commands[-1].returncode
            outcome.reason = f"exit {code}: " + (outcome.tail[-1] if outcome.tail else "no output")
    return outcome
