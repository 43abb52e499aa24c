#!/usr/bin/env bash
# The test command: sets up ./.venv if needed, then runs the whole suite on the CPU (GPU tests skip without one).
#   bash launch/test.sh            # everything
#   bash launch/test.sh -k shard   # pytest arguments pass through
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$repo/launch/env.sh"
cd "$repo"
# --durations: the slowest tests in every CI log, to keep the whole suite under ~15 minutes on 2 cores
exec python -m pytest -q --timeout=900 --durations=25 "$@"
