"""The check's report: OUT/gpu-report.json (everything), OUT/gpu-report.md (the same, to read), and
OUT/gpu-report.png (images/s per configuration). Rewritten after every stage, so that a check stopped half
way still leaves what it measured.

Figures come from the JSON files the stages write (`plan.Stage.result`); goals are the issue's, on one
H100/H200, judged only where CUDA was present: a CPU dry run reports them "not measured (no CUDA)".
"""
from __future__ import annotations

import json
import re
import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from vaedist.bench.gpu_check.plan import CheckOptions, Stage
from vaedist.bench.gpu_check.runner import StageOutcome
from vaedist.files import write_text_atomic

REPORT_JSON, REPORT_MD, REPORT_PNG = "gpu-report.json", "gpu-report.md", "gpu-report.png"
NO_CUDA = "skipped (no CUDA)"

LOADER_ROWS = [("seed", "seed pipeline (Pillow + torchvision)"), ("dali_cpu", "DALI cpu"),
               ("dali_mixed", "DALI mixed (GPU decode)"), ("reference", "reference backend (Pillow)"),
               ("cache", "decode-once cache")]
# {precision} is the precision the stage resolved ("auto" is bf16 on GPUs that have it, fp32 ("no") elsewhere)
TRAIN_ROWS = [("train", "synthetic", "{precision}, channels_last: ceiling"),
              ("train", "pipeline", "{precision}: pipeline (DALI every epoch)"),
              ("train", "pipeline+cache", "{precision}: pipeline + decode-once cache"),
              ("train_fp16", "synthetic", "fp16: ceiling"), ("train_fp32", "synthetic", "fp32: ceiling"),
              ("train_nchw", "synthetic", "{precision}, channels_last off: ceiling"),
              ("train_compile", "synthetic", "{precision} + torch.compile: ceiling")]
GOALS = {"dali_mixed": 5_000.0, "cache": 200_000.0, "ceiling": 50_000.0, "cached_share": 0.90, "run_ratio": 1.15}


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    stage: str
    command: str
    status: str  # "measured", "skipped (no CUDA)", "not measured: <why>"


@dataclass
class Goal:
    goal: str
    target: str
    value: str
    verdict: str  # "met", "not met: short by 12 %", "not measured ..."
    detail: str = ""


def _load(path: Path | None) -> dict | None:
    try:
        return json.loads(path.read_text()) if path is not None and path.suffix == ".json" else None
    except (OSError, ValueError):
        return None


def _why_missing(stage: Stage, outcome: StageOutcome | None, cuda: bool) -> str:
    if stage.needs_cuda and not cuda:
        return NO_CUDA
    if outcome is None:
        return "not measured: the check stopped before this stage"
    if outcome.status == "skipped":
        return f"not measured: stage skipped ({outcome.reason})"
    if outcome.status != "passed":
        return f"not measured: stage {outcome.status}"
    return "not measured: not in the stage's output"


def collect_figures(stages: list[Stage], outcomes: dict[str, StageOutcome], cuda: bool) -> list[Figure]:
    by_name = {s.name: s for s in stages}
    figures = []
    loader = by_name["loader"]
    data = _load(loader.result) if "loader" in outcomes else None
    rows = {r["key"]: r for r in (data or {}).get("rows", [])}
    command = shlex.join(loader.commands[0])
    for key, label in LOADER_ROWS:
        row = rows.get(key)
        if key == "cache" and row:
            label = row["name"]
        elif key == "cache":
            label += " (cuda)" if cuda else " (cpu)"
        if row:
            figures.append(Figure(f"loader.{key}", label, row["images_per_s"], "images/s", "loader", command, "measured"))
        else:
            status = NO_CUDA if key == "dali_mixed" and not cuda else _why_missing(loader, outcomes.get("loader"), cuda)
            figures.append(Figure(f"loader.{key}", label, None, "images/s", "loader", command, status))
    for stage_name, variant, label in TRAIN_ROWS:
        stage = by_name[stage_name]
        data = _load(stage.result) if stage_name in outcomes else None
        value = (data or {}).get("best", {}).get(variant)
        precision = {"no": "fp32", None: "auto"}.get((data or {}).get("precision"), (data or {}).get("precision"))
        label = label.format(precision=precision)
        figures.append(Figure(f"{stage_name}.{variant}", label, value, "images/s", stage_name,
                              shlex.join(stage.commands[0]),
                              "measured" if value is not None else _why_missing(stage, outcomes.get(stage_name), cuda)))
    run = by_name["real_run"]
    outcome = outcomes.get("real_run")
    back = _load(run.result) if outcome else None
    launch = outcome.commands[0] if outcome and outcome.commands else None
    wall = launch.seconds if launch and launch.returncode == 0 else None
    why = _why_missing(run, outcome, cuda)
    figures.append(Figure("real_run.wall", "training run, whole wall time (launch to exit)", wall, "s", "real_run",
                          shlex.join(run.commands[0]), "measured" if wall is not None else why))
    seconds = (back or {}).get("training_seconds")
    figures.append(Figure("real_run.training", "training run, time of the epochs (logged windows)", seconds, "s",
                          "real_run", shlex.join(run.commands[0]), "measured" if seconds else why))
    return figures


