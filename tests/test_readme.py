"""The README is the manual: its Quickstart has exactly two commands, CI runs its test command, and every
config key of the schema is documented in its configuration table."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from vaedist.config import Config, OptimConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def _quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_readme_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert (REPO / demo.split()[1]).is_file() and (REPO / tests.split()[1]).is_file()
    assert tests in (REPO / ".ci" / "run").read_text()


def test_readme_documents_every_config_key():
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = []
    for key in _keys(Config):
        parts = key.split(".")
        if parts[:2] in (["train", "encoder"], ["train", "decoder"]) and parts[2] in optim_fields:
            documented = f"`  .{parts[2]}`" in table  # one row serves both optimizers
        else:
            documented = f"`{key}`" in table
        if not documented:
            missing.append(key)
    assert not missing, f"config keys missing from the README's table: {missing}"
