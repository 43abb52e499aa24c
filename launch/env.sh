# Source me: creates ./.venv on first use (torch + torchvision pair, vaedist and its dependencies), then activates it.
# Re-running is cheap: it only installs again when pyproject.toml changed since the last install.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${VAEDIST_VENV:-$repo/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[vaedist] creating $venv ..." >&2
  "$py" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.vaedist-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "[vaedist] installing dependencies into $venv (first run only) ..." >&2
  python -m pip install -q --upgrade pip
  # torch and torchvision must match; this pair is the newest that pip finds on the project's machines.
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    python -m pip install -q "torch==${VAEDIST_TORCH:-2.14.1}" "torchvision==${VAEDIST_TORCHVISION:-0.29.1}"
  fi
  python -m pip install -q -e "$repo[dev]"
  touch "$stamp"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# W&B: never prompt for a login in scripts; offline unless the user set WANDB_MODE or has credentials.
export WANDB_SILENT="${WANDB_SILENT:-true}"
