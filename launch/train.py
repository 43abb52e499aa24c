"""Train the seed VAE: a thin entry point over `vaedist.train.cli.main`.

    python -m vaedist.launch launch/train.py --config configs/coco.yaml [train.epochs=2 data.shards=DIR run.dir=DIR ...]
    python -m vaedist.launch --multi_gpu --num_processes 8 launch/train.py --config configs/coco.yaml
    python launch/train.py --config configs/demo.yaml          # one process, no launcher

`python -m vaedist.launch` takes `accelerate launch`'s options and exits with the training's status (128 + the
signal after SIGTERM/SIGINT, with one process or many); `accelerate launch launch/train.py ...` works too.

Running the same command again with the same run.dir resumes from the latest checkpoint.
"""
from vaedist.errors import interrupt_quietly_until_main, run_cli

interrupt_quietly_until_main("train")  # a Ctrl-C while the trainer's modules import: one line, exit 130
from vaedist.train.cli import main  # noqa: E402

if __name__ == "__main__":
    run_cli(main, prog="train")
