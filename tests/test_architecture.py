"""The package's shape: imports go one way (no cycle in vaedist/), an import inside a function says why it is
there, the tools that only read files import no torch, and no module but vaedist.rundir spells a name of the
run directory. Read from the source with `ast`, so that an import hidden inside a function counts too."""
from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vaedist"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def imported_modules(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The vaedist modules an import statement in module `name` loads (a `from` of a submodule counts as it)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    base = node.module or ""
    if node.level:  # relative: from . import x, from ..data import y
        package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        base = f"{package}.{base}" if base else package
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    if len(found) < len(node.names) and base in MODULES:
        found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """vaedist module -> the vaedist modules it imports anywhere (top level, TYPE_CHECKING, inside functions)."""
    graph = {}
    for name, tree in TREES.items():
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported_modules(name, node)
        graph[name] = edges - {name}
    return graph


def test_the_import_graph_of_vaedist_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and {"vaedist.config", "vaedist.data.loader"} <= set(graph)  # the walk found the package
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle (each module imports the next): {' -> '.join(reversed(err.args[1]))}")
    assert set(order) >= set(graph)


def function_level_imports() -> list[tuple[str, int, ast.stmt]]:
    found = []
    for name, tree in TREES.items():
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        found.append((name, node.lineno, node))
    return found


def _says_why(name: str, node: ast.stmt) -> bool:
    """A comment on the import's own lines or on the line just above it."""
    lines = MODULES[name].read_text().splitlines()
    own = lines[node.lineno - 1 : node.end_lineno]
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    return any("#" in line for line in own) or above.startswith("#")


def test_every_import_inside_a_function_says_which_dependency_it_keeps_off_which_path():
    silent = [f"{MODULES[name].relative_to(REPO)}:{line}: {ast.unparse(node)}"
              for name, line, node in function_level_imports() if not _says_why(name, node)]
    assert not silent, "imports inside functions without a comment saying why:\n" + "\n".join(silent)


def test_function_level_imports_load_only_optional_or_heavy_dependencies():
    """The comment is there for a reason: a vaedist module imported inside a function would hide an edge of
    the graph (a cycle, a misplaced responsibility). Only third-party packages may be imported late."""
    inside = [f"{MODULES[name].relative_to(REPO)}:{line}: {ast.unparse(node)}"
              for name, line, node in function_level_imports() if imported_modules(name, node)
              and not any(m in LATE_VAEDIST_IMPORTS for m in imported_modules(name, node))]
    assert not inside, "vaedist modules imported inside functions:\n" + "\n".join(inside)


# vaedist modules that may be imported inside a function, and why.
LATE_VAEDIST_IMPORTS = {
    # nvidia.dali at import time; the DALI backend is optional (the reference loader runs without it)
    "vaedist.data.dali": "optional dependency: DALI",
    # torch: `import vaedist` (and so vaedist.compare, vaedist.rundir) must not load it
    "vaedist.models": "heavy dependency: torch, kept off `import vaedist`",
    # torch, Accelerate, DALI, torchmetrics: kept off the training command's config check (vaedist.train.cli) and off
    # `import vaedist.train.<submodule>`; the package binds its names on first use
    "vaedist.train": "heavy dependencies, kept off the config check of launch/train.py",
    "vaedist.train.loop": "heavy dependencies, kept off the config check of launch/train.py",
    "vaedist.train.trainer": "heavy dependencies, kept off the config check of launch/train.py",
    "vaedist.train.step": "heavy dependencies, kept off the config check of launch/train.py",
    "vaedist.train.window": "heavy dependencies, kept off the config check of launch/train.py",
}


@pytest.mark.parametrize("module", ["vaedist.compare", "vaedist.rundir"])
def test_reading_run_directories_imports_no_torch(module):
    """compare only reads JSON, YAML and PNG files: it must start on a machine (or in a second) without torch."""
    code = f"import {module}, sys; assert not {{'torch', 'torchvision', 'torchmetrics'}} & set(sys.modules), sorted(m for m in {{'torch', 'torchvision', 'torchmetrics'}} if m in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _spellings(tree: ast.AST, names: tuple[str, ...]) -> list[tuple[int, str]]:
    """File names (`metrics.jsonl`, `wandb_run_id`) anywhere in a string; folder names (`final`, `images`,
    common words) where a path is joined with them (`run_dir / "final"`); the checkpoint and image patterns."""
    files = [n for n in names if "." in n or "_" in n]
    folders = [n for n in names if n not in files]
    found = []
    for node in _string_constants(tree):
        hits = [n for n in files if n in node.value] + [p for p in ("_latest.png", "step-", "offline-run-") if p in node.value]
        if hits:
            found.append((node.lineno, f"{node.value!r} ({', '.join(hits)})"))
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and side.value.strip("/") in folders:
                    found.append((node.lineno, ast.unparse(node)))
    return found


def test_only_the_run_directory_module_spells_the_names_in_a_run_directory():
    from vaedist.rundir import LAYOUT_NAMES

    assert {"config.yaml", "metrics.jsonl", "images", "checkpoints", "final", "model.safetensors", "wandb",
            "wandb_run_id"} <= set(LAYOUT_NAMES)
    # The dataset side (shard/, data/, sample/) lays out image folders, not runs: its "images" is Food-101's.
    run_side = [name for name in TREES if name != "vaedist.rundir"
                and not name.startswith(("vaedist.shard", "vaedist.data", "vaedist.sample"))]
    spelled = [f"{MODULES[name].relative_to(REPO)}:{line}: {what}" for name in run_side
               for line, what in _spellings(TREES[name], LAYOUT_NAMES)]
    assert not spelled, "run-directory names spelled outside vaedist/rundir.py:\n" + "\n".join(spelled)


def test_tests_import_the_package_not_each_other():
    """Shared test helpers are conftest fixtures: a test module importing another one runs that module's
    fixtures and tests' imports twice and couples the files."""
    names = {p.stem for p in (REPO / "tests").glob("*.py")}
    found = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno}: {t}" for t in targets
                      if t == "tests" or t.startswith("tests.") or t.split(".")[0] in names]
    assert not found, "tests importing tests:\n" + "\n".join(found)


def test_the_training_command_reads_its_config_before_it_imports_the_trainer():
    """launch/train.py answers a config mistake without torch (seconds per process, in every test that makes one)."""
    code = ("import sys, vaedist.train.cli; heavy = {'torch', 'accelerate', 'torchmetrics', 'nvidia.dali'} & set(sys.modules); "
            "assert not heavy, sorted(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_training_packages_names_are_the_trainers_whichever_module_came_first():
    """vaedist.train binds its names on first use, after a submodule may have been imported on its own; no name
    of the package's may also be a submodule's (importing it would rebind the package's name to the module)."""
    import vaedist.train.loop
    import vaedist.train.trainer
    from vaedist.train import NonFiniteLoss, setup, train

    assert setup is vaedist.train.trainer.setup and callable(setup)
    assert train is vaedist.train.loop.train and NonFiniteLoss is sys.modules["vaedist.train.window"].NonFiniteLoss
    submodules = {p.stem for p in (REPO / "vaedist" / "train").glob("*.py")}
    assert not submodules & set(vaedist.train.__all__)
