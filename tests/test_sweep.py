"""`python -m vaedist.sweep`: the sweep file read as W&B reads it, each point's command line against the one wandb's
own agent builds, the random draws against scipy's distributions, and real sweeps on the embedded sample
(two CPU processes at a time), one of them killed with kill -9 and resumed."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from scipy import stats

from vaedist.config import load_config
from vaedist.errors import ConfigError, UserError
from vaedist.rundir import RunDir
from vaedist.sweep.runner import SweepOptions, make_slots, run_sweep
from vaedist.sweep.spec import agent_command, load_spec, write_args_json_file
from vaedist.sweep.state import DONE, read_state
from vaedist.sweep.supervise import END_MARK, START_MARK

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (REPO / "configs").glob("sweep*.yaml"))


def write_sweep(path: Path, sweep: dict) -> Path:
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def wandb_agent_command(sweep: dict, values: dict, run_id: str, sweep_id: str, monkeypatch) -> list[str]:
    """The argv wandb 0.31's own agent builds for a point (Agent._command_run); only the process start is replaced."""
    from wandb import wandb_agent

    recorded = {}

    class Recorder:
        def __init__(self, command=None, env=None, **_):
            recorded["command"], recorded["env"] = command, env

    monkeypatch.setattr(wandb_agent, "AgentProcess", Recorder)
    monkeypatch.setenv("WANDB_SWEEP_ID", sweep_id)
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id=sweep_id)
    agent._sweep_command = list(sweep.get("command", []))  # what Agent.run reads from the server's copy of the file
    agent._command_run({"run_id": run_id, "program": sweep.get("program"),
                        "args": {name: {"value": value} for name, value in values.items()}})
    monkeypatch.delenv("WANDB_SWEEP_ID")
    return recorded["command"]


# --- the file and its points ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_sweep_point_is_the_command_wandbs_agent_runs_and_a_valid_config(name, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    spec = load_spec(REPO / "configs" / name)
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    points = spec.points(count=6, seed=0)
    assert points and len({json.dumps(p, sort_keys=True) for p in points}) == len(points)  # distinct points
    for i, values in enumerate(points):
        run_id = f"abcd1234-{i:03d}"
        ours = agent_command(spec, values, sweep_id="abcd1234", run_id=run_id)
        assert ours == wandb_agent_command(raw, values, run_id, "abcd1234", monkeypatch)
        program = ours.index("launch/train.py")
        args = ours[program + 1:]
        assert args[0] == "--config"
        load_config(REPO / args[1], args[2:])  # the trainer accepts every point


def test_every_command_macro_matches_wandbs_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("VAEDIST_TEST_ROOT", "/data/x")
    sweep = {
        "program": "launch/train.py", "method": "grid",
        "parameters": {"train.kl_weight": {"values": ["one"]}, "train.lambda_mse": {"value": 1e-6},
                       "model.encoder_channels": {"value": [32, 64, 128]}, "data.flip": {"values": [False]},
                       "train.epochs": {"value": 3}, "run.name": {"value": "a b"}},
        "command": ["${env}", "${interpreter}", "${program}", "--root=${envvar:VAEDIST_TEST_ROOT}", "${envvar:UNSET_VAR_X}",
                    "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_no_equals}", "${args_json}",
                    "${args_json_file}", "${args_append_hydra}", "${args_override_hydra}", "${no_such_macro}", 7],
    }
    spec = load_spec(write_sweep(tmp_path / "all.yaml", sweep))
    (values,) = spec.points(None, 0)
    assert list(values) == sorted(values)  # W&B passes parameters in name order
    agent = wandb_agent_command(sweep, values, "abcd1234-000", "abcd1234", monkeypatch)
    (json_file,) = tmp_path.rglob("config-abcd1234-000.json")  # what the agent writes for ${args_json_file}
    agent_json = json_file.read_text()
    json_file.unlink()
    ours = agent_command(spec, values, sweep_id="abcd1234", run_id="abcd1234-000")
    assert ours == agent
    assert "--root=/data/x" in ours and "UNSET_VAR_X" in ours and "data.flip=False" in ours and "no_such_macro" not in str(ours)
    assert str(json_file) in ours
    write_args_json_file(spec, values, "abcd1234", "abcd1234-000")
    assert json_file.read_text() == agent_json


