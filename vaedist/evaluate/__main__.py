from vaedist.errors import run_cli
from vaedist.evaluate.cli import main

run_cli(main, prog="vaedist.evaluate")
