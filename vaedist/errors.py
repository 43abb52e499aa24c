"""How a command ends: one line and a non-zero exit for what the user can fix, no traceback.

Every command-line entry point runs through `run_cli`, so
- a mistake by the user (a wrong path, a bad key, a corrupt shard) is reported as one line that names the
  thing and what to do, while a bug in vaedist still shows its traceback;
- a Ctrl-C prints `PROG: interrupted` and exits 130, from the interpreter's first line of vaedist on: while
  the command is still importing (torch, DALI, numpy: up to seconds) `interrupt_quietly_until_main` holds it,
  which `vaedist/__init__.py` calls for `python -m vaedist.X` and each script in launch/ calls itself;
- a reader of stdout or stderr that went away (`| head`, a `tee` killed with its ssh session) costs only the
  output: the work goes on and the exit code is 141 (`guard_std_streams`).
Standard library only: `vaedist/__init__.py` imports this module before anything else.
"""
from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from typing import Callable, NoReturn


EVERY_RANK_GRACE_S = 5.0  # how long a rank other than 0 waits for rank 0 to report an error they share
INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C
# 128 + SIGPIPE: what a shell reports for a writer whose reader left (`yes | head -1` under pipefail). Not 1:
# that is a failed job (or a user error) for a script, and here the work itself ran to its end.
READER_GONE_EXIT = 141


class UserError(Exception):
    """A problem the user can fix. `str(err)` is the one line shown to them."""

    exit_code = 1
    # True where every process of a multi-process run raises the same error (a config mistake, a collective
    # check): only rank 0 then prints it. False (default) where one rank may hit it alone (a corrupt shard).
    every_rank = False


class ConfigError(UserError):
    """Unknown key, wrong type or missing file in a config: exit code 2 (like argparse)."""

    exit_code = 2
    every_rank = True  # every process reads the same config


def is_rank_zero() -> bool:
    """True in the first process of a launch (RANK, set by torchrun / accelerate launch) and without one."""
    return os.environ.get("RANK", "0") == "0"


def run_cli(main: Callable[[], int | None], prog: str = "vaedist") -> NoReturn:
    """Run `main`, turning a `UserError` into `prog: error: <line>` on stderr and its exit code, a Ctrl-C into
    `prog: interrupted` and 130, and a lost reader of the output into 141 once `main` has finished."""
    try:
        end_startup()  # from here a Ctrl-C is a KeyboardInterrupt again: main may have something to clean up
        guard_std_streams(prog)
        code = main()
    except SystemExit as stop:  # argparse's --help and usage errors; sys.exit inside main
        if stop.code not in (0, None):
            raise
        code = 0
    except UserError as err:
        if not err.every_rank or is_rank_zero():
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        elif "LOCAL_RANK" in os.environ:
            # Launched (torchrun, accelerate launch): the launcher stops every process once one has exited. Rank 0
            # prints this error; another rank that got there first would have it stopped before it printed.
            time.sleep(EVERY_RANK_GRACE_S)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)
    sys.exit(code or _output_code())


def _output_code() -> int:
    """0, or 141 when a reader of the output went away; the output buffered so far is written (flushed) first:
    a summary printed into a pipe is still in stdout's buffer."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a stream we did not guard (replaced by someone else), or closed
            pass
    return READER_GONE_EXIT if _readers_gone else 0


# --- a Ctrl-C while the command is still importing ------------------------------------------------------------


class _InterruptWhileImporting:
    """The SIGINT handler from the first line of vaedist until `run_cli` starts `main`.

    It ends the process at once (os._exit), without the KeyboardInterrupt Python would raise: nothing has been
    written yet, and the libraries being imported probe their optional dependencies inside `try: ... except:`
    blocks (or `except BaseException`) that would swallow a KeyboardInterrupt or SystemExit and import on."""

    def __init__(self, prog: str):
        self.prog = prog

    def __call__(self, _signum, _frame) -> None:
        try:
            os.write(2, f"{self.prog}: interrupted\n".encode())  # not print: this may run inside a print to stderr
        except OSError:
            pass
        os._exit(INTERRUPTED_EXIT)


def interrupt_quietly_until_main(prog: str) -> None:
    """Until `run_cli` starts `main`, a Ctrl-C prints `prog: interrupted` and exits 130, as it does later.

    Call it before the heavy imports. A SIGINT that is ignored (a job started in the background, nohup) or
    handled by someone else stays so."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _InterruptWhileImporting(prog))


