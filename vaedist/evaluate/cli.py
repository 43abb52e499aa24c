"""python -m vaedist.evaluate RUN_OR_WEIGHTS --shards DIR: trained weights evaluated on a whole split."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vaedist.accelerator import build_accelerator
from vaedist.config import load_config
from vaedist.data import build_loader
from vaedist.evaluate.engine import evaluate
from vaedist.evaluate.probe import build_probe_loader
from vaedist.files import check_output_file, write_text_atomic
from vaedist.models import load_model
from vaedist.rundir import WEIGHTS_NAME, ModelFiles, RunDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.evaluate", description="Evaluate trained weights on a whole split.")
    parser.add_argument("weights", type=Path,
                        help=f"a run folder, its {RunDir.final.name}/ folder, one of its checkpoint folders, or a {WEIGHTS_NAME} file")
    parser.add_argument("--shards", required=True, help="shard directory (holds manifest.json)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch and process")
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if args.out is not None:
        check_output_file(args.out, "--out")  # now, not after the whole evaluation
    files = ModelFiles.find(args.weights)
    model = load_model(args.weights)
    cfg = load_config(files.config)  # the config saved with the weights
    cfg.data.shards = args.shards
    accelerator = build_accelerator(cfg, training=False)
    model = model.to(accelerator.device)
    split = args.split or cfg.data.val_split
    loader = build_loader(cfg.data, split, train=False, batch_size=args.batch_size, accelerator=accelerator)
    # the probe is fitted on the training split: not when that split is what is being evaluated
    probe_loader = build_probe_loader(cfg, accelerator, args.batch_size) if split != cfg.data.train_split else None
    result = evaluate(model, loader, accelerator, cfg, probe_loader)
    # named after the split evaluated: train/mse for --split train (the trainer logs val/ for its val split)
    metrics = {f"{split}/{key.split('/', 1)[1]}": value for key, value in result.metrics.items()}
    if accelerator.is_main_process:
        print("  ".join(f"{k}={v:.5g}" for k, v in metrics.items()), flush=True)
        if args.out is not None:
            write_text_atomic(args.out, json.dumps(metrics, indent=1) + "\n")
    # Under a multi-process launch: close the process group now; left to interpreter shutdown, a gloo thread
    # can abort the process after a successful run ("terminate called without an active exception").
    accelerator.end_training()
    return 0
