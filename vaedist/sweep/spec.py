"""A W&B sweep file, read the way W&B reads it, and the command line W&B's agent builds for each point.

    spec = load_spec("configs/sweep.yaml")
    points = spec.points(count=None, seed=0)          # [{"train.kl_weight": "batch", ...}, ...]
    argv = agent_command(spec, points[0], sweep_id="ab12cd34", run_id="ab12cd34-000")

What W&B does, and so do we (wandb 0.31 `wandb_agent.Agent._command_run`, the `sweeps` package that W&B's
server runs for grid and random search):
- Parameters are taken in sorted name order. A grid is the product of every `values` list (int_uniform and
  q_uniform expand to their values; W&B's q_uniform grid is numpy.arange(min, max, q), i.e. without max),
  the last name varying fastest. Constants (`value:`) are passed to every point.
- Random search draws each parameter from its distribution. W&B's server draws from its own random stream;
  ours is seeded per point (numpy's generator on [seed, point index]), so the same file and seed give the
  same points on every machine, and a larger --count adds points without changing the earlier ones.
- The command: `command:` (default `${env} ${interpreter} ${program} ${args}`), `${envvar:NAME}` replaced
  by the variable's value (by NAME when it is unset), then every element that is exactly a macro replaced by
  its list: env=/usr/bin/env, interpreter=python, program=the file's `program`, args=--k=v, args_no_hyphens=k=v,
  args_no_boolean_flags=--k=v with booleans as --k or nothing, args_no_equals=--k v, args_json, args_json_file
  (written as W&B writes it), args_append_hydra=+k=v, args_override_hydra=++k=v; an unknown macro vanishes.
  Values are written with Python's str(), as the agent writes the values its server sends.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vaedist.errors import UserError
from vaedist.files import write_text_atomic
from vaedist.goals import goal as known_goal

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
ENVVAR_MACRO = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")  # wandb's SWEEP_COMMAND_ENV_VAR_REGEX
METHODS = ("grid", "random")
# distribution -> W&B's meaning; what a VAE's hyper-parameters need. W&B also has normal, log_normal, beta and
# their q_ forms and inv_log_uniform*, which suit none of vaedist's keys: they are refused by name.
DISTRIBUTIONS = {
    "constant": "value",
    "categorical": "one of values, uniformly",
    "categorical_w_probabilities": "one of values, with probabilities (random only)",
    "int_uniform": "an integer in [min, max]",
    "uniform": "a float in [min, max]",
    "q_uniform": "uniform, rounded to a multiple of q (default 1)",
    "log_uniform_values": "log-uniform in [min, max] (e.g. a learning rate)",
    "q_log_uniform_values": "log_uniform_values rounded to a multiple of q (e.g. a batch size)",
    "log_uniform": "exp(uniform(min, max)): min and max are natural logs (W&B's older form)",
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")  # as W&B's grid search


@dataclass(frozen=True)
class Parameter:
    name: str
    distribution: str
    config: dict  # the file's entry: value / values / probabilities / min / max / q

    def grid_values(self) -> list[Any]:
        c = self.config
        if self.distribution == "constant":
            return [c["value"]]
        if self.distribution == "categorical":
            return list(c["values"])
        if self.distribution == "int_uniform":
            return list(range(c["min"], c["max"] + 1))
        # q_uniform: numpy.arange(min, max, q) exactly as W&B's grid (max itself is not a point)
        return np.arange(c["min"], c["max"], c.get("q", 1.0)).tolist()

    def sample(self, rng: np.random.Generator) -> Any:
        c, d = self.config, self.distribution
        if d == "constant":
            return c["value"]
        if d == "categorical":
            return c["values"][int(rng.integers(len(c["values"])))]
        if d == "categorical_w_probabilities":
            return c["values"][int(rng.choice(len(c["values"]), p=np.asarray(c["probabilities"], float) / sum(c["probabilities"])))]
        if d == "int_uniform":
            return int(rng.integers(c["min"], c["max"] + 1))
        if d == "uniform":
            return _plain(rng.uniform(c["min"], c["max"]))
        if d == "q_uniform":
            return _quantize(rng.uniform(c["min"], c["max"]), c.get("q", 1.0))
        if d == "log_uniform_values":
            return _plain(math.exp(rng.uniform(math.log(c["min"]), math.log(c["max"]))))
        if d == "q_log_uniform_values":
            return _quantize(math.exp(rng.uniform(math.log(c["min"]), math.log(c["max"]))), c.get("q", 1.0))
        if d == "log_uniform":
            return _plain(math.exp(rng.uniform(c["min"], c["max"])))
        raise AssertionError(d)


def _plain(value: float) -> float:
    """A drawn float to 6 significant digits (0.000250326996814 -> 0.000250327, 0.30000000000000004 -> 0.3):
    finer than any hyper-parameter needs, and the command lines stay readable."""
    return float(f"{float(value):.6g}")


def _quantize(value: float, q: float | int) -> float | int:
    """W&B's q_*: round(value / q) * q, an int when q is an int."""
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) and not isinstance(q, bool) else _plain(rounded)


