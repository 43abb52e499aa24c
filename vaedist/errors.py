"""User-facing errors: one line, a non-zero exit, no traceback.

Every command-line entry point runs through `run_cli`, so a mistake by the user (a wrong path, a bad key,
a corrupt shard) is reported as one line that names the thing and what to do, while a bug in vaedist
still shows its traceback.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, NoReturn


EVERY_RANK_GRACE_S = 5.0  # how long a rank other than 0 waits for rank 0 to report an error they share


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
    """Run `main`, turning a `UserError` into `prog: error: <line>` on stderr and its exit code."""
    try:
        code = main()
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
        sys.exit(130)
    sys.exit(code or 0)
