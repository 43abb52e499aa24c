"""Train the seed VAE with Accelerate. Entry point: `accelerate launch launch/train.py --config FILE ...`.

    code = train(cfg)             # the whole run: setup, run, close; 0, or 128 + signal when stopped

    t = setup(cfg)                # setup.py: build everything once; resume.py: restore the latest checkpoint
    losses = train_step(t, x)     # step.py: one forward, one backward, both optimizers
    code = run(t)                 # loop.py: epochs of data -> step -> log -> checkpoint, then evaluate
    close(t)

window.py keeps the collective bookkeeping (log windows, non-finite check, stop votes), signals.py the
SIGTERM/SIGINT handling, cli.py the command line. The global batch contract is vaedist.batch.

The names below load on first use (PEP 562): `launch/train.py` imports vaedist.train.cli, which reads the command
line and the config before it needs the trainer, so that a mistake there is one line in a fraction of a second,
not after the seconds that torch, Accelerate, DALI and torchmetrics take to import in every process.
"""
from __future__ import annotations

import sys
import types

__all__ = ["NonFiniteLoss", "TrainLoader", "Trainer", "close", "run", "setup", "train", "train_step"]


def _load_names() -> None:
    # heavy dependencies (torch, Accelerate, DALI, torchmetrics): kept off the command line's config check (cli.py)
    from vaedist.train.loop import run, train  # (heavy: see above)
    from vaedist.train.setup import Trainer, TrainLoader, close, setup  # (heavy: see above)
    from vaedist.train.step import train_step  # (heavy: see above)
    from vaedist.train.window import NonFiniteLoss  # (heavy: see above)

    globals().update(NonFiniteLoss=NonFiniteLoss, TrainLoader=TrainLoader, Trainer=Trainer, close=close, run=run,
                     train=train, train_step=train_step, _setup_function=setup)


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load_names()
    return globals()[name]


class _Package(types.ModuleType):
    # `setup` names both the function and the submodule vaedist.train.setup; importing that submodule (loop.py and
    # step.py do) sets the package's attribute to the module. The property keeps the package's `setup` the function
    # (as the eager imports did), whichever of the two was imported first.
    @property
    def setup(self):
        if "_setup_function" not in globals():
            _load_names()
        return globals()["_setup_function"]

    @setup.setter
    def setup(self, module):  # the import system binding the submodule: it stays reachable in sys.modules
        pass


sys.modules[__name__].__class__ = _Package
