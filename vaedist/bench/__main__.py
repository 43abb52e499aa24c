import importlib
import sys

from vaedist.errors import run_cli

COMMANDS = {"shard": "vaedist.bench.shard", "loader": "vaedist.bench.loader", "train": "vaedist.bench.train"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m vaedist.bench {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:])


run_cli(main, prog="vaedist.bench")
