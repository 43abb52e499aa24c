#!/usr/bin/env bash
# The GPU check: install the wheels an offline GPU machine lacks, run the GPU-marked tests, the loader and
# trainer benchmarks and a real 3-epoch training run, each stage in its own process under a time budget
# (6 minutes in all), and write OUT_DIR/gpu-report.{md,json,png} + gpu-check.log even when a stage fails.
#   bash launch/gpu_check.sh OUT_DIR [WHEELS_DIR] [options]     (options: --help)
# WHEELS_DIR holds *.whl files or the part-NN pieces of a tar of them (README, "Offline install / GPU check").
# vaedist itself runs from this checkout. Without CUDA the same script is a dry run: GPU rows are skipped.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash launch/gpu_check.sh OUT_DIR [WHEELS_DIR] [options]   (bash launch/gpu_check.sh OUT_DIR --help)" >&2
  exit 2
fi
out=$1
shift
args=("$out")
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then  # a second word that is not an option: the wheels folder
  args+=(--wheels "$1")
  shift
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m vaedist.bench.gpu_check "${args[@]}" "$@"
