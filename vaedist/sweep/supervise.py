"""The process between the sweep runner and one point's command (Linux): it dies with the runner, and takes
the point's whole process tree with it.

    python -m vaedist.sweep.supervise --parent PID --log FILE --attempt N [--cpus 0,1] [--stop-timeout S] -- ARGV...

Why a process of its own: the command is a launcher (`python -m vaedist.launch ... launch/train.py`, or
any other: `accelerate launch`, whose single-process launcher neither forwards signals nor dies with its
parent), and nothing else makes sure that a `kill -9` of the runner leaves no training running: a restarted
sweep could run the same point twice at the same time. This process
- asks the kernel for SIGTERM when the runner dies (prctl PR_SET_PDEATHSIG), even by kill -9;
- becomes the "subreaper" of everything it starts (PR_SET_CHILD_SUBREAPER), so that processes whose parent
  died (the trainer after its launcher) are still its descendants, and it can wait for all of them;
- runs the command in a process group of its own; a stop request (SIGTERM/SIGINT, from the runner or from
  the kernel on the runner's death) becomes one SIGTERM to that group, like Ctrl-C in a terminal: the trainer
  saves a checkpoint and exits. After --stop-timeout seconds, or at a second request, every descendant gets
  SIGKILL;
- exits only when no descendant is left, with the command's exit code (128 + signal when killed);
- writes start and end lines into the point's log, so every attempt's span can be read back.
Standard library only (it starts in a few tens of milliseconds).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
START_MARK = "==> vaedist.sweep: attempt"  # the runner and the tests read these lines back
END_MARK = "==> vaedist.sweep: ended attempt"


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def supervise(argv: list[str], parent: int, log_path: str, attempt: int, stop_timeout: float, cpus: list[int] | None) -> int:
    stop_requests = 0

    def request_stop(signum, _frame):
        nonlocal stop_requests
        stop_requests += 1

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the runner died before the line above: nothing may start
        return 128 + signal.SIGTERM
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if cpus:
        os.sched_setaffinity(0, cpus)  # inherited by everything the command starts
    if stop_requests:
        return 128 + signal.SIGTERM
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"\n{START_MARK} {attempt} started {_stamp()} pid {os.getpid()}: {' '.join(argv)}\n".encode())
        try:
            # preexec_fn=os.setpgrp (a group of its own) rather than process_group=0, which needs Python 3.11;
            # this process has one thread, so preexec_fn is safe here.
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=os.setpgrp)
        except OSError as err:
            log.write(f"{END_MARK} {attempt} {_stamp()} exit 127: cannot start {argv[0]!r}: {err}\n".encode())
            return 127
        code, stopped_at, exited_at, handled = None, None, None, 0
        while True:
            if stop_requests > handled:
                handled = stop_requests
                if handled == 1:
                    stopped_at = time.monotonic()
                    try:
                        os.killpg(child.pid, signal.SIGTERM)  # the command's group: like Ctrl-C in a terminal
                    except (ProcessLookupError, PermissionError):
                        pass
                else:
                    _signal_all(descendants(os.getpid()), signal.SIGKILL)
            deadline_from = stopped_at if stopped_at is not None else exited_at
            if deadline_from is not None and time.monotonic() - deadline_from > stop_timeout:
                # stopped and still not gone, or the command ended and left processes behind
                _signal_all(descendants(os.getpid()), signal.SIGKILL)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # nothing left below us
            if pid == 0:
                time.sleep(0.2)
                continue
            if pid == child.pid:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                child.returncode = code  # reaped here, not by Popen
                exited_at = time.monotonic()
        how = " (stopped by the sweep)" if stopped_at is not None else ""
        log.write(f"{END_MARK} {attempt} {_stamp()} exit {code}{how}\n".encode())
    return code if code is not None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.sweep.supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="pid of the sweep runner")
    parser.add_argument("--log", required=True, help="file the command's output is appended to")
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument("--cpus", default="", help="CPU cores to pin the command to, e.g. 0,1")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()] or None
    return supervise(command, args.parent, args.log, args.attempt, args.stop_timeout, cpus)


if __name__ == "__main__":
    sys.exit(main())