@dataclass
class SweepSpec:
    path: Path
    name: str
    method: str
    metric: str | None
    goal: str  # "minimize" | "maximize" (W&B's default: minimize)
    parameters: dict[str, Parameter]  # sorted by name, as W&B takes them
    program: str | None
    command: list[str]
    raw: dict = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def swept(self) -> list[str]:
        """Names of the parameters that vary between points (not constants)."""
        return [p.name for p in self.parameters.values() if p.distribution != "constant"]

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.parameters.values())

    def points(self, count: int | None, seed: int) -> list[dict[str, Any]]:
        """The parameter values of the first `count` points (grid: all of them when count is None)."""
        if self.method == "grid":
            names = list(self.parameters)
            combos = product(*(self.parameters[n].grid_values() for n in names))
            grid = [dict(zip(names, combo)) for combo in combos]
            return grid if count is None else grid[:count]
        if count is None:
            raise UserError(f"{self.path}: a random sweep needs --count K (W&B's agent draws points until it is stopped)")
        return [self.sample_point(seed, i) for i in range(count)]

    def sample_point(self, seed: int, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, index])
        return {name: p.sample(rng) for name, p in self.parameters.items()}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; anything W&B would refuse, or that vaedist.sweep cannot run, is a one-line
    UserError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file '{path}' not found (shipped sweeps: configs/sweep*.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"sweep file '{path}'{f' line {mark.line + 1}' if mark else ''} is not valid YAML: {getattr(err, 'problem', err)}")
    if not isinstance(raw, dict):
        raise UserError(f"sweep file '{path}' must be a mapping (method:, parameters:, command: ...)")
    method = raw.get("method")
    if method not in METHODS:
        hint = " (bayes search needs W&B's server: use wandb sweep / wandb agent)" if method == "bayes" else ""
        raise UserError(f"{path}: method must be one of {', '.join(METHODS)}, got {method!r}{hint}")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{path}: 'parameters' must map at least one config key to its value(s)")
    parameters = {name: _parameter(path, name, params[name], method) for name in sorted(params, key=str)}

    metric, goal, warnings = None, "minimize", []
    if "metric" in raw:
        m = raw["metric"]
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise UserError(f"{path}: metric must be a mapping with a name (e.g. name: val/mse, goal: minimize)")
        metric = m["name"]
        if "goal" in m:
            if m["goal"] not in ("minimize", "maximize"):
                raise UserError(f"{path}: metric.goal must be minimize or maximize, got {m['goal']!r}")
            goal = m["goal"]
        elif known_goal(metric) == "maximize":
            warnings.append(f"{path}: metric.goal is missing, so W&B minimizes {metric}, which is better when higher: add goal: maximize")

    command = raw.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not command or not all(isinstance(c, (str, int, float)) for c in command):
        raise UserError(f"{path}: command must be a list of strings, e.g. [${{env}}, ${{interpreter}}, ${{program}}, ${{args}}]")
    program = raw.get("program")
    if program is not None and not isinstance(program, str):
        raise UserError(f"{path}: program must be a path, got {program!r}")
    if "${program}" in command and not program:
        raise UserError(f"{path}: command uses ${{program}} but the file has no 'program:'")
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else path.stem
    spec = SweepSpec(path, name, method, metric, goal, parameters, program, [str(c) for c in command], raw, warnings)
    if method == "grid" and spec.grid_size() == 0:
        raise UserError(f"{path}: the grid has no points (a parameter has an empty range)")
    return spec


def _parameter(path: Path, name: Any, entry: Any, method: str) -> Parameter:
    where = f"{path}: parameters.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise UserError(f"{path}: parameter name {name!r} is not a config key (W&B allows letters, digits, _ . -)")
    if not isinstance(entry, dict):
        raise UserError(f"{where} must be a mapping: value: X, values: [..], or distribution with min/max")
    if "parameters" in entry:
        raise UserError(f"{where}: nested parameters are not supported; name the dotted key instead (e.g. train.encoder.lr)")
    distribution = entry.get("distribution")
    if distribution is None:  # W&B's schema infers it from the keys
        if "value" in entry:
            distribution = "constant"
        elif "values" in entry:
            distribution = "categorical_w_probabilities" if "probabilities" in entry else "categorical"
        elif "min" in entry and "max" in entry:
            ints = all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("min", "max"))
            distribution = "int_uniform" if ints else "uniform"
        else:
            raise UserError(f"{where} needs value:, values: or min: and max:")
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"{where}: distribution {distribution!r} is not supported by vaedist.sweep "
                        f"(supported: {', '.join(DISTRIBUTIONS)})")
    allowed = {"distribution", *{"constant": ["value"], "categorical": ["values"],
                                 "categorical_w_probabilities": ["values", "probabilities"]}.get(distribution, ["min", "max", "q"])}
    extra = set(entry) - allowed
    if extra:
        raise UserError(f"{where}: key {sorted(extra)[0]!r} does not belong to distribution {distribution} (W&B refuses it too)")
    if distribution == "constant" and "value" not in entry:
        raise UserError(f"{where}: distribution constant needs value:")
    if distribution.startswith("categorical"):
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: values must be a non-empty list")
        if distribution == "categorical_w_probabilities":
            probs = entry.get("probabilities")
            if (not isinstance(probs, list) or len(probs) != len(values)
                    or not all(isinstance(p, (int, float)) and p >= 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6)):
                raise UserError(f"{where}: probabilities must be one non-negative number per value, summing to 1")
    elif distribution != "constant":
        for key in ("min", "max"):
            if not isinstance(entry.get(key), (int, float)) or isinstance(entry.get(key), bool):
                raise UserError(f"{where}: distribution {distribution} needs a number for {key}")
        if entry["min"] >= entry["max"]:
            raise UserError(f"{where}: min {entry['min']} is not less than max {entry['max']}")
        if distribution == "int_uniform" and not all(isinstance(entry[k], int) for k in ("min", "max")):
            raise UserError(f"{where}: int_uniform needs integer min and max")
        if distribution.endswith("log_uniform_values") and entry["min"] <= 0:
            raise UserError(f"{where}: {distribution} needs min > 0 (its values are log-uniform)")
        q = entry.get("q", 1.0)
        if not isinstance(q, (int, float)) or isinstance(q, bool) or q <= 0:
            raise UserError(f"{where}: q must be a number greater than 0")
    if method == "grid" and distribution not in GRID_DISTRIBUTIONS:
        raise UserError(f"{where}: distribution {distribution} cannot be gridded; grid search takes "
                        f"{', '.join(GRID_DISTRIBUTIONS)} (as W&B), or use method: random")
    return Parameter(name, distribution, dict(entry))


