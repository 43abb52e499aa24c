from vaedist.errors import run_cli
from vaedist.train.cli import main

run_cli(main, prog="vaedist.train")
