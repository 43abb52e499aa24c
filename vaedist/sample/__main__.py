from vaedist.errors import run_cli
from vaedist.sample import main

run_cli(main, prog="vaedist.sample")