def test_grid_is_every_combination_in_wandbs_order_with_constants_everywhere(tmp_path):
    spec = load_spec(write_sweep(tmp_path / "g.yaml", {
        "method": "grid", "program": "p.py",
        "parameters": {"train.mode": {"value": "vae"}, "train.kl_weight": {"values": ["batch", "one"]},
                       "model.latent_dim": {"distribution": "int_uniform", "min": 2, "max": 3},
                       "train.beta": {"distribution": "q_uniform", "min": 0.5, "max": 2.0, "q": 0.5}},
    }))
    points = spec.points(None, 0)
    # names sorted; the last name varies fastest; q_uniform is numpy.arange(min, max, q): max excluded, as W&B
    expected = [(2, 0.5, "batch"), (2, 0.5, "one"), (2, 1.0, "batch"), (2, 1.0, "one"), (2, 1.5, "batch")]
    assert [(p["model.latent_dim"], p["train.beta"], p["train.kl_weight"]) for p in points[:5]] == expected
    assert all(list(p) == sorted(p) and p["train.mode"] == "vae" for p in points)
    assert len(points) == 2 * 2 * 3 and len({json.dumps(p) for p in points}) == 12
    assert spec.points(5, 0) == points[:5]  # --count on a grid: its first K points
    assert spec.swept == ["model.latent_dim", "train.beta", "train.kl_weight"]


def test_random_draws_follow_wandbs_distributions_and_the_seed(tmp_path):
    spec = load_spec(write_sweep(tmp_path / "r.yaml", {
        "method": "random", "program": "p.py",
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "beta": {"distribution": "uniform", "min": 0.5, "max": 8.0},
            "latent": {"distribution": "int_uniform", "min": 16, "max": 256},
            "batch": {"distribution": "q_log_uniform_values", "min": 32, "max": 512, "q": 32},
            "warmup": {"distribution": "q_uniform", "min": 0, "max": 2, "q": 0.5},
            "kl": {"values": ["batch", "one"]},
            "mode": {"values": ["vae", "beta-vae"], "probabilities": [0.8, 0.2]},
            "log_lr": {"distribution": "log_uniform", "min": -9.2, "max": -4.6},  # W&B's older form: natural logs
            "epochs": {"value": 3},
        },
    }))
    points = spec.points(2000, seed=7)
    column = {name: [p[name] for p in points] for name in points[0]}
    alpha = 1e-3  # a correct sampler fails one of these checks once in a thousand seeds; a wrong one always
    assert stats.kstest(column["lr"], stats.loguniform(1e-5, 1e-2).cdf).pvalue > alpha
    assert stats.kstest(column["beta"], stats.uniform(0.5, 7.5).cdf).pvalue > alpha
    assert stats.kstest(np.log(column["log_lr"]), stats.uniform(-9.2, 4.6).cdf).pvalue > alpha
    assert set(column["latent"]) <= set(range(16, 257)) and {16, 256} <= set(column["latent"])
    assert stats.chisquare(np.bincount(np.array(column["latent"]) - 16, minlength=241)).pvalue > alpha
    assert all(isinstance(v, int) and v % 32 == 0 and 32 <= v <= 512 for v in column["batch"])
    assert set(column["warmup"]) == {0.0, 0.5, 1.0, 1.5, 2.0}
    assert stats.chisquare([column["kl"].count("batch"), column["kl"].count("one")]).pvalue > alpha
    assert stats.chisquare([column["mode"].count("vae"), column["mode"].count("beta-vae")], [1600, 400]).pvalue > alpha
    assert set(column["epochs"]) == {3}
    # seeded: the same points again, other points for another seed, and a larger count only adds points
    assert spec.points(2000, seed=7) == points
    assert spec.points(5, seed=8) != points[:5]
    assert spec.points(3, seed=7) == points[:3]


