"""The training command: `python -m vaedist.launch [launcher options] launch/train.py --config FILE [key=value ...]`
(or `accelerate launch launch/train.py ...`, `python -m vaedist.train ...`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaedist.config import load_config
from vaedist.errors import is_rank_zero
from vaedist.parent import launched, signal_when_parent_dies


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
    # the trainer (torch, Accelerate, DALI, torchmetrics: seconds) only once the config has loaded: a mistake in it
    # is one line at once (through the package, which binds its names; see vaedist/train/__init__.py)
    from vaedist.train import train

    show_info_messages()
    return train(cfg)


def show_info_messages() -> None:
    """vaedist's own INFO lines (where the decode-once cache went, and why) on the console, from rank 0 only."""
    if not is_rank_zero():
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vaedist")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
