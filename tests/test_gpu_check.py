"""The GPU check (launch/gpu_check.sh) on the CPU, so that it cannot rot between GPU loans: the same entry
point at tiny sizes, GPU rows skipped; a stage that overruns is recorded and the rest still run. Its parts
against real tools: wheels built by pip and cut by coreutils' split, pytest's own junit report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from vaedist.bench.gpu_check import wheels
from vaedist.bench.gpu_check.environment import CHECK_TOOLS, check_imports, requirements
from vaedist.bench.gpu_check.plan import CheckOptions, build_plan
from vaedist.bench.gpu_check.report import Figure, judge_goals, read_tests
from vaedist.bench.gpu_check.runner import run_commands

REPO = Path(__file__).resolve().parents[1]
STAGES = ["install", "environment", "data", "gpu_tests", "loader", "train", "train_fp16", "train_fp32", "train_nchw",
          "real_run", "train_compile"]
# The demo model (a tiny mode is a config): the same commands as on a GPU, seconds on two cores.
TINY = ["--images", "16", "--val-images", "8", "--batch", "8", "--loader-batch", "8", "--loader-epochs", "2",
        "--rounds", "1", "--epochs", "3", "--workers", "2", "--config", "configs/demo.yaml"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_dry_run_reports_every_stage_and_goes_on_after_one_overruns(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # gpu_tests gets 2 s: pytest is stopped while it collects, and the stages after it must still run
    proc = subprocess.run(["bash", "launch/gpu_check.sh", str(out), *TINY, "--work", str(work), "--budget", "gpu_tests=2"],
                          cwd=REPO, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a stage timed out
    for i, name in enumerate(STAGES, 1):  # one progress line per stage, at least
        assert f"] {i}/{len(STAGES)} {name}: " in proc.stdout, name
    report = json.loads((out / "gpu-report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == STAGES and report["kind"] == "cpu-dry-run" and report["finished"]
    assert stages["install"]["status"] == "skipped"
    assert stages["gpu_tests"]["status"] == "timed out"
    assert any("-m pytest -m gpu" in line for line in stages["gpu_tests"]["tail"])  # the log names the command
    for name in ("environment", "data", "loader", "train", "real_run"):
        assert stages[name]["status"] == "passed", (name, stages[name]["tail"])
        assert stages[name]["seconds"] > 0 and stages[name]["commands"]
    for name in ("train_fp16", "train_fp32", "train_nchw", "train_compile"):
        assert (stages[name]["status"], stages[name]["reason"]) == ("skipped", "no CUDA")

    figures = {f["key"]: f for f in report["figures"]}
    assert figures["loader.dali_mixed"]["status"] == "skipped (no CUDA)" and figures["loader.dali_mixed"]["value"] is None
    for key in ("loader.seed", "loader.dali_cpu", "loader.reference", "loader.cache", "train.synthetic", "train.pipeline",
                "train.pipeline+cache", "real_run.wall", "real_run.training"):
        assert figures[key]["value"] > 0 and figures[key]["status"] == "measured", key
    assert "-m vaedist.bench loader --shards" in figures["loader.seed"]["command"]
    assert "--variants synthetic --json" in figures["train_fp16.synthetic"]["command"]
    assert all(g["verdict"].startswith("not measured (no CUDA") for g in report["goals"])
    # demo.yaml evaluates every 2nd epoch and at the end: 2 evaluations, in metrics.jsonl and in W&B's own files
    assert report["run"]["wandb"]["eval_rows"] == report["run"]["val_rows"] == 2 and not report["run"]["problems"]
    assert report["environment"]["cuda"] is False and report["environment"]["missing"] == []

    md = (out / "gpu-report.md").read_text()
    assert "CPU dry run" in md and "## Goals" in md and "## GPU tests" in md
    for name in STAGES:
        assert f"| {name} |" in md
    for command in ("-m vaedist.bench loader", "-m vaedist.bench train", "-m vaedist.launch",
                    "launch/train.py --config", "-m pytest -m gpu"):
        assert command in md, command
    with Image.open(out / "gpu-report.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert [p.name for p in files] == ["gpu-check.log", "gpu-report.json", "gpu-report.md", "gpu-report.png"]
    assert all(p.stat().st_size < 2**20 for p in files)  # they come back through a 16 MiB-per-file channel


def test_the_default_plan_fits_six_minutes_and_covers_the_issue():
    stages = build_plan(CheckOptions(out=Path("/tmp/o"), work=Path("/tmp/w"), wheels=Path("/tmp/wheels")))
    assert [s.name for s in stages] == STAGES
    assert sum(s.reserve_s for s in stages) <= CheckOptions(out=Path("."), work=Path(".")).deadline_s
    commands = {s.name: " ".join(" ".join(c) for c in s.commands) for s in stages}
    assert "train.batch_size=512" in commands["train"] and "--config configs/coco.yaml" in commands["real_run"]
    assert "train.epochs=3" in commands["real_run"] and "pytest -m gpu" in commands["gpu_tests"]
    assert {s.name for s in stages if s.needs_cuda} == {"train_fp16", "train_fp32", "train_nchw", "train_compile"}
    rerun = build_plan(CheckOptions(out=Path("/tmp/o"), work=Path("/tmp/w"), wheels=Path("/tmp/wheels"), only={"loader"}))
    assert {s.name: s.skip_reason for s in rerun if not s.skip_reason} == {"install": "", "environment": "", "loader": ""}


def test_a_failing_command_is_recorded_with_its_last_lines_and_ends_its_stage(tmp_path):
    fail = "import sys; print('decoded 10 batches'); print('loader: error: shard x.tar is missing', file=sys.stderr); sys.exit(3)"
    outcome = run_commands([[sys.executable, "-c", fail], [sys.executable, "-c", "open('second-ran', 'w')"]], 60,
                           tmp_path / "stage.log", dict(os.environ), tmp_path)
    assert outcome.status == "failed" and outcome.reason == "exit 3: loader: error: shard x.tar is missing"
    assert "decoded 10 batches" in outcome.tail and [c.returncode for c in outcome.commands] == [3]
    assert not (tmp_path / "second-ran").exists()


def test_a_stage_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    child = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)")
    outcome = run_commands([[sys.executable, "-c", script]], 3, tmp_path / "stage.log", dict(os.environ), tmp_path)
    assert outcome.status == "timed out" and outcome.seconds < 30 and outcome.commands[0].returncode is None
    assert outcome.tail[-1] == "started"
    pid = int(child.read_text())
    # SIGKILL is delivered at once but a busy machine may not have run the exit yet: the grandchild can read
    # as running for a moment after its group was killed. Reaped by init it is gone; unreaped, a zombie (Z).
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state in ("gone", "Z")


def build_wheel(tmp_path: Path, name: str, version: str) -> Path:
    """A real wheel, built by pip from a one-module project."""
    src = tmp_path / f"src-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (src / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "{version}"\n'
                                        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob(f"{name}-{version}-*.whl"))


def test_wheel_parts_are_joined_and_installed_once_and_a_missing_part_is_named(tmp_path):
    wheel = build_wheel(tmp_path, "vaedist_probe", "1.2")
    parts = tmp_path / "parts"
    parts.mkdir()
    with tarfile.open(tmp_path / "wheels.tar", "w") as tar:  # as the README packs them: tar | split
        tar.add(wheel, arcname=f"./{wheel.name}")
    subprocess.run(["split", "-b", "2k", "-d", str(tmp_path / "wheels.tar"), str(parts / "part-")], check=True)
    assert len(list(parts.iterdir())) >= 3
    target, report = tmp_path / "site", tmp_path / "install.json"
    cmd = [sys.executable, "-m", "vaedist.bench.gpu_check.wheels", str(parts), "--target", str(target), "--json", str(report)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(report.read_text())["installed"] == [{"name": "vaedist-probe", "version": "1.2", "wheel": wheel.name}]
    probe = subprocess.run([sys.executable, "-c", "import vaedist_probe; print(vaedist_probe.VERSION)"],
                           env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert probe.stdout.strip() == "1.2"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith("already installed 1 wheels")

    (parts / "part-01").unlink()
    broken = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines() == [
        f"gpu_check install: error: wheel parts in '{parts}': part-01 is missing (found "
        f"{', '.join(sorted(p.name for p in parts.iterdir()))}); copy every part"]


def test_the_machines_own_packages_stay_unless_a_wheel_needs_a_newer_one():
    installed = {"numpy": "2.5.2", "protobuf": "4.25.0", "torch": "2.11.0"}
    folder = [wheels.Wheel(Path("numpy-2.5.5.whl"), "numpy", "2.5.5"),
              wheels.Wheel(Path("protobuf-7.36.2.whl"), "protobuf", "7.36.2"),
              wheels.Wheel(Path("wandb-0.31.0.whl"), "wandb", "0.31.0",
                           ["protobuf>=5.28", "numpy>=1.24", "pytest; extra == 'test'"]),
              wheels.Wheel(Path("wandb-0.30.0.whl"), "wandb", "0.30.0"),
              wheels.Wheel(Path("vaedist-0.1.0.whl"), "vaedist", "0.1.0")]
    choice = wheels.choose(folder, installed)
    assert [(w.name, w.version) for w in choice.install] == [("protobuf", "7.36.2"), ("wandb", "0.31.0")]
    assert choice.kept == [{"name": "numpy", "installed": "2.5.2", "wheel": "2.5.5"}]
    assert choice.replaced == [{"name": "protobuf", "installed": "4.25.0", "wheel": "7.36.2",
                                "because": "wandb needs protobuf>=5.28"}]
    assert {i["wheel"] for i in choice.ignored} == {"wandb-0.30.0.whl", "vaedist-0.1.0.whl"}


def test_the_environment_check_names_what_is_missing():
    assert {"torch", "nvidia-dali-cuda120", "wandb", "accelerate"} <= set(requirements())
    assert {"pytest", "webdataset"} <= set(CHECK_TOOLS)  # the tests' own needs (dev extra)
    found, missing = check_imports(["numpy", "surely-not-a-package"])
    assert set(found) == {"numpy"}
    assert missing == ["surely-not-a-package (import surely_not_a_package: ModuleNotFoundError: "
                       "No module named 'surely_not_a_package')"]


@pytest.mark.slow
def test_the_environment_stage_fails_in_one_line_when_a_dependency_does_not_import(tmp_path):
    (tmp_path / "webdataset").mkdir()
    (tmp_path / "webdataset" / "__init__.py").write_text("raise ImportError('webdataset is broken here')\n")
    proc = subprocess.run([sys.executable, "-m", "vaedist.bench.gpu_check.environment", "--json", str(tmp_path / "env.json")],
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check environment: error: missing: webdataset (import webdataset: ImportError: "
                           "webdataset is broken here). Put their wheels in the wheels folder")
    assert json.loads((tmp_path / "env.json").read_text())["missing"]  # the facts are written in any case


def test_test_outcomes_come_from_pytests_junit_report_or_its_log(tmp_path):
    (tmp_path / "test_three.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n\n"
        "@pytest.mark.skip(reason='needs a CUDA GPU')\ndef test_gpu():\n    pass\n")
    log = tmp_path / "pytest.log"
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
                        f"--junitxml={tmp_path / 'junit.xml'}", "test_three.py"],
                       cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    outcomes = {r["test"]: r["outcome"] for r in read_tests(tmp_path / "junit.xml", None)}
    assert outcomes == {"test_three.py::test_ok": "passed", "test_three.py::test_bad": "failed",
                        "test_three.py::test_gpu": "skipped (no CUDA)"}
    failed = next(r for r in read_tests(tmp_path / "junit.xml", None) if r["outcome"] == "failed")
    assert "assert 1 == 2" in failed["message"]
    from_log = {r["test"]: r["outcome"] for r in read_tests(tmp_path / "no-report.xml", log)}  # pytest stopped early
    assert from_log == {"test_three.py::test_ok": "passed", "test_three.py::test_bad": "failed",
                        "test_three.py::test_gpu": "skipped"}


def figures(**values: float) -> list[Figure]:
    return [Figure(key, key, value, "", "", "", "measured") for key, value in values.items()]


def test_goals_say_met_or_by_how_much_they_are_missed():
    measured = figures(**{"loader.dali_mixed": 4_000, "loader.cache": 250_000, "train.synthetic": 40_000,
                          "train.pipeline+cache": 38_000, "real_run.training": 7.0, "real_run.wall": 30.0})
    goals = judge_goals(measured, cuda=True, train_images=16_384, batch=512, precision="bf16")
    assert [g.verdict for g in goals] == ["not met: short by 20%", "met", "not met: short by 20%", "met",
                                          "not met: over by 14%"]
    # expected = 3 x 16,384 / 40,000 + 16,384 / 4,000 = 5.32 s; 7.0 / 5.32 = 1.31 against <= 1.15
    assert goals[4].value == "1.31" and "5.3 s expected for 16,384 images" in goals[4].detail
    assert judge_goals(measured, cuda=False, train_images=16_384, batch=512, precision="no")[0].verdict.startswith(
        "not measured (no CUDA")
