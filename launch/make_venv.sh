#!/usr/bin/env bash
# Creates the environment on first use: a venv with a matching torch + torchvision pair, then vaedist and its
# dependencies (editable). Re-running is cheap: it installs again only when pyproject.toml, setup.py or the
# C source changed since.
#   bash launch/make_venv.sh [VENV]      (default: $VAEDIST_VENV, else ./.venv)
# `launch/env.sh` runs it, then activates the venv in the calling shell.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv="${1:-${VAEDIST_VENV:-$repo/.venv}}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[vaedist] creating $venv ..." >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.vaedist-installed"
# installed and nothing that the install builds from changed since: the dependencies (pyproject.toml) and the
# compiled parts (setup.py, vaedist/shard/_pixelpass.c and _hamming.c, built in place by the editable install)
if [ -f "$stamp" ] && [ ! "$repo/pyproject.toml" -nt "$stamp" ] && [ ! "$repo/setup.py" -nt "$stamp" ] \
   && [ ! "$repo/vaedist/shard/_pixelpass.c" -nt "$stamp" ] && [ ! "$repo/vaedist/shard/_hamming.c" -nt "$stamp" ]; then
  exit 0
fi
python="$venv/bin/python"
echo "[vaedist] installing dependencies into $venv (first run only) ..." >&2
"$python" -m pip install -q --upgrade pip
# torch and torchvision must match; this pair is the newest that pip finds on the project's machines.
if ! "$python" -c "import torch, torchvision" 2>/dev/null; then
  # The CUDA build of torch with its libraries takes ~6.7 GB in the venv; pip fails half-way with
  # "No space left on device" otherwise, so say it up front, in one line, with what to do.
  need_kb=$((8 * 1024 * 1024))
  free_kb=$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
    free_gb=$(awk -v kb="$free_kb" 'BEGIN { printf "%.1f", kb / 1024 / 1024 }')
    echo "[vaedist] error: installing torch into $venv needs about 8 GB free there, only $free_gb GB is;" \
         "free some space or set VAEDIST_VENV to a folder on a disk with room" >&2
    exit 1
  fi
  "$python" -m pip install -q "torch==${VAEDIST_TORCH:-2.14.1}" "torchvision==${VAEDIST_TORCHVISION:-0.29.1}"
fi
"$python" -m pip install -q -e "$repo[dev]"
touch "$stamp"
