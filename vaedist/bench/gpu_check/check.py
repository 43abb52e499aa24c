"""The GPU check's loop: plan the stages, run each in its own process under its share of the deadline,
print one progress line per stage, and rewrite the report after each.

    python -m vaedist.bench.gpu_check OUT_DIR [--wheels DIR] [--work DIR] [--images N] [--batch B] ...

(`bash launch/gpu_check.sh OUT_DIR [WHEELS_DIR] [options]` is the same.) Exit code 0 when no stage failed
or timed out (skipped stages, such as the GPU rows on a machine without CUDA, do not count), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from vaedist.bench.gpu_check.plan import REPO, CheckOptions, Stage, build_plan
from vaedist.bench.gpu_check.report import NO_CUDA, REPORT_MD, build_report, write_report
from vaedist.bench.gpu_check.runner import StageOutcome, run_commands
from vaedist.errors import UserError
from vaedist.files import write_text_atomic

LOG_NAME = "gpu-check.log"  # in OUT: every stage's output, each capped (the report's fourth file)
LOG_CAP = 96_000  # characters kept per stage in OUT/gpu-check.log (head and tail)


def parse_args(argv: list[str] | None) -> CheckOptions:
    defaults = CheckOptions(out=Path("."), work=Path("."))
    parser = argparse.ArgumentParser(prog="bash launch/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where gpu-report.{md,json,png} and gpu-check.log go")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of *.whl files or part-NN pieces to install first")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vaedist-gpu-check"),
                        help="data, logs, installed wheels, the run (default: /tmp/vaedist-gpu-check; reused by a rerun)")
    parser.add_argument("--images", type=int, default=defaults.images, help=f"training images (default {defaults.images:,})")
    parser.add_argument("--val-images", type=int, default=defaults.val_images)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="train bench and training run batch (default 512)")
    parser.add_argument("--loader-batch", type=int, default=defaults.loader_batch)
    parser.add_argument("--loader-epochs", type=int, default=defaults.loader_epochs)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="train bench timed rounds")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of the training run")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--config", default=defaults.config, help="config of the train bench and the run")
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s, help="seconds for the whole check (360)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="a stage's own time limit (repeatable)")
    parser.add_argument("--only", default=None, help="comma-separated stages to run (e.g. a rerun of the failed ones)")
    args = parser.parse_args(argv)
    budgets = {}
    for item in args.budget:
        name, sep, value = item.partition("=")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise UserError(f"--budget {item!r}: expected STAGE=SECONDS, e.g. gpu_tests=200") from None
    opts = CheckOptions(out=args.out.resolve(), work=args.work.resolve(), wheels=args.wheels.resolve() if args.wheels else None,
                        images=args.images, val_images=args.val_images, batch=args.batch, loader_batch=args.loader_batch,
                        loader_epochs=args.loader_epochs, rounds=args.rounds, epochs=args.epochs, workers=args.workers,
                        config=str(Path(args.config).resolve()) if Path(args.config).is_file() else args.config,
                        deadline_s=args.deadline, budgets=budgets,
                        only={s.strip() for s in args.only.split(",") if s.strip()} if args.only else None)
    names = [s.name for s in build_plan(opts)]
    unknown = sorted((set(budgets) | (opts.only or set())) - set(names))
    if unknown:
        raise UserError(f"unknown stage {', '.join(unknown)}; the stages are {', '.join(names)}")
    if opts.out == opts.work or opts.work in opts.out.parents or opts.out in opts.work.parents:
        raise UserError(f"--work {opts.work} and OUT_DIR {opts.out} must not contain each other: only the report "
                        "belongs in OUT_DIR (it travels back in at most 8 files)")
    return opts


def stage_env(opts: CheckOptions, with_site: bool) -> tuple[dict[str, str], str]:
    """The environment of every stage's commands, and the same as one line for the report."""
    paths = ([str(opts.site)] if with_site and opts.site.is_dir() else []) + [str(REPO)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    extra = {"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline",
             "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    return {**os.environ, **extra}, " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())


def probe_cuda(env: dict[str, str]) -> bool:
    """Whether torch sees a GPU, for when the environment stage could not say (it failed before writing)."""
    try:
        return subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"],
                              env=env, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def time_for(stage: Stage, later: list[Stage], left: float) -> float:
    """The stage's timeout: its budget, but never eating into what the later stages need (their reserves)."""
    return min(stage.budget_s, left - sum(s.reserve_s for s in later))


class Check:
    def __init__(self, opts: CheckOptions, command: str):
        self.opts, self.command = opts, command
        self.stages = build_plan(opts)
        self.outcomes: dict[str, StageOutcome] = {}
        self.environment: dict = {}
        self.cuda: bool | None = None
        self.started = time.monotonic()
        self.current: list = []  # the running command's process, for SIGTERM
        self.logs = opts.work / "logs"

    def progress(self, index: int, stage: Stage, text: str) -> None:
        print(f"[gpu-check {time.monotonic() - self.started:6.1f} s] {index}/{len(self.stages)} {stage.name}: {text}",
              flush=True)

    def skip_reason(self, stage: Stage) -> str:
        if stage.skip_reason:
            return stage.skip_reason
        if stage.needs_cuda and self.cuda is False:
            return "no CUDA"
        failed = [n for n in stage.needs if self.outcomes.get(n) and self.outcomes[n].status in ("failed", "timed out")]
        return f"stage {', '.join(failed)} did not pass" if failed else ""

    def will_run(self, stage: Stage) -> bool:
        return not self.skip_reason(stage)

    def run_stage(self, index: int, stage: Stage) -> StageOutcome:
        reason = self.skip_reason(stage)
        if reason:
            self.progress(index, stage, f"skipped ({reason})")
            return StageOutcome("skipped", reason)
        left = self.opts.deadline_s - (time.monotonic() - self.started)
        later = [s for s in self.stages[index:] if self.will_run(s)]
        timeout = time_for(stage, later, left)
        if timeout < min(stage.minimum(), stage.budget_s):  # a budget set below the minimum is obeyed
            reason = f"no time left: {max(left, 0):.0f} s of the deadline left, {sum(s.reserve_s for s in later):.0f} s kept for later stages"
            self.progress(index, stage, f"skipped ({reason})")
            return StageOutcome("skipped", reason)
        for path in stage.clean:
            shutil.rmtree(path, ignore_errors=True)
        self.progress(index, stage, f"{stage.title} (timeout {timeout:.0f} s, {left:.0f} s of the deadline left)")
        env, _ = stage_env(self.opts, with_site=stage.name != "install")  # install decides what the site holds
        outcome = run_commands(stage.commands, timeout, self.logs / f"{stage.name}.log", env, REPO, self.current)
        verdict = outcome.status + (f": {outcome.reason}" if outcome.reason and outcome.status != "passed" else "")
        self.progress(index, stage, f"{verdict} in {outcome.seconds:.1f} s")
        return outcome

    def after(self, stage: Stage, outcome: StageOutcome) -> None:
        if stage.name == "environment":
            try:
                self.environment = json.loads(stage.result.read_text())
            except (OSError, ValueError):
                self.environment = {}
            self.cuda = bool(self.environment["cuda"]) if "cuda" in self.environment else probe_cuda(stage_env(self.opts, True)[0])
            self.environment.setdefault("cuda", self.cuda)

    def write(self, finished: bool) -> dict:
        report = build_report(self.opts, self.stages, self.outcomes, self.environment, self.command,
                              stage_env(self.opts, True)[1], self.started, finished)
        write_report(report, self.opts.out, with_png=finished)
        self.write_log()
        return report

    def write_log(self) -> None:
        parts = []
        for stage in self.stages:
            log = self.logs / f"{stage.name}.log"
            if not log.is_file():
                continue
            text = log.read_text(errors="replace")
            if len(text) > LOG_CAP:
                text = text[: LOG_CAP // 8] + f"\n[... {len(text) - LOG_CAP:,} characters left out ...]\n" + text[-LOG_CAP * 7 // 8:]
            parts.append(f"===== {stage.name} =====\n{text}")
        write_text_atomic(self.opts.out / LOG_NAME, "\n".join(parts))

    def stop(self, signum, _frame) -> None:
        for process in self.current:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        print(f"[gpu-check] {signal.Signals(signum).name}: stopped; writing the report of what ran", flush=True)
        self.write(finished=False)
        sys.exit(128 + signum)

    def run(self) -> int:
        shutil.rmtree(self.opts.work / "results", ignore_errors=True)  # no figure of an earlier check may reappear
        shutil.rmtree(self.logs, ignore_errors=True)
        (self.opts.work / "results").mkdir(parents=True)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        print(f"[gpu-check] {len(self.stages)} stages, deadline {self.opts.deadline_s:.0f} s; report in {self.opts.out}; "
              f"work files in {self.opts.work}", flush=True)
        for index, stage in enumerate(self.stages, 1):
            outcome = self.run_stage(index, stage)
            self.outcomes[stage.name] = outcome
            self.after(stage, outcome)
            self.write(finished=False)
        report = self.write(finished=True)
        print(f"\n[gpu-check] {report['summary']}; {report['total_s']:.0f} s in all")
        for goal in report["goals"]:
            print(f"  {goal['goal']}: {goal['value']} (target {goal['target']}): {goal['verdict']}")
        print(f"[gpu-check] report: {self.opts.out / REPORT_MD} (+ .json, .png, {LOG_NAME})")
        bad = [s for s in report["stages"] if s["status"] in ("failed", "timed out")]
        return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    command = "bash launch/gpu_check.sh " + shlex.join(argv)
    return Check(opts, command).run()
