#!/usr/bin/env bash
# The main job end to end on the embedded sample (real photographs shipped in vaedist/sample/):
#   build COCO- and Food-101-shaped trees -> shard them -> train configs/demo.yaml -> evaluate
#   -> offline W&B run -> PNGs + an HTML report on disk; prints where everything is and the final metrics.
# Sets up ./.venv on first use. Uses the GPU when there is one, the CPU otherwise.
#   bash launch/demo.sh [OUT_DIR]      (default: ./demo; re-running reuses the shards and resumes the run)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
. "$repo/launch/env.sh"
cd "$repo"
out=$(python -c 'import os,sys; print(os.path.abspath(sys.argv[1]))' "${1:-demo}")
step() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }
run() { printf '  $ %s\n' "$*"; "$@"; }

step "1/5 embedded sample -> $out/data (COCO 2017 and Food-101 layouts)"
[ -f "$out/data/.complete" ] || { run python -m vaedist.sample "$out/data" && touch "$out/data/.complete"; }

step "2/5 shard both datasets (WebDataset tars + DALI index + manifest)"
run python -m vaedist.shard coco    --root "$out/data/coco"     --out "$out/shards/coco"
run python -m vaedist.shard food101 --root "$out/data/food-101" --out "$out/shards/food101"

step "3/5 train the seed VAE on the Food-101 sample (configs/demo.yaml)"
# One process: the sample is ~150 images. The config's train.precision (auto: bf16 on a GPU) decides precision.
run python -m vaedist.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    launch/train.py --config configs/demo.yaml data.shards="$out/shards/food101" run.dir="$out/runs/food101"

step "4/5 evaluate the trained weights on the whole validation split"
run python -m vaedist.evaluate "$out/runs/food101" --shards "$out/shards/food101"

step "5/5 side-by-side HTML report (no W&B account needed)"
run python -m vaedist.compare "$out/runs/food101" -o "$out/report.html"

python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); run = out / "runs" / "food101"
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
val = [r for r in rows if any(k.startswith("val/") for k in r)]
print("\n[demo] done.")
print(f"  shards          {out / 'shards'}  (coco/, food101/: *.tar, *.idx, manifest.json)")
print(f"  run directory   {run}")
print(f"  images          {run / 'images'}")
for p in sorted((run / "images").glob("*latest*.png")):
    print(f"                    {p.name}")
print(f"  final weights   {run / 'final'}   (vaedist.load_model('{run / 'final'}'))")
print(f"  HTML report     {out / 'report.html'}")
wandb_runs = sorted((run / "wandb").glob("offline-run-*")) if (run / "wandb").exists() else []
if wandb_runs:  # one folder per session of the same run (a re-run resumes it): sync them all, in order
    print(f"  W&B offline run {wandb_runs[-1]}   (upload: wandb sync {' '.join(map(str, wandb_runs))})")
if val:
    last = val[-1]
    print("  final metrics   " + "  ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("val/")))
PY