# --- the agent's command line ----------------------------------------------------------------------


def command_variables(spec: SweepSpec, values: dict[str, Any], args_json_file: str) -> dict[str, list[str]]:
    """The macro -> list table of wandb's agent for one point (create_sweep_command_args + the agent's own)."""
    args, no_hyphens, no_booleans, no_equals, hydra_append, hydra_override = [], [], [], [], [], []
    for name, value in values.items():
        flag = f"{name}={value}"
        args.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{name}", str(value)]
        hydra_append.append("+" + flag)
        hydra_override.append("++" + flag)
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + name)
        else:
            no_booleans.append("--" + flag)
    return {
        "args": args,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(values)],
        "args_dict": list(values),  # the agent splices the dict itself, i.e. its keys
        "args_append_hydra": hydra_append,
        "args_override_hydra": hydra_override,
        "interpreter": ["python"],
        "program": [spec.program] if spec.program else [],
        "args_json_file": [args_json_file],
        "env": ["/usr/bin/env"],
    }


def args_json_path(sweep_id: str, run_id: str, environ: dict | None = None) -> str:
    """Where the agent writes ${args_json_file}: $WANDB_DIR (the agent's folder)/wandb/sweep-ID/config-RUN.json."""
    env = os.environ if environ is None else environ
    base = env.get("WANDB_DIR") or os.path.abspath(os.getcwd())
    return os.path.join(base, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.json")


def agent_command(spec: SweepSpec, values: dict[str, Any], *, sweep_id: str, run_id: str, environ: dict | None = None) -> list[str]:
    """The argv wandb's agent runs for a point with these parameter values (see the module docstring)."""
    env = os.environ if environ is None else environ
    variables = command_variables(spec, values, args_json_path(sweep_id, run_id, env))
    argv: list[str] = []
    for chunk in spec.command:
        for match in reversed(list(ENVVAR_MACRO.finditer(chunk))):
            chunk = chunk[: match.start()] + env.get(match.group(1), match.group(1)) + chunk[match.end() :]
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += variables.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def write_args_json_file(spec: SweepSpec, values: dict[str, Any], sweep_id: str, run_id: str, environ: dict | None = None) -> None:
    """What the agent does before starting a command that has ${args_json_file}."""
    if "${args_json_file}" not in spec.command:
        return
    path = Path(args_json_path(sweep_id, run_id, environ))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(values))


def trainer_overrides(argv: list[str]) -> tuple[str | None, list[str], list[str]] | None:
    """(config file, overrides, other options) when argv runs vaedist's trainer (launch/train.py or -m vaedist.train),
    else None. The trainer takes only --config and key=value: other options (W&B's default ${args} gives --key=value)
    would stop it.

    Lets the runner load every point's config before the first one starts: a typo in a sweep file is then
    one line naming the point and the key, not N failed runs.
    """
    for i, token in enumerate(argv):
        if token.endswith("launch/train.py") or token == "launch/train.py" or (token == "vaedist.train" and i and argv[i - 1] == "-m"):
            rest = argv[i + 1 :]
            config, overrides, options, j = None, [], [], 0
            while j < len(rest):
                if rest[j] == "--config" and j + 1 < len(rest):
                    config, j = rest[j + 1], j + 2
                    continue
                if rest[j].startswith("--config="):
                    config = rest[j].split("=", 1)[1]
                elif rest[j].startswith("-"):
                    options.append(rest[j])
                else:
                    overrides.append(rest[j])
                j += 1
            return config, overrides, options
    return None
