"""The launcher command: `accelerate launch`, whose exit status is the training's, a stop by a signal included.

    python -m vaedist.launch [accelerate launch options] launch/train.py --config FILE [key=value ...]

It takes exactly `accelerate launch`'s arguments and runs Accelerate's own launcher in this process; only the
end differs. `accelerate launch` ends every run that does not exit 0 with its own traceback and exit code 1:
with several processes after a signal (torch's elastic agent passes SIGTERM/SIGINT on to the training
processes, waits for them, then raises `SignalException`), with one process after any failure
(`CalledProcessError`), so a stop's 143 and a config mistake's 2 were lost. With one process it also passed
no signal on: the launcher died and the training ran on (vaedist.parent stops it then). Here:

- several processes: torch's agent forwards the signal (SIGTERM, SIGINT, SIGHUP) and waits for the training processes (up to
  `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds, 30 by default, then SIGKILL); this exits 128 + the signal.
  A process that fails: this exits with the first failure's exit code (torch's agent logs which rank).
- one process: the training runs in a session of its own, as torch's workers do, so that a Ctrl-C at the
  terminal reaches it once, through this process, which passes SIGTERM, SIGINT and SIGHUP (the terminal
  closed) on and waits for it;
  this exits with the training's exit code (128 + the signal when it stopped on one).
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import accelerate.commands.launch as accelerate_launch
from accelerate.utils import prepare_simple_launcher_cmd_env
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from vaedist.errors import run_cli

# The signals the training stops on (vaedist.train.signals.StopRequest.SIGNALS; not imported from there:
# vaedist.train loads the trainer, DALI included, seconds this process does not need).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class TrainingExited(Exception):
    """The one-process training ended with a non-zero exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def exit_code(returncode: int) -> int:
    """A child's status as a shell reports it: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run_one_process(args) -> None:
    """Accelerate's one-process launch (its command line and environment), with the signals passed on."""
    cmd, env = prepare_simple_launcher_cmd_env(args)
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # no second Ctrl-C from the terminal
    with forwarding(lambda signum: child.send_signal(signum)):
        code = child.wait()
    if code != 0:
        raise TrainingExited(exit_code(code))


@contextmanager
def forwarding(send: Callable[[int], None]) -> Iterator[None]:
    """Within the block, the FORWARDED signals to this process are sent on instead of ending it."""
    previous = {sig: signal.signal(sig, lambda signum, _frame: send(signum)) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def one_process_launcher(launcher: Callable) -> Iterator[None]:
    """Accelerate picks its launcher from the arguments and its config file (`launch_command`); where it picks
    the one-process launcher, ours runs instead. Accelerate looks the name up when it calls it."""
    original = accelerate_launch.simple_launcher
    accelerate_launch.simple_launcher = launcher
    try:
        yield
    finally:
        accelerate_launch.simple_launcher = original


def main(argv: list[str] | None = None) -> int:
    parser = accelerate_launch.launch_command_parser()
    parser.prog = "python -m vaedist.launch"
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with one_process_launcher(run_one_process):
            accelerate_launch.launch_command(args)
    except TrainingExited as err:
        return err.code
    except SignalException as err:  # the agent forwarded it and waited: the training processes have stopped
        restore_default_handlers()
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        return exit_code(failure.exitcode) or 1
    except (ValueError, ConnectionError) as err:  # Accelerate's checks of its options; a port in use
        print(f"{parser.prog}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


def restore_default_handlers() -> None:
    """torch's agent leaves its handlers (which raise SignalException) behind: a second signal while this
    process exits ends it as the signal would, without a traceback."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


if __name__ == "__main__":
    run_cli(main, prog="vaedist.launch")
