"""Stage `environment`: does every runtime dependency import here, and what is this machine?

    python -m vaedist.bench.gpu_check.environment [--json FILE]

The dependencies are pyproject.toml's (the one list of them), plus pytest and webdataset for the GPU tests. DALI counts
as present in either CUDA flavour (nvidia-dali-cuda120 or -cuda130). Writes the facts (device, driver,
CUDA, torch, DALI and the other versions) to --json in any case, then fails with one line naming every
missing or broken package, if any.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import vaedist
from vaedist.errors import UserError
from vaedist.files import write_text_atomic

REPO = Path(__file__).resolve().parents[3]
DALI_DISTS = ("nvidia-dali-cuda130", "nvidia-dali-cuda120")
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL", "faiss-cpu": "faiss", "scikit-learn": "sklearn", "scikit-image": "skimage",
                **{d: "nvidia.dali" for d in DALI_DISTS}}
# What the check itself runs besides vaedist's runtime dependencies: pytest, and webdataset, which the tests
# (the `dev` extra) use to read shards back.
CHECK_TOOLS = ["pytest", "webdataset"]


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """pyproject.toml's [project] dependencies whose markers hold here, as distribution names."""
    import tomllib  # Python 3.11+; kept here so that the module imports on 3.10 for its other functions

    try:  # packaging is pip's, not ours: a bare machine may have only pip's vendored copy, read only here
        from packaging.requirements import Requirement  # packaging: not a project dependency
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement  # the bare machine's fallback
    names = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            names.append(req.name.lower())
    return names


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def check_imports(dists: list[str]) -> tuple[dict[str, str], list[str]]:
    """Import each distribution's module. Returns ({dist: version}, ["dist (why)", ...] for the missing)."""
    found, missing = {}, []
    for dist in dists:
        candidates = DALI_DISTS if dist in DALI_DISTS else (dist,)  # either DALI flavour will do
        present = [d for d in candidates if _version(d) is not None]
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a library underneath that fails to load
            name = present[0] if present else " or ".join(candidates)
            missing.append(f"{name} (import {module}: {_first_line(err)})")
            continue
        name = present[0] if present else dist
        found[name] = _version(name) or getattr(sys.modules[module], "__version__", "unknown")
    return found, missing


def _nvidia_smi() -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if not out:
        return {}
    name, driver, memory = [x.strip() for x in (out[0].split(",") + ["", "", ""])[:3]]
    return {"nvidia_smi_name": name, "driver": driver, "memory": memory, "gpus": str(len(out))}


def machine_facts() -> dict:
    facts = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
             "platform": platform.platform(), "cpu_count": os.cpu_count(), "cuda": False, "executable": sys.executable}
    facts.update(_nvidia_smi())
    try:
        import torch  # torch may be missing or broken on the machine under check: reported, not fatal
    except Exception as err:
        facts["torch_error"] = _first_line(err)
        return facts
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                 cudnn=str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(cuda=True, device=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                     device_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                     bf16_native=torch.cuda.is_bf16_supported())
    else:
        facts["device"] = f"CPU ({os.cpu_count()} cores), no CUDA"
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench.gpu_check.environment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    found, missing = check_imports(requirements() + CHECK_TOOLS)
    facts = machine_facts()
    facts["vaedist"] = str(Path(vaedist.__file__).parent)  # which copy imports: the checkout's, or an installed one
    facts["packages"] = found
    facts["missing"] = missing
    dali = [d for d in DALI_DISTS if d in found]
    facts["dali"] = f"{found[dali[0]]} ({dali[0]})" if dali else None
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(facts, indent=1))
    print(f"device: {facts.get('device')}; driver {facts.get('driver', 'none')}; torch {facts.get('torch')} "
          f"(CUDA {facts.get('torch_cuda')}); DALI {facts['dali']}; Python {facts['python']}")
    print("imports: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    if Path(vaedist.__file__).resolve().parents[1] != REPO:
        raise UserError(f"vaedist imports from {facts['vaedist']}, not from this checkout ({REPO}): put {REPO} "
                        "first on PYTHONPATH (launch/gpu_check.sh does)")
    if missing:
        raise UserError(f"missing: {'; '.join(missing)}. Put their wheels in the wheels folder (README, "
                        "'Offline install / GPU check') and run the check again")
    return 0


if __name__ == "__main__":
    from vaedist.errors import run_cli

    run_cli(main, prog="gpu_check environment")