def end_startup() -> None:
    """Give SIGINT back to Python's handler (KeyboardInterrupt) if `interrupt_quietly_until_main` holds it."""
    if isinstance(signal.getsignal(signal.SIGINT), _InterruptWhileImporting):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def command_module(orig_argv: list[str] | None = None) -> str | None:
    """MODULE while `python [options] -m MODULE` is importing MODULE's packages (Python sets sys.argv[0] to '-m'
    until it runs the module), else None. Reads the interpreter's own options from sys.orig_argv."""
    if orig_argv is None:
        if sys.argv[:1] != ["-m"]:
            return None
        orig_argv = getattr(sys, "orig_argv", [])
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "--check-hash-based-pycs":
            next(args, None)
        elif arg.startswith("--"):
            continue  # a long option without a value, or `--` before a script
        elif arg == "-" or not arg.startswith("-"):
            return None  # a script or `-` (stdin): no module
        else:  # a cluster of one-letter options as Python parses them: -u, -Wignore, -X importtime, -um mod
            for i, letter in enumerate(arg[1:], start=1):
                if letter in "mcWX":
                    value = arg[i + 1:] or next(args, "")
                    if letter == "m":
                        return value or None
                    if letter == "c":
                        return None
                    break
    return None


def quiet_interrupts_for_command_module() -> None:
    """`interrupt_quietly_until_main` when this interpreter is `python -m vaedist.X`: vaedist/__init__.py's
    first line, which Python runs before X's packages import their heavy dependencies."""
    module = command_module()
    if module is not None and module.startswith("vaedist."):
        interrupt_quietly_until_main(module)


# --- a reader of the output that went away ---------------------------------------------------------------------

_readers_gone: set[int] = set()  # the file descriptors (1, 2) now pointed at /dev/null
_prog = "vaedist"


class _ReaderGoneSafeFile(io.FileIO):
    """stdout's or stderr's file: where its reader went away (EPIPE: a closed pipe, a dropped ssh session without
    a terminal), it points the descriptor at /dev/null and counts the write as done.

    Why go on rather than stop: the reader going away says nothing about wanting the work stopped (a `tee` or
    a log viewer closed, `| head` read its line), and a multi-hour sharding or training run stopped by a
    progress line would lose its work in flight. Ctrl-C or SIGTERM stops it; the exit code, 141, tells that
    the output was lost. The descriptor keeps pointing at /dev/null, so the interpreter's last flush cannot
    raise again (Python's note on SIGPIPE, in the signal module's documentation, recommends the same), and
    the processes started later inherit /dev/null."""

    def write(self, data) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            _reader_gone(self.fileno())
            return super().write(data)


def redirect_to_devnull(fd: int) -> None:
    """Point descriptor `fd` at /dev/null: writes to it succeed and go nowhere (a reader or terminal gone)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _reader_gone(fd: int) -> None:
    redirect_to_devnull(fd)
    _readers_gone.add(fd)
    if fd != 2:
        try:  # os.write: this runs inside a write to stdout, maybe inside one to stderr's buffer too
            os.write(2, f"{_prog}: stdout's reader went away (broken pipe): the rest of the output is discarded, "
                        f"the work goes on; exit code {READER_GONE_EXIT} at the end\n".encode())
        except OSError:
            pass  # stderr went to the same pipe


def guard_std_streams(prog: str) -> None:
    """Replace sys.stdout and sys.stderr (the interpreter's, on descriptors 1 and 2) by the same streams over a
    `_ReaderGoneSafeFile`. Streams replaced by someone else (pytest's capture) are left alone."""
    global _prog
    _prog = prog
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if not isinstance(stream, io.TextIOWrapper) or stream.closed:
            continue
        inner = stream.buffer
        raw = getattr(inner, "raw", inner)  # `python -u`: the text layer writes to the file itself
        if isinstance(raw, _ReaderGoneSafeFile) or not isinstance(raw, io.FileIO) or raw.fileno() != fd:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            _reader_gone(fd)
            inner.flush()  # what the pipe did not take goes to /dev/null
        guarded = _ReaderGoneSafeFile(fd, "w", closefd=False)
        binary = guarded if inner is raw else io.BufferedWriter(guarded)
        setattr(sys, name, io.TextIOWrapper(binary, encoding=stream.encoding, errors=stream.errors,
                                            line_buffering=stream.line_buffering, write_through=stream.write_through))
