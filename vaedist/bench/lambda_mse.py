"""What train.lambda_mse does to the decoder's steps: its RMS gradient against the optimizer's eps, and its
steps at lambda_mse from 1e-6 to 1, with RMSprop, Adam and plain SGD as the decoder's optimizer.

    python -m vaedist.bench lambda --shards DIR [--config configs/demo.yaml] [--steps 20] [key=value ...]

The decoder's loss is lambda_mse * sum(mse). RMSprop and Adam divide the gradient by a running RMS of itself
plus eps, so a constant factor on the loss cancels except where eps is comparable to that RMS. SGD's step is
the gradient itself, so lambda_mse multiplies the decoder's step (it is the decoder's learning rate in
disguise). For each optimizer and lambda, the same trainer (same initial weights, same batches) takes
`--steps` real training steps (vaedist.train.train_step); the benchmark reports
- grad rms: the RMS over all decoder parameters of the gradient the decoder's optimizer receives (median
  over the steps), and for RMSprop/Adam, after the last step, the 1st percentile of the elements' running RMS
  sqrt(v) and the share of elements with sqrt(v) < 100 x eps (where eps changes the step by 1 % or more);
- |1st step|: the norm of the decoder's first update, and its difference from lambda=1's first update
  (same weights, same batch), |step_lambda - step_1| / |step_1|.
Differences between the weights after several steps say little here: training amplifies any change, so two
runs whose first steps differ by 1e-4 end up as far apart as two seeds; compare validation metrics against
the seed-to-seed spread for that (configs/sweep_lambda_mse.yaml).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from vaedist.config import load_config
from vaedist.train import close, setup, train_step

LAMBDAS = (1e-6, 1e-4, 1e-2, 1.0)
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in params])


def decoder_trajectory(cfg, steps: int) -> dict:
    """Train `steps` steps; return the decoder's first update, final weights, gradient RMS per step, sqrt(v)."""
    t = setup(cfg)
    try:
        decoder = t.vae.decoder
        opt = t.optimizers[1]
        grad_rms: list[float] = []

        def record_gradient(_optimizer, _args, _kwargs):
            grads = [p.grad for p in decoder.parameters() if p.grad is not None]
            grad_rms.append(float(torch.cat([g.float().flatten() for g in grads]).pow(2).mean().sqrt()))

        hook = opt.register_step_pre_hook(record_gradient)
        theta0 = _flat(decoder.parameters())
        first_step, done, epoch = None, 0, 0
        while done < steps:
            t.train_loader.set_epoch(epoch)
            for x, _ in t.train_loader:
                train_step(t, x)
                done += 1
                if first_step is None:
                    first_step = _flat(decoder.parameters()) - theta0
                if done >= steps:
                    break
            epoch += 1
        hook.remove()
        state_key = {"rmsprop": "square_avg", "adam": "exp_avg_sq"}.get(cfg.train.decoder.name)
        sqrt_v = None
        if state_key:
            v = torch.cat([opt.state[p][state_key].float().flatten().cpu() for p in decoder.parameters() if p in opt.state])
            if cfg.train.decoder.name == "adam":  # Adam divides by sqrt(v / (1 - beta2^t)) + eps
                v = v / (1 - cfg.train.decoder.betas[1] ** steps)
            sqrt_v = v.sqrt()
        return {"theta0": theta0, "theta": _flat(decoder.parameters()), "first_step": first_step, "grad_rms": grad_rms,
                "sqrt_v": sqrt_v}
    finally:
        close(t)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench lambda", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="shard directory (python -m vaedist.shard)")
    parser.add_argument("--config", default="configs/demo.yaml", help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant")
    parser.add_argument("--sgd-lr", type=float, default=1e-3, help="decoder learning rate for the SGD rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=64")
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory(prefix="vaedist-bench-lambda-") as tmp:
        for name in OPTIMIZERS:
            for lam in LAMBDAS:
                extra = [f"train.decoder.name={name}", f"train.lambda_mse={lam}"]
                if name == "sgd":
                    extra.append(f"train.decoder.lr={args.sgd_lr}")
                cfg = load_config(args.config, [*args.overrides, *extra, f"data.shards={args.shards}",
                                                f"run.dir={tmp}/{name}-{lam:g}", "logging.wandb=false", "train.precision=no"])
                results[(name, lam)] = decoder_trajectory(cfg, args.steps)
                eps = cfg.train.decoder.eps

    rows = []
    print(f"\ndecoder steps against lambda_mse ({args.config}, {args.steps} steps, batch {cfg.train.batch_size}, eps {eps:g}; "
          f"SGD lr {args.sgd_lr:g})")
    print(f"{'optimizer':<10}{'lambda':>8}{'grad rms':>11}{'sqrt(v) p1':>12}{'<100 eps':>10}{'|1st step|':>12}{'vs lambda=1':>13}")
    for (name, lam), r in results.items():
        ref = results[(name, 1.0)]
        step = float(r["first_step"].norm())
        first = float((r["first_step"] - ref["first_step"]).norm() / ref["first_step"].norm().clamp_min(1e-30))
        median_rms = sorted(r["grad_rms"])[len(r["grad_rms"]) // 2]
        p1 = None if r["sqrt_v"] is None else float(torch.quantile(r["sqrt_v"][:2**24], 0.01))
        small = None if r["sqrt_v"] is None else float((r["sqrt_v"] < 100 * eps).float().mean())
        rows.append({"optimizer": name, "lambda_mse": lam, "grad_rms_median": median_rms,
                     "grad_rms_range": [min(r["grad_rms"]), max(r["grad_rms"])], "sqrt_v_p1": p1,
                     "share_sqrt_v_below_100eps": small, "first_step_norm": step, "first_step_vs_lambda1": first})
        print(f"{name:<10}{lam:>8g}{median_rms:>11.3g}{'-' if p1 is None else f'{p1:.2g}':>12}"
              f"{'-' if small is None else f'{small:.2%}':>10}{step:>12.3g}{first:>13.3g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
