"""Train the seed VAE with Accelerate. Entry point: `accelerate launch launch/train.py --config FILE ...`.

    code = train(cfg)             # the whole run: setup, run, close; 0, or 128 + signal when stopped

    t = setup(cfg)                # setup.py: build everything once; resume.py: restore the latest checkpoint
    losses = train_step(t, x)     # step.py: one forward, one backward, both optimizers
    code = run(t)                 # loop.py: epochs of data -> step -> log -> checkpoint, then evaluate
    close(t)

window.py keeps the collective bookkeeping (log windows, non-finite check, stop votes), signals.py the
SIGTERM/SIGINT handling, cli.py the command line. The global batch contract is vaedist.batch.
"""
from vaedist.train.loop import run, train
from vaedist.train.setup import Trainer, TrainLoader, close, setup
from vaedist.train.step import train_step
from vaedist.train.window import NonFiniteLoss

__all__ = ["NonFiniteLoss", "TrainLoader", "Trainer", "close", "run", "setup", "train", "train_step"]
