"""Stage `real_run`, second command: read back what the training run left, as a user would find it.

    python -m vaedist.bench.gpu_check.readback RUN_DIR [--json FILE]

Checks: metrics.jsonl has training rows and one evaluation per epoch, the final weights load, checkpoints
exist, and the offline W&B run holds the same history (read with `wandb leet inspect --json`, W&B's own
reader of its transaction log), evaluations and image files. Also sums the training time of the logged
windows (steps x batch / images_per_s per row): the time of the epochs themselves, without start-up and
evaluations. Writes --json in any case, then fails with one line naming what is missing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vaedist.config import load_config
from vaedist.errors import UserError
from vaedist.files import write_text_atomic
from vaedist.models import load_model
from vaedist.rundir import RunDir


def training_seconds(rows: list[dict], batch_size: int) -> float:
    """Sum of the logged windows' durations: each training row covers the steps since the previous one."""
    total, previous = 0.0, 0
    for row in rows:
        if "train/images_per_s" in row and row["train/images_per_s"] > 0:
            total += (row["step"] - previous) * batch_size / row["train/images_per_s"]
            previous = row["step"]
    return total


def wandb_history(offline_run: Path) -> list[dict]:
    """History rows of an offline run, through `wandb leet inspect --json` (one JSON record per line)."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise UserError(f"wandb leet inspect {offline_run} failed: {lines[-1] if lines else proc.returncode}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def read_back(run_dir: Path) -> tuple[dict, list[str]]:
    problems = []
    run = RunDir(run_dir)
    cfg = load_config(run.config)
    rows = run.read_metrics()
    train_rows = [r for r in rows if "train/images_per_s" in r]
    val_rows = [r for r in rows if "val/mse" in r]
    summary = {
        "run_dir": str(run_dir), "batch_size": cfg.train.batch_size, "epochs_configured": cfg.train.epochs,
        "precision": cfg.train.precision, "steps": max((r["step"] for r in rows), default=0),
        "train_rows": len(train_rows), "val_rows": len(val_rows),
        "training_seconds": round(training_seconds(rows, cfg.train.batch_size), 3),
        "final_metrics": {k: v for k, v in (val_rows[-1] if val_rows else {}).items() if k.startswith("val/")},
        "checkpoints": [p.name for p in run.list_checkpoints()],
    }
    if not train_rows:
        problems.append(f"no training rows in {run.metrics}")
    evaluations = max(1, cfg.train.epochs // cfg.train.eval_every) if cfg.train.eval_every else 1
    if len(val_rows) < evaluations:
        problems.append(f"{len(val_rows)} evaluations in {run.metrics}, expected {evaluations} "
                        f"({cfg.train.epochs} epochs, train.eval_every={cfg.train.eval_every})")
    if not summary["checkpoints"]:
        problems.append("no checkpoint")
    try:
        model = load_model(run_dir)
        summary["final_weights"] = sum(p.numel() for p in model.parameters())
    except UserError as err:
        problems.append(str(err))
    run_id = run.read_wandb_run_id()
    offline = run.offline_wandb_runs(run_id) if run_id else []
    summary["wandb"] = {"offline_runs": [str(p) for p in offline]}
    if not offline:
        problems.append(f"no offline W&B run under {run.wandb}")
    else:
        try:
            history = wandb_history(offline[-1])
        except (UserError, subprocess.TimeoutExpired, ValueError) as err:
            problems.append(str(err))
        else:
            evals = [h for h in history if "val/mse" in h]
            images = [h[k] for h in evals for k in h if k.startswith("images/") and k.endswith(".path")]
            missing = [p for p in images if not (offline[-1] / "files" / p).is_file()]
            summary["wandb"].update(history_rows=len(history), eval_rows=len(evals), image_files=len(images),
                                    missing_image_files=len(missing))
            if len(evals) != len(val_rows) or not images or missing:
                problems.append(f"the W&B run has {len(evals)} evaluations ({len(val_rows)} in {RunDir.metrics.name}), "
                                f"{len(images)} images, {len(missing)} of them missing")
    return summary, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench.gpu_check.readback", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not RunDir(args.run_dir).config.is_file():
        raise UserError(f"'{args.run_dir}' is not a run directory (no {RunDir.config.name}): the training run did not start")
    summary, problems = read_back(args.run_dir)
    summary["problems"] = problems
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(summary, indent=1))
    w = summary["wandb"]
    print(f"run: {summary['steps']} steps, {summary['val_rows']} evaluations, training {summary['training_seconds']} s; "
          f"W&B offline run: {w.get('history_rows', 0)} history rows, {w.get('eval_rows', 0)} evaluations, "
          f"{w.get('image_files', 0)} images; final {summary['final_metrics']}")
    if problems:
        raise UserError("; ".join(problems))
    return 0


if __name__ == "__main__":
    from vaedist.errors import run_cli

    run_cli(main, prog="gpu_check readback")
