"""Run a W&B sweep file without W&B's server: `python -m vaedist.sweep SWEEP.yaml` (see __main__).

    spec.py       the sweep file: parameters, grid / random expansion, the agent's command line per point
    state.py      SWEEP_DIR/sweep.json: every point, its run dir, status, exit code, metric (read by compare)
    supervise.py  the process between the runner and one point's command: dies with the runner, takes the
                  whole process tree of the point with it
    runner.py     N points at a time on GPUs or CPU cores, the live table, resume, the report at the end

Nothing here imports torch: the runner only starts processes and reads files.
"""
