# Source me: `source launch/env.sh` creates ./.venv on first use (launch/make_venv.sh), then activates it.
# It changes nothing else in the calling shell (no `set -e`: a failing command later must not close it)
# besides PYTHONPATH and WANDB_SILENT. Returns non-zero, with the reason on stderr, if the set-up failed.
_vaedist_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vaedist_venv="${VAEDIST_VENV:-$_vaedist_repo/.venv}"
if bash "$_vaedist_repo/launch/make_venv.sh" "$_vaedist_venv"; then
  # shellcheck disable=SC1091
  . "$_vaedist_venv/bin/activate"
  export PYTHONPATH="$_vaedist_repo${PYTHONPATH:+:$PYTHONPATH}"
  # W&B: never prompt for a login in scripts; offline unless the user set WANDB_MODE or has credentials.
  export WANDB_SILENT="${WANDB_SILENT:-true}"
  unset _vaedist_repo _vaedist_venv
else
  unset _vaedist_repo _vaedist_venv
  false
fi
