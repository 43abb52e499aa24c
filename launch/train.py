"""Train the seed VAE: a thin entry point over `vaedist.train.cli.main`.

    accelerate launch launch/train.py --config configs/coco.yaml [train.epochs=2 data.shards=DIR run.dir=DIR ...]
    python launch/train.py --config configs/demo.yaml          # one process, no launcher

Running the same command again with the same run.dir resumes from the latest checkpoint.
"""
from vaedist.errors import run_cli
from vaedist.train.cli import main

if __name__ == "__main__":
    run_cli(main, prog="train")
