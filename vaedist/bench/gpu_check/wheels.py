"""Stage `install`: the wheels an offline machine lacks, from a folder, into a `pip --target` directory.

    python -m vaedist.bench.gpu_check.wheels FOLDER --target SITE [--work DIR] [--json FILE]

FOLDER holds `*.whl` files, or the `part-00, part-01, ...` pieces of one tar of them (what
`tar -cf - . | split -b 59m -d - part-` makes, so that each piece fits one transfer), or both.
The pieces are joined and unpacked into --work. From the wheels, those whose distribution the machine
already has are left out (its own torch, numpy, ... stay in charge), unless a wheel being installed needs a
version the machine's copy does not satisfy; the rest go into SITE with
`pip install --no-index --no-deps --no-compile --target`. Put SITE first on PYTHONPATH afterwards.
Running it again with the same wheels finds SITE complete and does nothing.

Standard library only (plus `packaging`, which pip itself carries): it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from vaedist.errors import UserError
from vaedist.files import write_text_atomic

try:
    from packaging.markers import UndefinedEnvironmentName
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip carries a copy
    from pip._vendor.packaging.markers import UndefinedEnvironmentName
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

STAMP = ".vaedist-wheels.json"  # in SITE: the wheels installed there, to recognise a finished install
PART = re.compile(r"^part-(\d+)$")
README_HINT = "see README, 'Offline install / GPU check'"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@dataclass
class Wheel:
    path: Path
    name: str  # canonical distribution name
    version: str
    requires: list[str] = field(default_factory=list)  # Requires-Dist lines

    @classmethod
    def read(cls, path: Path) -> "Wheel":
        try:
            with zipfile.ZipFile(path) as archive:
                metadata = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
                if len(metadata) != 1:
                    raise UserError(f"wheel '{path}' has no (or more than one) .dist-info/METADATA: not a wheel")
                headers = email.parser.BytesHeaderParser().parsebytes(archive.read(metadata[0]))
        except (zipfile.BadZipFile, OSError) as err:
            raise UserError(f"wheel '{path}' cannot be read ({err}): copy it again") from None
        return cls(path, canonical(headers["Name"]), headers["Version"], headers.get_all("Requires-Dist") or [])


def _part_number(path: Path) -> int:
    return int(PART.match(path.name).group(1))


class _Joined:
    """The parts, read one after another as one file (tarfile's stream mode reads it front to back)."""

    def __init__(self, parts: list[Path]):
        self.parts, self.current = list(parts), None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.parts:
                    return b""
                self.current = open(self.parts.pop(0), "rb")
            data = self.current.read(size)
            if data or size == 0:
                return data
            self.current.close()
            self.current = None


def join_parts(parts: list[Path], dest: Path) -> list[Path]:
    """Unpack the `*.whl` members of the tar that `parts` (part-00, part-01, ...) make together into `dest`."""
    parts = sorted(parts, key=_part_number)
    numbers = [_part_number(p) for p in parts]
    missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
    folder = parts[0].parent
    if missing:
        raise UserError(f"wheel parts in '{folder}': part-{missing[0]:02d} is missing (found "
                        f"{', '.join(p.name for p in parts)}); copy every part")
    dest.mkdir(parents=True, exist_ok=True)
    found = []
    try:
        with tarfile.open(fileobj=_Joined(parts), mode="r|") as archive:
            for member in archive:
                name = Path(member.name).name
                if not (member.isfile() and name.endswith(".whl")):
                    continue
                target = dest / name  # the base name only: nothing lands outside dest
                tmp = target.with_name(name + ".part")
                with archive.extractfile(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmp.replace(target)
                found.append(target)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"wheel parts in '{folder}' ({parts[0].name} .. {parts[-1].name}) do not make a whole "
                        f"tar ({err}): the last part is missing or cut short; copy every part again") from None
    return found


def gather(folder: Path, work: Path) -> tuple[list[Path], list[str]]:
    """The wheel files of `folder` (loose, and from its parts) and the names of the parts used."""
    if not folder.is_dir():
        raise UserError(f"wheels folder '{folder}' does not exist ({README_HINT})")
    parts = [p for p in folder.iterdir() if PART.match(p.name) and p.is_file()]
    wheels = {p.name: p for p in folder.glob("*.whl")}
    if parts:
        for path in join_parts(parts, work):
            wheels.setdefault(path.name, path)
    if not wheels:
        raise UserError(f"no wheels in '{folder}': expected *.whl files or part-NN pieces ({README_HINT})")
    return sorted(wheels.values()), sorted(p.name for p in parts)


def installed_versions() -> dict[str, str]:
    """Distributions this interpreter already has (its site-packages and PYTHONPATH)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def _newer(a: str, b: str) -> bool:
    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return a > b


def _needs(wheel: Wheel) -> list[Requirement]:
    """The wheel's requirements that apply here (markers true; extras not asked for)."""
    out = []
    for line in wheel.requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        try:
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(req)
        except UndefinedEnvironmentName:
            continue
    return out


@dataclass
class Choice:
    install: list[Wheel]
    kept: list[dict]  # the machine's own copy stays: {name, installed, wheel}
    replaced: list[dict]  # installed although the machine has it: {name, installed, wheel, because}
    ignored: list[dict]  # not installed at all: {wheel, why}


def choose(wheels: list[Wheel], installed: dict[str, str]) -> Choice:
    """Which wheels to install: those the machine lacks, plus those a needed version forces (see module doc)."""
    newest: dict[str, Wheel] = {}
    ignored = []
    for wheel in wheels:
        if wheel.name == "vaedist":
            ignored.append({"wheel": wheel.path.name, "why": "vaedist itself runs from the checkout"})
            continue
        other = newest.get(wheel.name)
        if other is None or _newer(wheel.version, other.version):
            if other is not None:
                ignored.append({"wheel": other.path.name, "why": f"an older copy of {wheel.path.name}"})
            newest[wheel.name] = wheel
        else:
            ignored.append({"wheel": wheel.path.name, "why": f"an older copy of {other.path.name}"})
    chosen = {name: w for name, w in newest.items() if name not in installed}
    replaced = []
    pending = list(chosen.values())
    while pending:  # a chosen wheel may need a newer version of something the machine has
        wheel = pending.pop()
        for req in _needs(wheel):
            name = canonical(req.name)
            if name in chosen or name not in installed or name not in newest:
                continue
            if not req.specifier.contains(installed[name], prereleases=True) and \
                    req.specifier.contains(newest[name].version, prereleases=True):
                chosen[name] = newest[name]
                replaced.append({"name": name, "installed": installed[name], "wheel": newest[name].version,
                                 "because": f"{wheel.name} needs {req}"})
                pending.append(newest[name])
    kept = [{"name": n, "installed": installed[n], "wheel": w.version} for n, w in sorted(newest.items())
            if n not in chosen]
    return Choice(sorted(chosen.values(), key=lambda w: w.name), kept, replaced, ignored)


def install(choice: Choice, target: Path) -> bool:
    """pip-install the chosen wheels into `target`; False when `target` already holds exactly these."""
    names = sorted(w.path.name for w in choice.install)
    stamp = target / STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("wheels") == names:
                return False
        except ValueError:
            pass
    staging = target.with_name(target.name + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    if choice.install:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check", "--target", str(staging),
               *[str(w.path) for w in choice.install]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            raise UserError(f"pip could not install the wheels into {target}: {lines[-1] if lines else 'no output'}")
    else:
        staging.mkdir(parents=True)
    write_text_atomic(staging / STAMP, json.dumps({"wheels": names}))
    shutil.rmtree(target, ignore_errors=True)  # a half-finished earlier install, or other wheels
    staging.replace(target)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench.gpu_check.wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of *.whl files and/or part-NN pieces")
    parser.add_argument("--target", type=Path, required=True, help="install here (put it first on PYTHONPATH)")
    parser.add_argument("--work", type=Path, default=None, help="where the parts are unpacked (default: TARGET.wheels)")
    parser.add_argument("--json", type=Path, default=None, help="write what was installed and kept here")
    args = parser.parse_args(argv)
    start = time.monotonic()
    work = args.work or args.target.with_name(args.target.name + ".wheels")
    paths, parts = gather(args.folder, work)
    choice = choose([Wheel.read(p) for p in paths], installed_versions())
    fresh = install(choice, args.target)
    summary = {
        "folder": str(args.folder), "parts": parts, "target": str(args.target), "fresh_install": fresh,
        "installed": [{"name": w.name, "version": w.version, "wheel": w.path.name} for w in choice.install],
        "kept": choice.kept, "replaced": choice.replaced, "ignored": choice.ignored,
        "seconds": round(time.monotonic() - start, 2),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(summary, indent=1))
    what = "installed" if fresh else "already installed"
    print(f"{what} {len(choice.install)} wheels into {args.target}"
          + (f" (from {len(parts)} parts)" if parts else "")
          + (f"; kept the machine's own {', '.join(k['name'] + ' ' + k['installed'] for k in choice.kept)}"
             if choice.kept else ""))
    for r in choice.replaced:
        print(f"  {r['name']}: the wheel's {r['wheel']} instead of the machine's {r['installed']} ({r['because']})")
    for i in choice.ignored:
        print(f"  not installed: {i['wheel']} ({i['why']})")
    return 0


if __name__ == "__main__":
    from vaedist.errors import run_cli

    run_cli(main, prog="gpu_check install")