def _value(figures: list[Figure], key: str) -> float | None:
    return next((f.value for f in figures if f.key == key), None)


def judge(value: float | None, target: float, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    if at_most:
        return "met" if value <= target else f"not met: over by {value / target - 1:.0%}"
    return "met" if value >= target else f"not met: short by {1 - value / target:.0%}"


def judge_goals(figures: list[Figure], cuda: bool, train_images: int | None, batch: int, precision: str | None) -> list[Goal]:
    mixed, cache = _value(figures, "loader.dali_mixed"), _value(figures, "loader.cache")
    ceiling, cached = _value(figures, "train.synthetic"), _value(figures, "train.pipeline+cache")
    training, wall = _value(figures, "real_run.training"), _value(figures, "real_run.wall")
    share = cached / ceiling if cached and ceiling else None
    expected = None
    if train_images and ceiling and mixed:
        expected = 3 * train_images / ceiling + train_images / mixed
    ratio = training / expected if training and expected else None

    def fmt(v, pattern="{:,.0f} images/s"):
        return pattern.format(v) if v is not None else "—"

    notes = ([f"batch {batch}"] if batch != 512 else []) + ([f"precision {precision}"] if precision not in (None, "bf16") else [])
    batch_note = f" (this check: {', '.join(notes)})" if notes else ""
    goals = [
        Goal("DALI mixed decoding, full-size COCO-like JPEGs", "≥ 5,000 images/s", fmt(mixed), judge(mixed, GOALS["dali_mixed"])),
        Goal("decode-once cache on the GPU", "≥ 200,000 images/s", fmt(cache), judge(cache, GOALS["cache"])),
        Goal(f"training ceiling, seed model, bf16, batch 512{batch_note}", "≥ 50,000 images/s", fmt(ceiling),
             judge(ceiling, GOALS["ceiling"])),
        Goal("cached pipeline / ceiling", "≥ 0.90", fmt(share, "{:.2f}"), judge(share, GOALS["cached_share"])),
        Goal("3-epoch run: time of the epochs / (3 × dataset / ceiling + dataset / DALI mixed)", "≤ 1.15",
             fmt(ratio, "{:.2f}"), judge(ratio, GOALS["run_ratio"], at_most=True),
             detail=(f"epochs {training:.1f} s against {expected:.1f} s expected for {train_images:,} images; whole run "
                     f"{wall:.1f} s wall (start-up, evaluations, checkpoints and W&B included)"
                     if training and expected and wall else "")),
    ]
    if not cuda:
        for goal in goals:
            goal.verdict = "not measured (no CUDA: the goals are for one H100/H200; CPU figures are not judged)"
    return goals


TEST_LINE = re.compile(r"^(\S+\.py::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")


def read_tests(xml_path: Path | None, log: Path | None) -> list[dict]:
    """Each test's outcome from pytest's junit XML; from the `-v` lines of the log if pytest was stopped."""
    results = []
    if xml_path is not None and xml_path.is_file():
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError:
            root = None
        for case in (root.iter("testcase") if root is not None else []):
            module = case.get("classname", "").replace(".", "/")
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    message = (child.get("message") or (child.text or "")).strip().splitlines()
                    message = message[0][:300] if message else ""
                    break
            if outcome == "skipped" and "CUDA" in message:
                outcome = NO_CUDA
            results.append({"test": f"{module}.py::{case.get('name')}", "outcome": outcome,
                            "seconds": round(float(case.get("time", 0) or 0), 2), "message": message})
        if results:
            return results
    if log is not None and log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            match = TEST_LINE.match(line)
            if match:
                results.append({"test": match.group(1), "outcome": match.group(2).lower(), "seconds": None,
                                "message": "from the log (pytest was stopped before its report)"})
    return results


def write_png(figures: list[Figure], path: Path, title: str) -> str | None:
    """Horizontal bars of images/s per configuration: the loader above, the training step below (log scale,
    the goal as a dashed line; configurations not measured are named with why). Returns an error or None."""
    try:
        import matplotlib  # only here: the rest of the report needs no plotting library

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # matplotlib: optional, only the figure needs it
    except Exception as err:  # the report still stands without its picture
        return f"no plot: matplotlib does not import ({err})"
    groups = [("data loader, images/s", [f for f in figures if f.stage == "loader"], GOALS["dali_mixed"],
               "goal: DALI mixed 5,000"),
              ("training step, images/s", [f for f in figures if f.stage.split("_")[0] == "train"], GOALS["ceiling"],
               "goal: ceiling 50,000")]
    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5))
    for ax, (name, rows, goal, goal_label) in zip(axes, groups):
        rows = rows[::-1]  # first row on top
        values = [f.value or 0.0 for f in rows]
        measured = [v for v in values if v > 0]
        low = min(measured + [goal]) / 4
        ax.set_xscale("log")
        ax.set_xlim(low, max(measured + [goal]) * 15)
        bars = ax.barh([f.label for f in rows], [v if v > 0 else low for v in values], color="#4c72b0")
        for bar, f in zip(bars, rows):
            measured_here = bool(f.value)
            text = f"{f.value:,.0f}" if measured_here else f.status.replace("not measured: ", "")[:60]
            ax.text((bar.get_width() if measured_here else low) * 1.08, bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=8, color="black" if measured_here else "#777777")
        ax.axvline(goal, color="#c44e52", linestyle="--", linewidth=1, label=goal_label)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.3, right=0.97, top=0.91, bottom=0.06, hspace=0.3)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return None


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_md(report: dict) -> str:
    env = report["environment"]
    lines = [f"# vaedist GPU check — {env.get('device', 'unknown device')} — {report['date']}", ""]
    if report["kind"] != "gpu":
        lines += ["**CPU dry run: no CUDA device. Every figure below is a CPU figure of tiny or default sizes, "
                  "not a GPU measurement; GPU rows are marked skipped.**", ""]
    lines += [f"{report['summary']}", "",
              "| | |", "|---|---|",
              f"| device | {_cell(env.get('device', '?'))}"
              + (f", {env.get('device_memory_gib')} GiB, {env.get('multiprocessors')} SMs, compute capability "
                 f"{env.get('capability')}, driver {env.get('driver', '?')}" if env.get("cuda") else "") + " |",
              f"| software | Python {env.get('python', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}, "
              f"cuDNN {env.get('cudnn')}), DALI {env.get('dali')}, "
              + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()
                          if k in ("accelerate", "wandb", "webdataset", "torchvision", "torchmetrics")) + " |",
              f"| data | {_cell(report.get('data', '—'))} |",
              f"| the check | `{_cell(report['command'])}` |",
              f"| every command ran with | `{_cell(report['command_env'])}`, in {report['repo']} |", ""]
    lines += ["## Goals", "", "| goal | target | measured | verdict |", "|---|---|---|---|"]
    for g in report["goals"]:
        lines.append(f"| {_cell(g['goal'])} | {g['target']} | {g['value']} | {_cell(g['verdict'])} |")
    details = [g["detail"] for g in report["goals"] if g["detail"]]
    lines += [""] + [f"- {d}" for d in details] + ([""] if details else [])
    lines += ["## Figures", "", "Each figure's exact command is its stage's (below, and per figure in gpu-report.json).", "",
              "| figure | value | status | stage |", "|---|---:|---|---|"]
    for f in report["figures"]:
        value = "—" if f["value"] is None else (f"{f['value']:,.0f} {f['unit']}" if f["unit"] == "images/s"
                                                else f"{f['value']:,.1f} {f['unit']}")
        lines.append(f"| {_cell(f['label'])} | {value} | {_cell(f['status'])} | {f['stage']} |")
    run = report.get("run")
    if run:
        w = run.get("wandb", {})
        final = ", ".join(f"{k} {v:.4g}" for k, v in run.get("final_metrics", {}).items() if isinstance(v, (int, float)))
        lines += ["", f"Training run read back: {run['steps']} steps, {run['val_rows']} evaluations, "
                  f"{len(run['checkpoints'])} checkpoints kept, final weights {run.get('final_weights', 'missing')} "
                  f"parameters; W&B offline run {w.get('history_rows', 0)} history rows, {w.get('eval_rows', 0)} "
                  f"evaluations, {w.get('image_files', 0)} images; final {final or '—'}"
                  + (f". Problems: {'; '.join(run['problems'])}" if run.get("problems") else "")]
    lines += ["", "![images/s per configuration](gpu-report.png)", "",
              "## Stages", "", "| # | stage | status | seconds | CPU s | timeout | what |", "|---|---|---|---:|---:|---:|---|"]
    for i, s in enumerate(report["stages"], 1):
        status = s["status"] + (f" ({s['reason']})" if s["reason"] and s["status"] != "passed" else "")
        lines.append(f"| {i} | {s['name']} | {_cell(status)} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | "
                     f"{s['timeout_s']:.0f} | {_cell(s['title'])} |")
    lines += ["", f"Total {report['total_s']:.0f} s of the {report['deadline_s']:.0f} s deadline.", "",
              "## GPU tests (`pytest -m gpu`)", ""]
    if report["tests"]:
        lines += ["| test | outcome | seconds |", "|---|---|---:|"]
        for t in report["tests"]:
            outcome = t["outcome"] + (f": {t['message']}" if t["outcome"] in ("failed", "error") and t["message"] else "")
            lines.append(f"| `{t['test']}` | {_cell(outcome)} | {t['seconds'] if t['seconds'] is not None else '—'} |")
    else:
        lines.append("No test results (see the gpu_tests stage).")
    failed = [s for s in report["stages"] if s["status"] in ("failed", "timed out")]
    if failed:
        lines += ["", "## Failures (last lines of each)", ""]
        for s in failed:
            lines += [f"### {s['name']}: {s['status']}", "", *[f"- `{c['command']}` → "
                      f"{'exit ' + str(c['returncode']) if c['returncode'] is not None else 'stopped'} in {c['seconds']:.1f} s"
                      for c in s["commands"]], "", "```text", *s["tail"], "```", ""]
    lines += ["", "## Commands, stage by stage", ""]
    for s in report["stages"]:
        lines += [f"- **{s['name']}**: " + "; ".join(f"`{c}`" for c in s["planned_commands"])]
    return "\n".join(lines) + "\n"


