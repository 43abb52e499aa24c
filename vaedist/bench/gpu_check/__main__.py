from vaedist.bench.gpu_check.check import main
from vaedist.errors import run_cli

run_cli(main, prog="gpu_check")