@pytest.mark.parametrize("sweep, message", [
    ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "bayes search needs W&B's server"),
    ({"method": "grid", "parameters": {"a": {"distribution": "uniform", "min": 0.0, "max": 1.0}}}, "cannot be gridded"),
    ({"method": "random", "parameters": {"a": {"distribution": "normal"}}}, "distribution 'normal' is not supported"),
    ({"method": "random", "parameters": {"a": {"min": 2, "max": 1}}}, "min 2 is not less than max 1"),
    ({"method": "random", "parameters": {"a": {"distribution": "log_uniform_values", "min": 0, "max": 1}}}, "needs min > 0"),
    ({"method": "random", "parameters": {"a": {"values": [1, 2], "probabilities": [0.5, 0.6]}}}, "summing to 1"),
    ({"method": "grid", "parameters": {"train": {"parameters": {"lr": {"value": 1}}}}}, "nested parameters are not supported"),
    ({"method": "grid", "parameters": {"a": {"values": [1], "max": 3}}}, "key 'max' does not belong"),
    ({"method": "grid", "parameters": {}}, "'parameters' must map"),
    ({"method": "grid", "command": ["${program}"], "parameters": {"a": {"value": 1}}}, "has no 'program:'"),
])
def test_a_sweep_file_wandb_or_vaedist_cannot_run_is_one_line_naming_the_key(sweep, message, tmp_path):
    path = write_sweep(tmp_path / "bad.yaml", sweep)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_cli_reports_a_bad_sweep_file_in_one_line_and_exit_code_1(tmp_path):
    path = write_sweep(tmp_path / "bad.yaml", {"method": "bayes", "parameters": {"a": {"values": [1]}}})
    proc = subprocess.run([sys.executable, "-m", "vaedist.sweep", str(path), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vaedist.sweep: error: ") and str(path) in proc.stderr


def test_dry_run_prints_every_points_command_and_writes_nothing(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "vaedist.sweep", "configs/sweep.yaml", "--dry-run", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = load_spec(REPO / "configs" / "sweep.yaml")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("point-")]
    assert len(lines) == spec.grid_size() and not out.exists()
    assert all("/usr/bin/env python -m vaedist.launch launch/train.py --config" in line for line in lines)


def test_points_get_one_gpu_each_round_robin_and_cpu_points_their_own_cores(monkeypatch):
    slots = make_slots(3, ["0", "1"], cpu=False)  # more points than GPUs: shared round-robin
    assert [s.label for s in slots] == ["gpu 0", "gpu 1", "gpu 0"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "0"] and all(s.cpus is None for s in slots)
    cores = sorted(os.sched_getaffinity(0))
    cpu = make_slots(2, ["0", "1"], cpu=True)  # --cpu wins over GPUs, and hides them from the points
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)
    share = len(cores) // 2
    assert [s.cpus for s in cpu] == [cores[:share], cores[share:2 * share]]  # disjoint halves, not all cores each
    assert {s.env["OMP_NUM_THREADS"] for s in cpu} == {str(share)}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [s.label for s in make_slots(None, None, cpu=False)] == ["gpu 3", "gpu 5"]  # default: one point per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in make_slots(None, None, cpu=False)] == [""]  # no GPU: one CPU point
    dry = subprocess.run([sys.executable, "-m", "vaedist.sweep", "configs/sweep_beta.yaml", "--dry-run", "--gpus", "0,1",
                          "--parallel", "3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "3 at a time on gpu 0, gpu 1, gpu 0" in dry.stdout.splitlines()[0], dry.stdout + dry.stderr


def test_a_random_sweep_needs_a_count_and_a_wrong_point_config_stops_before_anything_runs(tmp_path):
    sweep = {"method": "random", "program": "launch/train.py", "parameters": {"train.kl_weight": {"values": ["batch", "half"]}}}
    path = write_sweep(tmp_path / "r.yaml", sweep)
    with pytest.raises(UserError, match="needs --count"):
        run_sweep(SweepOptions(path, out=tmp_path / "out", dry_run=True))
    # W&B's default command passes --key=value, which vaedist's trainer refuses
    with pytest.raises(ConfigError, match=r"passes --train.kl_weight=\w+ to vaedist's trainer.*args_no_hyphens"):
        run_sweep(SweepOptions(path, out=tmp_path / "out", count=8, cpu=True))
    sweep["command"] = ["${env}", "${interpreter}", "${program}", "--config", "configs/demo.yaml", "${args_no_hyphens}"]
    path = write_sweep(tmp_path / "r.yaml", sweep)
    with pytest.raises(ConfigError, match=r"point-\d{3} \(train.kl_weight=half\): config key 'train.kl_weight'"):
        run_sweep(SweepOptions(path, out=tmp_path / "out", count=8, cpu=True))
    assert not (tmp_path / "out").exists()


# --- real sweeps on the embedded sample, two CPU processes at a time ----------------------------------------

TINY = ["data.size=32", "model.latent_dim=8", "model.encoder_channels=[8,16,32]", "model.decoder_channels=[32,16,8]",
        "model.hidden_dim=32", "train.batch_size=8", "train.log_every=2", "train.eval_every=1", "data.workers=1",
        "logging.num_reconstructions=4", "logging.num_samples=4", "logging.table_rows=8", "logging.projection_points=50"]
STEPS_PER_EPOCH = 7  # 60 training images of the test sample, batch 8, last partial batch dropped


def sweep_command(shards: Path, launcher: list[str], *extra: str) -> list[str]:
    return ["${env}", *launcher, "${program}", "--config", "configs/demo.yaml", f"data.shards={shards}", *TINY, *extra,
            "${args_no_hyphens}"]


def start_sweep(sweep: Path, out: Path, *args: str, devices: tuple[str, ...] = ("--parallel", "2", "--cpu")) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "vaedist.sweep", str(sweep), "--out", str(out), *devices,
                             "--refresh", "0.5", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def attempts(log: Path) -> list[tuple[datetime, datetime | None]]:
    """(start, end) of every attempt, from the supervisor's marks in a point's log."""
    spans = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(START_MARK):
            spans.append([datetime.fromisoformat(line.split(" started ")[1].split()[0].rstrip("Z")), None])
        elif line.startswith(END_MARK):
            spans[-1][1] = datetime.fromisoformat(line.split()[5].rstrip("Z"))
    return [tuple(s) for s in spans]


def command_of(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


def signal_process(process: psutil.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


def assert_each_step_logged_once(run_dir: Path, epochs: int) -> None:
    rows = RunDir(run_dir).read_metrics()
    for kind in ("train/loss_encoder", "val/mse"):
        steps = [r["step"] for r in rows if kind in r]
        assert steps == sorted(set(steps)), (run_dir, kind, steps)
    assert rows[-1]["step"] == epochs * STEPS_PER_EPOCH and len([r for r in rows if "val/mse" in r]) == epochs


@pytest.mark.slow
def test_grid_sweep_killed_with_kill_9_resumes_and_runs_nothing_twice(read_report, food_shards, tmp_path):
    epochs = 3
    sweep = write_sweep(tmp_path / "grid.yaml", {
        "name": "kill-test", "program": "launch/train.py", "method": "grid",
        "metric": {"name": "val/mse", "goal": "minimize"},
        "parameters": {"train.kl_weight": {"values": ["batch", "one"]}, "model.latent_dim": {"values": [4, 8]}},
        # the shipped files' launcher (its one-process training runs in a session of its own)
        "command": sweep_command(food_shards, ["${interpreter}", "-m", "vaedist.launch", "--num_processes", "1", "--num_machines", "1",
                                               "--mixed_precision", "no", "--dynamo_backend", "no"],
                                 f"train.epochs={epochs}", "logging.wandb=false"),
    })
    out = tmp_path / "sweep"
    proc = start_sweep(sweep, out, "--stop-timeout", "60")
    deadline = time.monotonic() + 300
    while True:  # kill when one point is done and another one is training, past its first checkpoint
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "timeout"
        state = read_state(out) if (out / "sweep.json").is_file() else None
        if state and any(p.status == DONE for p in state.points):
            # past its first checkpoint (an epoch's end) and no further: two epochs are left to interrupt, where a
            # point past its second could end before the kill reached it (CI saw that: then nothing resumed)
            running = [p for p in state.points if p.status == "running"
                       and len(list((out / p.name / "checkpoints").glob("step-*"))) == 1]
            children = psutil.Process(proc.pid).children(recursive=True)
            trainers = [c for c in children if "launch/train.py" in command_of(c) and "vaedist.launch" not in command_of(c)
                        and any(f"model.latent_dim={p.parameters['model.latent_dim']} train.kl_weight={p.parameters['train.kl_weight']}"
                                in command_of(c) for p in running)]
            if trainers:
                break
        time.sleep(0.2)
    finished_before = {p.name: (out / p.name / "metrics.jsonl").read_bytes() for p in state.points if p.status == DONE}
    running_at_kill = {p.name for p in state.points if p.status == "running"}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:  # freeze the killed sweep's points, so that they are surely alive when it starts again
        signal_process(child, signal.SIGSTOP)

    again = start_sweep(sweep, out, "--stop-timeout", "60")
    deadline = time.monotonic() + 180
    while "still alive" not in (out / "sweep.log").read_text():  # it waits for them instead of starting the point
        assert time.monotonic() < deadline and again.poll() is None, "the restarted sweep did not wait for the old point"
        time.sleep(0.2)
    for child in children:
        signal_process(child, signal.SIGCONT)  # now they see the SIGTERM their supervisor got when the sweep died
    gone, alive = psutil.wait_procs(children, timeout=90)  # every process of the killed sweep dies with it
    assert not alive, [command_of(p) for p in alive]
    output, _ = again.communicate(timeout=400)
    assert again.returncode == 0, output[-4000:]

    state = read_state(out)
    assert [p.status for p in state.points] == [DONE] * 4, [(p.name, p.status, p.exit_code) for p in state.points]
    # exit code None: a point that wrote its final weights while no sweep process watched it (the restarted
    # sweep finds them and does not run it again); every point the sweeps saw end exited 0
    assert all(p.exit_code == 0 or (p.exit_code is None and p.name in running_at_kill) for p in state.points), \
        [(p.name, p.exit_code, p.attempts) for p in state.points]
    resumed = 0
    for point in state.points:
        run_dir, log = out / point.name, out / point.log
        assert_each_step_logged_once(run_dir, epochs)
        spans = attempts(log)
        # the attempt the kill -9 cut may have no end line: the supervisor that would write it died with the sweep
        # (its process was waited for by the restarted sweep, checked above); every other attempt ended
        cut = [i for i, (_, end) in enumerate(spans) if end is None]
        assert len(spans) == point.attempts and (not cut or (point.name in running_at_kill and cut == [0] and len(spans) > 1)), spans
        assert all(spans[i + 1][0] >= spans[i][1] for i in range(len(spans) - 1) if spans[i][1] is not None), spans  # never two at once
        if point.name in finished_before:  # skipped, not run again
            assert point.attempts == 1 and (run_dir / "metrics.jsonl").read_bytes() == finished_before[point.name]
        elif point.attempts > 1 and "resuming from" in log.read_text().split(START_MARK)[-1]:
            resumed += 1
        assert point.metric["final"] == RunDir(run_dir).read_metrics()[-1]["val/mse"]
        assert point.metric["best"] == min(r["val/mse"] for r in RunDir(run_dir).read_metrics() if "val/mse" in r)
    assert resumed >= 1  # the point killed mid-run went on from its checkpoint

    report = read_report(out / "report.html")  # the comparison page names every run, ranked by the sweep's metric
    runs = report.tables["runs"]
    assert set(runs) == {p.name for p in state.points}
    best = sorted(state.points, key=lambda p: p.metric["best"])
    assert report.row_order["runs"] == [p.name for p in best]
    assert {f for f, kind in report.figure_kinds.items() if kind == "parameter"} == {"train.kl_weight", "model.latent_dim"}


@pytest.mark.slow
def test_random_sweep_runs_two_points_at_once_reproducibly_in_one_wandb_group(inspect_records, read_report, food_shards, tmp_path):
    sweep = write_sweep(tmp_path / "random.yaml", {
        "name": "random-test", "program": "launch/train.py", "method": "random",
        "metric": {"name": "val/psnr", "goal": "maximize"},
        "parameters": {"train.encoder.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
                       "train.kl_weight": {"values": ["batch", "one"]}},
        "command": sweep_command(food_shards, ["${interpreter}"], "train.epochs=1", "logging.mode=offline"),
    })
    out = tmp_path / "sweep"
    dry = subprocess.run([sys.executable, "-m", "vaedist.sweep", str(sweep), "--out", str(out), "--count", "2", "--seed", "3",
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    proc = start_sweep(sweep, out, "--count", "2", "--seed", "3")
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]
    state = read_state(out)
    assert [p.status for p in state.points] == [DONE, DONE]
    spec = load_spec(sweep)
    assert [p.parameters for p in state.points] == spec.points(2, seed=3)  # reproducible from file and seed
    planned = [line.split("  ", 1)[1] for line in dry.stdout.splitlines() if line.startswith("point-")]
    assert [" ".join(p.command) for p in state.points] == planned
    (a_start, a_end), = attempts(out / state.points[0].log)
    (b_start, b_end), = attempts(out / state.points[1].log)
    assert a_start < b_end and b_start < a_end  # the two points ran at the same time
    assert {p.device for p in state.points} == ({"cpu 0-0", "cpu 1-1"} if len(os.sched_getaffinity(0)) == 2 else {p.device for p in state.points})

    groups, tags = set(), []
    for point in state.points:  # the offline W&B runs, read back as `wandb sync` will upload them
        (offline,) = (out / point.name / "wandb").glob("offline-run-*")
        (run,) = [r["run"] for r in inspect_records(offline) if r["type"] == "run"]
        assert run["run_id"] == point.run_id and run["project"] == "vaedist"
        groups.add(run["run_group"])
        tags.append(set(run["tags"]))
    assert groups == {f"random-test-{state.sweep_id}"}
    assert all({"sweep", f"sweep-{state.sweep_id}", "random-test"} <= t for t in tags)
    report = read_report(out / "report.html")
    assert set(report.tables["runs"]) == {"point-000", "point-001"}
    assert report.header["runs"][:3] == ["#", "run", "status"] and "best val/psnr" in report.header["runs"]


@pytest.mark.gpu
@pytest.mark.slow
def test_a_gpu_sweep_runs_each_point_on_its_own_gpu(food_shards, tmp_path):
    gpus = [str(i) for i in range(min(2, torch.cuda.device_count()))]
    sweep = write_sweep(tmp_path / "gpu.yaml", {
        "name": "gpu-test", "program": "launch/train.py", "method": "grid",
        "metric": {"name": "val/mse", "goal": "minimize"}, "parameters": {"train.kl_weight": {"values": ["batch", "one"]}},
        "command": sweep_command(food_shards, ["${interpreter}"], "train.epochs=1", "logging.wandb=false"),
    })
    out = tmp_path / "sweep"
    proc = start_sweep(sweep, out, devices=("--gpus", ",".join(gpus), "--parallel", str(len(gpus))))
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]
    state = read_state(out)
    assert [p.status for p in state.points] == [DONE, DONE]
    assert {p.device for p in state.points} == {f"gpu {g}" for g in gpus}