def build_report(opts: CheckOptions, stages: list[Stage], outcomes: dict[str, StageOutcome], environment: dict,
                 command: str, command_env: str, started: float, finished: bool) -> dict:
    cuda = bool(environment.get("cuda"))
    figures = collect_figures(stages, outcomes, cuda)
    data = _load(next(s.result for s in stages if s.name == "data")) or {}
    counts = data.get("counts", {})
    train_images = counts.get("train2017", 0) + counts.get("test2017", 0) or None
    train = _load(next(s.result for s in stages if s.name == "train")) if "train" in outcomes else None
    goals = judge_goals(figures, cuda, train_images, opts.batch, (train or {}).get("precision"))
    tests_stage = next(s for s in stages if s.name == "gpu_tests")
    tests = read_tests(tests_stage.result, opts.work / "logs" / "gpu_tests.log") if "gpu_tests" in outcomes else []
    stage_rows = []
    for s in stages:
        o = outcomes.get(s.name)
        stage_rows.append({
            "name": s.name, "title": s.title, "status": o.status if o else "not run (the check stopped first)",
            "reason": o.reason if o else "", "seconds": round(o.seconds, 2) if o else 0.0,
            "cpu_seconds": round(o.cpu_seconds, 2) if o else 0.0,
            "timeout_s": round(o.timeout_s, 1) if o else 0.0, "budget_s": s.budget_s,
            "commands": [asdict(c) for c in o.commands] if o else [], "tail": o.tail if o else [],
            "planned_commands": [shlex.join(c) for c in s.commands],
        })
    done = [r for r in stage_rows if r["status"] not in ("skipped",) and not r["status"].startswith("not run")]
    bad = [r["name"] for r in stage_rows if r["status"] in ("failed", "timed out")]
    summary = (f"{sum(r['status'] == 'passed' for r in stage_rows)} of {len(stage_rows)} stages passed"
               + (f"; failed: {', '.join(bad)}" if bad else "")
               + f"; {sum(r['status'] == 'skipped' for r in stage_rows)} skipped"
               + ("" if finished else "; the check is still running or was stopped"))
    return {
        "schema": 1, "kind": "gpu" if cuda else "cpu-dry-run", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "summary": summary, "finished": finished, "command": command, "command_env": command_env,
        "repo": str(Path(__file__).resolve().parents[3]), "deadline_s": opts.deadline_s,
        "total_s": round(time.monotonic() - started, 1), "environment": environment,
        "data": (f"{train_images:,} training + {counts.get('val2017', 0):,} validation 640x480 JPEG photographs, "
                 f"{data.get('mean_kb')} KB on average (vaedist.sample.build_full_size_jpegs), sharded with "
                 f"python -m vaedist.shard coco" if train_images else "—"),
        "goals": [asdict(g) for g in goals], "figures": [asdict(f) for f in figures], "tests": tests,
        "run": _load(next(s.result for s in stages if s.name == "real_run")) if "real_run" in outcomes else None,
        "stages": stage_rows, "ran": len(done),
    }


def write_report(report: dict, out: Path, with_png: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if with_png:
        env = report["environment"]
        title = (f"vaedist GPU check, {env.get('device', '?')}, {report['date']}" if report["kind"] == "gpu"
                 else f"CPU dry run ({env.get('device', '?')}), {report['date']}: not GPU figures")
        report["plot_error"] = write_png([Figure(**f) for f in report["figures"]], out / REPORT_PNG, title)
    write_text_atomic(out / REPORT_JSON, json.dumps(report, indent=1))
    write_text_atomic(out / REPORT_MD, render_md(report))
