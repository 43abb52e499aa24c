"""Train the seed VAE with Accelerate. Entry point: `python -m vaedist.launch launch/train.py --config FILE ...`.

    code = train(cfg)             # the whole run: setup, run, close; 0, or 128 + signal when stopped

    t = setup(cfg)                # trainer.py: build everything once; resume.py: restore the latest checkpoint
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

__all__ = ["NonFiniteLoss", "TrainLoader", "Trainer", "close", "run", "setup", "train", "train_step"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # heavy dependencies (torch, Accelerate, DALI, torchmetrics): kept off the command line's config check (cli.py)
    from vaedist.train.loop import run, train  # (heavy: see above)
    from vaedist.train.step import train_step  # (heavy: see above)
    from vaedist.train.trainer import Trainer, TrainLoader, close, setup  # (heavy: see above)
    from vaedist.train.window import NonFiniteLoss  # (heavy: see above)

    globals().update(NonFiniteLoss=NonFiniteLoss, TrainLoader=TrainLoader, Trainer=Trainer, close=close, run=run,
                     setup=setup, train=train, train_step=train_step)
    return globals()[name]
