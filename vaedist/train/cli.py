"""The training command: `python -m vaedist.launch [launcher options] launch/train.py --config FILE [key=value ...]`
(or `accelerate launch launch/train.py ...`, `python -m vaedist.train ...`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaedist.config import Config, load_config
from vaedist.errors import is_rank_zero
from vaedist.parent import launched, signal_when_parent_dies
from vaedist.remote import is_url
from vaedist.rundir import RunDir
from vaedist.runlock import create_run_dir
from vaedist.shard.format import load_manifest


def parse_args(argv: list[str]) -> tuple[Path | None, list[str]]:
    parser = argparse.ArgumentParser(prog="launch/train.py", description="Train the seed VAE with Accelerate.")
    parser.add_argument("--config", type=Path, help="YAML config (configs/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2 data.shards=DIR run.dir=DIR")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def main(argv: list[str] | None = None) -> int:
    if launched():  # a launcher that dies (kill -9; SIGTERM to a one-process `accelerate launch`) stops us as SIGTERM would
        signal_when_parent_dies()
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(config_path, overrides)
    check_run_dir_and_shards(cfg)
    # the trainer (torch, Accelerate, DALI, torchmetrics: seconds) only once the config, the run dir and the shards
    # have been checked: a mistake in them is one line at once (through the package, which binds its names; see
    # vaedist/train/__init__.py)
    from vaedist.train import train

    show_info_messages()
    return train(cfg)


def check_run_dir_and_shards(cfg: Config) -> None:
    """What can be checked in milliseconds, before the trainer's seconds of imports: run.dir can hold a run (it is
    created, as taking its lock would), then data.shards is a complete shard directory (its manifest reads).

    Rank 0 only: the others would print the same line again; a rank whose view differs (another node's file
    system) still finds it when it takes the lock or builds its loaders, as every rank did before. The lock itself
    is taken after the Accelerator is built (vaedist.train.trainer); remote shards (a URL) are read there too.
    """
    if not is_rank_zero():
        return
    create_run_dir(RunDir.for_training(cfg.run.dir).path)
    if not is_url(cfg.data.shards):
        load_manifest(cfg.data.shards)


def show_info_messages() -> None:
    """vaedist's own INFO lines (where the decode-once cache went, and why) on the console, from rank 0 only."""
    if not is_rank_zero():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vaedist")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
