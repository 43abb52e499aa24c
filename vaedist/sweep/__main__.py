"""`python -m vaedist.sweep SWEEP.yaml`: run a W&B sweep file's points without W&B's server.

    python -m vaedist.sweep configs/sweep.yaml --parallel 4 --gpus 0,1,2,3
    python -m vaedist.sweep configs/sweep_random.yaml --count 20 --out runs/lr-search
    python -m vaedist.sweep configs/sweep.yaml --dry-run          # the points and their command lines

Each point runs the command line W&B's agent would run for it, in its own run dir SWEEP_DIR/point-NNN;
the same command again resumes a stopped or killed sweep. See vaedist.sweep.runner.
"""
from __future__ import annotations

import argparse
import sys

from vaedist.errors import run_cli
from vaedist.sweep.runner import SweepOptions, run_sweep


def parse_args(argv: list[str]) -> SweepOptions:
    parser = argparse.ArgumentParser(prog="python -m vaedist.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="a W&B sweep file (method grid or random)")
    parser.add_argument("--out", metavar="SWEEP_DIR",
                        help="sweep directory: sweep.json, logs, report.html and one run dir per point "
                             "(default: the run.dir the file gives every point, else sweeps/<name>)")
    parser.add_argument("--parallel", type=int, metavar="N", help="points at a time (default: one per GPU; 1 without GPUs)")
    parser.add_argument("--gpus", metavar="0,1,...", help="GPUs to use, one point each (default: CUDA_VISIBLE_DEVICES, else all)")
    parser.add_argument("--cpu", action="store_true", help="run the points as CPU processes even where GPUs exist")
    parser.add_argument("--count", type=int, metavar="K", help="random: number of points (needed the first time); grid: only the first K")
    parser.add_argument("--seed", type=int, help="random: seed of the points (default 0; kept in sweep.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the points and their command lines; run nothing, write nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed points again (they resume from their checkpoints)")
    parser.add_argument("--stop-timeout", type=float, default=120.0, metavar="S",
                        help="seconds a stopped point gets to save its checkpoint before it is killed (default 120)")
    parser.add_argument("--refresh", type=float, default=2.0, metavar="S", help="seconds between table updates (default 2)")
    parser.add_argument("--table-every", type=float, default=60.0, metavar="S",
                        help="seconds between tables in sweep.log and on a stdout that is not a terminal (default 60)")
    args = parser.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus is not None else None
    return SweepOptions(sweep_file=args.sweep_file, out=args.out, parallel=args.parallel, gpus=gpus, cpu=args.cpu,
                        count=args.count, seed=args.seed, dry_run=args.dry_run, retry_failed=args.retry_failed,
                        stop_timeout=args.stop_timeout, refresh=args.refresh, table_every=args.table_every)


def main(argv: list[str] | None = None) -> int:
    return run_sweep(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_cli(main, prog="vaedist.sweep")
