"""Run a sweep's points N at a time, each through vaedist.sweep.supervise, with a live table; resume a killed sweep.

    code = run_sweep(SweepOptions(sweep_file="configs/sweep.yaml", parallel=2))

- Where: one GPU per point (CUDA_VISIBLE_DEVICES) where GPUs exist, else CPU processes, each pinned to its own
  share of the cores with as many torch threads (N processes on C cores get C/N each, not C each).
- Resume: SWEEP_DIR/sweep.json says what ran. Started again, a sweep skips finished points, resumes the others
  from their checkpoints (each point's run dir resumes like any vaedist run), and never starts a point while a
  process of an earlier attempt is still alive: it finds such processes by the point's run dir in their
  environment, which every descendant inherits, and waits for them.
- One runner per sweep directory (SWEEP_DIR/sweep.lock).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from vaedist import compare, sweepenv
from vaedist.config import load_config
from vaedist.errors import ConfigError, UserError
from vaedist.files import write_text_atomic
from vaedist.goals import best as best_of
from vaedist.rundir import RunDir
from vaedist.sweep import supervise
from vaedist.sweep.spec import SweepSpec, agent_command, load_spec, trainer_overrides, write_args_json_file
from vaedist.sweep.state import (DONE, FAILED, INTERRUPTED, LOCK_FILE, LOG_FILE, LOGS_DIR, PENDING, REPORT_FILE, RUNNING,
                                 STATUS_FILE, PointState, SweepState, now, read_state, write_state)


@dataclass
class SweepOptions:
    sweep_file: str | Path
    out: str | Path | None = None  # default: the run.dir the file passes to every point, else sweeps/<name>
    parallel: int | None = None  # default: one per GPU, 1 without GPUs
    gpus: list[str] | None = None  # default: CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists
    cpu: bool = False  # CPU processes even where GPUs exist
    count: int | None = None  # grid: at most the first K points; random: K points (required the first time)
    seed: int | None = None  # random: the points' seed (default 0; fixed by the first start)
    dry_run: bool = False
    retry_failed: bool = False
    stop_timeout: float = 120.0  # seconds a stopped point has to save its checkpoint before SIGKILL
    refresh: float = 2.0  # seconds between table updates
    table_every: float = 60.0  # seconds between tables in sweep.log (and on stdout when it is not a terminal)


# --- devices -----------------------------------------------------------------------------------------


@dataclass
class Slot:
    label: str  # "gpu 3" / "cpu 0-7"
    env: dict[str, str]
    cpus: list[int] | None = None  # cores the point is pinned to (CPU slots)
    point: PointState | None = None
    process: subprocess.Popen | None = None


def detect_gpus() -> list[str]:
    """GPU ids a point may be given: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [g.strip() for g in visible.split(",") if g.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def make_slots(parallel: int | None, gpus: list[str] | None, cpu: bool) -> list[Slot]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = [] if cpu else (gpus if gpus is not None else detect_gpus())
    n = parallel or (len(gpus) if gpus else 1)
    if n < 1:
        raise UserError("--parallel must be at least 1")
    threads = str(max(1, len(cores) // n))
    slots = []
    for i in range(n):
        if gpus:
            gpu = gpus[i % len(gpus)]  # --parallel above the GPU count shares GPUs round-robin
            slots.append(Slot(f"gpu {gpu}", {"CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}))
            continue
        share = len(cores) // n
        mine = cores[i * share:(i + 1) * share] if share else None  # more points than cores: no pinning
        label = f"cpu {mine[0]}-{mine[-1]}" if mine else "cpu"
        # CUDA_VISIBLE_DEVICES="" also keeps a --cpu point off the GPUs of a GPU machine.
        slots.append(Slot(label, {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}, mine))
    return slots


# --- what a run dir says -----------------------------------------------------------------------------


def trained(run_dir: Path) -> bool:
    """True when the trainer finished: its last act is writing final/ (weights, then config)."""
    final = RunDir(run_dir).final_files
    return final.weights.is_file() and final.config.is_file()


class MetricsTail:
    """Reads a run's metrics.jsonl incrementally: last step/epoch, last and best value of the sweep metric.

    The trainer rewrites the file (a new inode) when it resumes, dropping rows after the checkpoint; the
    tail then starts again from the top. A torn last line waits until its end arrives.
    """

    def __init__(self, path: Path, metric: str | None, goal: str):
        self.path, self.metric, self.goal = path, metric, goal
        self._reset()

    def _reset(self) -> None:
        self.offset, self.inode, self.partial = 0, None, b""
        self.step = self.epoch = self.last = self.best = self.best_step = None

    def update(self) -> bool:
        try:
            stat = self.path.stat()
        except OSError:
            return False
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self._reset()
            self.inode = stat.st_ino
        if stat.st_size == self.offset:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = self.partial + fh.read()
            self.offset = fh.tell()
        *lines, self.partial = data.split(b"\n")
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            self.step, self.epoch = row.get("step", self.step), row.get("epoch", self.epoch)
            value = row.get(self.metric) if self.metric else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
                self.last = float(value)
                if self.best is None or best_of([self.best, self.last], self.goal) != self.best:
                    self.best, self.best_step = self.last, row.get("step")
        return True

    def record(self, point: PointState) -> None:
        point.step, point.epoch = self.step, self.epoch
        point.metric = {"final": self.last, "best": self.best, "best_step": self.best_step} if self.last is not None else {}


def live_processes(run_dir: Path) -> list[int]:
    """Processes (of this user) started for the point with this run dir: they carry it in their environment."""
    marker = f"{sweepenv.RUN_DIR}={run_dir.resolve()}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat", "rb") as st:
                        if st.read().rsplit(b")", 1)[1].split()[0] != b"Z":  # zombies are gone already
                            found.append(int(entry))
        except OSError:
            continue
    return found


# --- the sweep's record ------------------------------------------------------------------------------


def default_out(spec: SweepSpec) -> Path:
    """The run.dir every point is given (W&B's agent puts its runs below it too), else sweeps/<name>."""
    run_dir = spec.parameters.get("run.dir")
    if run_dir is not None and run_dir.distribution == "constant":
        return Path(str(run_dir.config["value"]))
    return Path("sweeps") / spec.name


def _new_sweep_id() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _same(a: Any, b: Any) -> bool:
    """Parameter values equal after a JSON round trip (sweep.json stores them as JSON)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def prepare_state(spec: SweepSpec, sweep_dir: Path, opts: SweepOptions) -> tuple[SweepState, int]:
    """The record of this sweep (the existing sweep.json checked against the file, or a new one, with points
    appended up to --count) and how many of its points this invocation runs (the first K)."""
    state = read_state(sweep_dir)
    if state is None:
        state = SweepState(sweep_id=_new_sweep_id(), name=spec.name, sweep_file=str(spec.path.resolve()), method=spec.method,
                           seed=opts.seed if opts.seed is not None else 0, metric=spec.metric, goal=spec.goal,
                           swept=spec.swept, command=spec.command, program=spec.program, cwd=os.getcwd())
    else:
        where = f"{sweep_dir / 'sweep.json'}"
        if state.method != spec.method or state.command != spec.command or state.program != spec.program:
            raise UserError(f"{spec.path}: its method, program or command differ from the sweep recorded in {where}; "
                            "restore the file, or give the changed sweep a new --out")
        if opts.seed is not None and opts.seed != state.seed:
            raise UserError(f"{where} was drawn with --seed {state.seed}: drop --seed {opts.seed} to resume it, or use a new --out")
        state.metric, state.goal, state.swept = spec.metric, spec.goal, spec.swept
    count = opts.count
    if spec.method == "random" and count is None and state.points:
        count = len(state.points)  # resuming: the points drawn so far
    wanted = spec.points(count, state.seed)
    for point, values in zip(state.points, wanted):
        if not _same(point.parameters, values):
            changed = sorted(k for k in set(values) | set(point.parameters) if not _same(values.get(k), point.parameters.get(k)))
            raise UserError(f"{spec.path} no longer gives {point.name} the parameters recorded in {sweep_dir / 'sweep.json'} "
                            f"({', '.join(changed)}): restore the file, or give the changed sweep a new --out")
    for index in range(len(state.points), len(wanted)):
        state.points.append(PointState(index=index, name=f"point-{index:03d}", run_id=f"{state.sweep_id}-{index:03d}",
                                       parameters=wanted[index]))
    return state, len(wanted)


def check_point_configs(spec: SweepSpec, state: SweepState, points: list[PointState]) -> None:
    """Load the config of every point that runs vaedist's trainer, before anything starts (one line naming
    the point and the key when one is wrong)."""
    for point in points:
        argv = agent_command(spec, point.parameters, sweep_id=state.sweep_id, run_id=point.run_id)
        parsed = trainer_overrides(argv)
        if parsed is None:
            continue
        config, overrides, options = parsed
        if options:
            raise ConfigError(f"{spec.path}: the command passes {options[0]} to vaedist's trainer, which takes key=value "
                              "overrides: use ${args_no_hyphens} in command (W&B's default command uses ${args}, i.e. --key=value)")
        cwd = Path(state.cwd)
        try:
            load_config(cwd / config if config else None, overrides)
        except ConfigError as err:
            raise ConfigError(f"{point.name} ({' '.join(f'{k}={v}' for k, v in point.parameters.items() if k in state.swept)}): {err}") from None


# --- the table -----------------------------------------------------------------------------------------


def _short_names(keys: list[str]) -> dict[str, str]:
    """Shortest dotted suffix that tells the keys apart: train.encoder.lr -> encoder.lr, train.beta -> beta."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(1 for other in keys if other == suffix or other.endswith("." + suffix)) == 1:
                names[key] = suffix
                break
        else:
            names[key] = key
    return names


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _elapsed(point: PointState, running_since: dict[int, float]) -> str:
    """How long the point has run (its current attempt), or took (its last attempt)."""
    if point.index in running_since:
        seconds = time.time() - running_since[point.index]
    elif point.started and point.ended:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        seconds = (datetime.strptime(point.ended, fmt) - datetime.strptime(point.started, fmt)).total_seconds()
    else:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render_table(state: SweepState, points: list[PointState], running_since: dict[int, float], sweep_dir: Path) -> str:
    counts = {s: sum(1 for p in points if p.status == s) for s in (RUNNING, DONE, FAILED, INTERRUPTED, PENDING)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    metric = state.metric or "metric"
    short = _short_names(state.swept)
    header = ["point", "status", "device", *short.values(), "epoch", "step", metric, "best", "time"]
    rows = []
    for p in points:
        device = p.device if p.status == RUNNING else ""
        status = p.status if p.exit_code in (None, 0) or p.status != FAILED else f"failed ({p.exit_code})"
        rows.append([p.name, status, device or "", *(_cell(p.parameters.get(k)) for k in short),
                     _cell(p.epoch), _cell(p.step), _cell(p.metric.get("final")), _cell(p.metric.get("best")),
                     _elapsed(p, running_since)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"sweep {state.name} ({state.method}, {len(points)} points, {sweep_dir}) - {summary}   "
             f"[{time.strftime('%H:%M:%S')}]",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


class Output:
    """The table and events: stdout (redrawn in place on a terminal), sweep.log and status.txt."""

    def __init__(self, sweep_dir: Path, stream: IO[str], table_every: float):
        self.sweep_dir, self.stream, self.table_every = sweep_dir, stream, table_every
        self.tty = stream.isatty()
        self.log = open(sweep_dir / LOG_FILE, "a", encoding="utf-8")
        self.last_logged_table = 0.0
        self.events: list[str] = []

    def event(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        self.log.write(line + "\n")
        self.log.flush()
        self.events = (self.events + [line])[-8:]
        if not self.tty:
            print(line, file=self.stream, flush=True)

    def table(self, text: str, force: bool = False) -> None:
        write_text_atomic(self.sweep_dir / STATUS_FILE, text)
        due = force or time.monotonic() - self.last_logged_table >= self.table_every
        if due:
            self.last_logged_table = time.monotonic()
            self.log.write(text)
            self.log.flush()
        if self.tty:  # redraw in place: home, clear to the end, table, the latest events
            self.stream.write("\x1b[H\x1b[J" + text + "\n" + "\n".join(self.events) + "\n")
            self.stream.flush()
        elif due:
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        self.log.close()


# --- the runner -------------------------------------------------------------------------------------------


@dataclass
class Runner:
    spec: SweepSpec
    state: SweepState
    sweep_dir: Path
    slots: list[Slot]
    opts: SweepOptions
    output: Output
    tails: dict[int, MetricsTail] = field(default_factory=dict)
    running_since: dict[int, float] = field(default_factory=dict)
    selected: int = 0  # this invocation runs the first `selected` points
    stop_requests: int = 0
    stop_signal: int = 0
    blocked_since: dict[int, float] = field(default_factory=dict)  # points waiting for an earlier attempt's processes

    @property
    def points(self) -> list[PointState]:
        return self.state.points[: self.selected]

    def run_dir(self, point: PointState) -> Path:
        return self.sweep_dir / point.run_dir

    def tail(self, point: PointState) -> MetricsTail:
        if point.index not in self.tails:
            self.tails[point.index] = MetricsTail(RunDir(self.run_dir(point)).metrics, self.state.metric, self.state.goal)
        return self.tails[point.index]

    def save(self) -> None:
        write_state(self.sweep_dir, self.state)

    # -- start-up: what the previous sweep process left --

    def reconcile(self) -> None:
        """Points a killed sweep left 'running' become done (their final weights exist) or interrupted; any
        process of theirs still alive is waited for before the point starts again (see `startable`)."""
        for point in self.points:
            if point.status == RUNNING:
                point.status = DONE if trained(self.run_dir(point)) else INTERRUPTED
                self.tail(point).update()
                self.tail(point).record(point)
                self.output.event(f"{point.name}: {'finished' if point.status == DONE else 'interrupted'} "
                                  "while no sweep process watched it")
        self.save()

    def startable(self, point: PointState) -> bool:
        """False while a process of an earlier attempt of this point is alive (a sweep killed with kill -9
        leaves its points a --stop-timeout to save a checkpoint): the same point never runs twice at once."""
        if point.index in self.blocked_since and time.monotonic() - self.blocked_since[point.index] < 2:
            return False  # looked less than 2 s ago
        pids = live_processes(self.run_dir(point))
        if pids:
            if point.index not in self.blocked_since:
                self.output.event(f"{point.name}: processes of an earlier attempt are still alive "
                                  f"(pid {', '.join(map(str, pids[:4]))}); it starts when they have ended")
            self.blocked_since[point.index] = time.monotonic()
            return False
        self.blocked_since.pop(point.index, None)
        return True

    def todo(self) -> list[PointState]:
        again = (PENDING, INTERRUPTED, FAILED) if self.opts.retry_failed else (PENDING, INTERRUPTED)
        return [p for p in self.points if p.status in again]

    # -- one point --

    def environment(self, slot: Slot, point: PointState) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in sweepenv.NOT_INHERITED}
        env.update(slot.env)
        env.update(sweepenv.point_environment(self.state.sweep_id, self.state.name, point.run_id, self.run_dir(point)))
        # The agent's ${interpreter} is the word `python` and the command may start `accelerate`: find this
        # interpreter's ones first, also when the sweep was started as venv/bin/python without activating.
        bin_dir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join([bin_dir] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir])
        # The trainer's progress bars go to the point's log file: one line every 30 s instead of a carriage-return
        # update per batch (tqdm reads TQDM_* defaults from the environment).
        env.setdefault("TQDM_MININTERVAL", "30")
        return env

    def start(self, slot: Slot, point: PointState) -> None:
        argv = agent_command(self.spec, point.parameters, sweep_id=self.state.sweep_id, run_id=point.run_id)
        write_args_json_file(self.spec, point.parameters, self.state.sweep_id, point.run_id)
        point.attempts += 1
        resuming = self.run_dir(point).is_dir()
        point.status, point.exit_code, point.device, point.command = RUNNING, None, slot.label, argv
        point.started, point.ended = now(), None
        self.save()  # before the process exists: a kill from here on leaves the point 'running' (reconcile)
        log_path = self.sweep_dir / point.log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        supervisor = [sys.executable, "-I", supervise.__file__, "--parent", str(os.getpid()), "--log", str(log_path),
                      "--attempt", str(point.attempts), "--stop-timeout", str(self.opts.stop_timeout)]
        if slot.cpus:
            supervisor += ["--cpus", ",".join(map(str, slot.cpus))]
        with open(log_path, "ab") as log:  # the supervisor's own errors, if any, land in the point's log
            slot.process = subprocess.Popen(supervisor + ["--"] + argv, cwd=self.state.cwd, env=self.environment(slot, point),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        slot.point = point
        self.running_since[point.index] = time.time()
        self.output.event(f"{point.name}: started on {slot.label} (attempt {point.attempts}{', resuming its run dir' if resuming else ''}): "
                          + " ".join(argv))

    def finished(self, slot: Slot, code: int) -> None:
        point = slot.point
        self.tail(point).update()
        self.tail(point).record(point)
        point.exit_code, point.ended = code, now()
        if code == 0:
            point.status = DONE
        elif self.stop_requests:
            point.status = INTERRUPTED
        else:
            point.status = FAILED
        self.running_since.pop(point.index, None)
        best = point.metric.get("best")
        self.output.event(f"{point.name}: {point.status} (exit {code})"
                          + (f", {self.state.metric} final {point.metric['final']:.4g} best {best:.4g}" if best is not None else "")
                          + ("" if point.status == DONE else f"; see {self.sweep_dir / point.log}"))
        slot.point = slot.process = None
        self.save()

    # -- the loop --

    def request_stop(self, signum: int, _frame) -> None:
        self.stop_requests += 1
        self.stop_signal = self.stop_signal or signum
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)  # the supervisor stops its point (SIGKILL at the 2nd)

    def next_point(self, queue: list[PointState]) -> PointState | None:
        for point in list(queue):
            if not self.startable(point):
                continue
            queue.remove(point)
            if point.status == INTERRUPTED and trained(self.run_dir(point)):  # finished during its stop timeout
                point.status = DONE
                self.output.event(f"{point.name}: done (its earlier attempt finished)")
                self.save()
                continue
            return point
        return None

    def loop(self) -> None:
        queue = self.todo()
        last_table, last_save = 0.0, time.monotonic()
        self.output.event(f"{len(self.points)} points: {sum(p.status == DONE for p in self.points)} done, "
                          f"{len(queue)} to run on {len(self.slots)} slot(s) ({', '.join(s.label for s in self.slots)})")
        while True:
            for slot in self.slots:
                if slot.process is not None and (code := slot.process.poll()) is not None:
                    self.finished(slot, code)
            if not self.stop_requests:
                for slot in self.slots:
                    if slot.process is None and (point := self.next_point(queue)) is not None:
                        self.start(slot, point)
            busy = [s for s in self.slots if s.process is not None]
            changed = False
            for slot in busy:
                if self.tail(slot.point).update():
                    self.tail(slot.point).record(slot.point)
                    changed = True
            if changed and time.monotonic() - last_save > 10:
                self.save()
                last_save = time.monotonic()
            if time.monotonic() - last_table >= self.opts.refresh:
                self.output.table(render_table(self.state, self.points, self.running_since, self.sweep_dir))
                last_table = time.monotonic()
            if not busy and (not queue or self.stop_requests):
                break
            time.sleep(0.25)
        self.output.table(render_table(self.state, self.points, self.running_since, self.sweep_dir), force=True)


def _lock(sweep_dir: Path) -> IO:
    handle = open(sweep_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise UserError(f"another python -m vaedist.sweep runs this sweep ({sweep_dir}, pid {holder}); "
                        "wait for it or stop it (Ctrl-C) first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def write_report(state: SweepState, sweep_dir: Path) -> Path | None:
    """The comparison page of every point that has a run dir (vaedist.compare), SWEEP_DIR/report.html."""
    if not any((sweep_dir / p.run_dir).is_dir() for p in state.points):
        return None
    out = compare.compare([sweep_dir], sweep_dir / REPORT_FILE, title=f"vaedist sweep {state.name}")
    state.report = REPORT_FILE
    write_state(sweep_dir, state)
    return out


def dry_run(spec: SweepSpec, state: SweepState, points: list[PointState], sweep_dir: Path, slots: list[Slot], stream: IO[str]) -> None:
    print(f"sweep {state.name}: {spec.method}, {len(points)} points (seed {state.seed}), into {sweep_dir}, "
          f"{len(slots)} at a time on {', '.join(s.label for s in slots)}", file=stream)
    for point in points:
        argv = agent_command(spec, point.parameters, sweep_id=state.sweep_id, run_id=point.run_id)
        print(f"{point.name} [{point.status}]  " + " ".join(argv), file=stream)


def run_sweep(opts: SweepOptions, stream: IO[str] | None = None) -> int:
    """The whole sweep; returns the exit code: 0 when every point is done, 1 when one failed, 128+signal when
    stopped by SIGINT/SIGTERM (each running point then saved a checkpoint; run the same command to resume)."""
    stream = stream or sys.stdout
    spec = load_spec(opts.sweep_file)
    for warning in spec.warnings:
        print(f"vaedist.sweep: warning: {warning}", file=sys.stderr)
    sweep_dir = Path(opts.out if opts.out is not None else default_out(spec)).resolve()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--out '{sweep_dir}' is a file; give a folder for the sweep")
    if opts.count is not None and opts.count < 1:
        raise UserError("--count must be at least 1")
    state, selected = prepare_state(spec, sweep_dir, opts)
    slots = make_slots(opts.parallel, opts.gpus, opts.cpu)
    if opts.dry_run:
        dry_run(spec, state, state.points[:selected], sweep_dir, slots, stream)
        return 0
    check_point_configs(spec, state, [p for p in state.points[:selected] if p.status != DONE])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / LOGS_DIR).mkdir(exist_ok=True)
    lock = _lock(sweep_dir)
    if Path(state.cwd) != Path.cwd():
        print(f"vaedist.sweep: points run in {state.cwd}, where this sweep was first started", file=stream)
    output = Output(sweep_dir, stream, opts.table_every)
    runner = Runner(spec, state, sweep_dir, slots, opts, output, selected=selected)
    previous = {sig: signal.signal(sig, runner.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.save()
        runner.reconcile()
        runner.loop()
        if runner.stop_requests:
            output.event(f"stopped by {signal.Signals(runner.stop_signal).name}: run the same command to resume")
            return 128 + runner.stop_signal
        report = write_report(state, sweep_dir)
        if report is not None:
            output.event(f"report: {report} ({report.stat().st_size / 1e6:.1f} MB)")
        failed = [p.name for p in runner.points if p.status == FAILED]
        if failed:
            output.event(f"{len(failed)} point(s) failed: {', '.join(failed)} (logs in {sweep_dir / LOGS_DIR}; "
                         "--retry-failed runs them again)")
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        output.close()
        lock.close()
