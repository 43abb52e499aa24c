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
    # The CUDA build of torch with its libraries takes ~6.7 GB in the venv; pip fails half-way with
    # "No space left on device" otherwise, so say it up front, in one line, with what to do.
    need_kb=$((8 * 1024 * 1024))
    free_kb=$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')
    if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
      free_gb=$(awk -v kb="$free_kb" 'BEGIN { printf "%.1f", kb / 1024 / 1024 }')
      echo "[vaedist] error: installing torch into $venv needs about 8 GB free there, only $free_gb GB is;" \
           "free some space or set VAEDIST_VENV to a folder on a disk with room" >&2
      return 1 2>/dev/null || exit 1  # sourced (the usual way): don't close the caller's shell
    fi
    python -m pip install -q "torch==${VAEDIST_TORCH:-2.14.1}" "torchvision==${VAEDIST_TORCHVISION:-0.29.1}"
  fi
  python -m pip install -q -e "$repo[dev]"
  touch "$stamp"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# W&B: never prompt for a login in scripts; offline unless the user set WANDB_MODE or has credentials.
export WANDB_SILENT="${WANDB_SILENT:-true}"
