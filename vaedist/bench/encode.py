"""Encoding benchmark: `python -m vaedist.encode` against the training loader, on the same shards, in one run.

    python -m vaedist.bench encode [--shards DIR] [--images N] [--batch B] [--workers W] [--torch-threads T]
                                   [--rounds R] [--json FILE]

Rows, one pass each per round (the first round warms caches and starts DALI; the fastest later pass counts):
  loader          the training loader alone (train=True: shuffle and flips), one epoch of the training split:
                  the images/s the trainer can be fed at most
  forward         the encoder alone on one batch held in memory, repeated: what the model costs without the loader
  encode          `vaedist.encode.encode_split` over the same split: the same loader (evaluation plan) + the seed
                  VAE's encoder (default widths, 64 px, latent 128) + gathering + writing the latent tars, batches
                  loaded ahead in a background thread (the default)
  encode, serial  the same with the loading in the loop's own thread (load_ahead=0): load, then encode, in turn
  stand-in, ...   both again with a stand-in encoder that waits 1/loader seconds per image without using the
                  CPU (it sleeps), as a GPU's kernels leave the CPU to the loader. Loading and encoding that
                  overlap run at the slower of the two: ~1.0x the loader; one after the other, at their sum: ~0.5x
The goal is encode / loader >= 1 (encoding is loader-bound). On a CPU the model's work and the loader's share
the same cores, so the real encode row is at best 1 / (1/loader + 1/forward) (both rates as ratios to the
loader; printed); the stand-in rows show whether the loop overlaps the two when the model runs elsewhere.
Without --shards, N COCO-sized 640x480 JPEGs are written and sharded in a temporary directory. On a CPU
quote the ratios; absolute images/s mean a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from vaedist.config import load_config
from vaedist.data import build_loader
from vaedist.encode import encode_split
from vaedist.errors import UserError
from vaedist.files import check_output_file, write_text_atomic
from vaedist.models import SeedVAE as VAE
from vaedist.sample import build_full_size_jpegs
from vaedist.shard import shard_dataset
from vaedist.shard.format import load_manifest


def time_loader(loader, epoch: int) -> tuple[int, float]:
    loader.set_epoch(epoch)
    began, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += batch.shape[0]
    return images, time.perf_counter() - began


class WaitingEncoder(torch.nn.Module):
    """A stand-in encoder that takes `seconds_per_image` of wall time but no CPU (it sleeps, releasing the GIL),
    as a GPU's kernels do: latents of `latent_shape`, all zeros."""

    def __init__(self, latent_shape: tuple[int, ...], seconds_per_image: float):
        super().__init__()
        self.latent_shape, self.seconds_per_image = latent_shape, seconds_per_image
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to move to

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.seconds_per_image * x.shape[0])
        mu = torch.zeros((x.shape[0], *self.latent_shape), device=x.device)
        return mu, mu.clone()


def time_forward(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> tuple[int, float]:
    with torch.inference_mode():  # as vaedist.encode runs it
        began = time.perf_counter()
        for _ in range(repeats):
            model.encode(images)
    return images.shape[0] * repeats, time.perf_counter() - began


ROWS = {
    "loader": "training loader alone",
    "forward": "encoder forward alone (batch in memory)",
    "encode": "vaedist.encode (loader + encoder + tars), loading ahead",
    "encode_serial": "vaedist.encode, loading in the loop's thread",
    "stand_in": "stand-in encoder waiting 1/loader per image, loading ahead",
    "stand_in_serial": "stand-in encoder waiting 1/loader per image, serial",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.bench encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="shard directory (default: build one from 640x480 JPEGs)")
    parser.add_argument("--images", type=int, default=512, help="JPEGs to generate when --shards is not given")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DALI threads")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own, one per core)")
    parser.add_argument("--rounds", type=int, default=3, help="passes per row; the fastest after the first is reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 2 or args.images < 2:
        raise UserError("--rounds must be at least 1, --batch and --images at least 2")
    if args.json is not None:
        check_output_file(args.json, "--json")

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    with tempfile.TemporaryDirectory(prefix="vaedist-bench-encode-") as tmp:
        work = Path(tmp)
        shards = args.shards
        if shards is None:
            print(f"writing {args.images} 640x480 JPEGs and sharding them ...", flush=True)
            folder = build_full_size_jpegs(work / "jpegs", args.images)
            shards = work / "shards"
            shard_dataset("folder", folder, shards, workers=max(1, args.workers), progress=False)
        cfg = load_config(None, [f"data.shards={shards}", f"data.workers={args.workers}", "data.seed=0"])
        torch.manual_seed(0)
        model = VAE(cfg.model, image_size=cfg.data.size).to(accelerator.device).eval()
        loader = build_loader(replace(cfg.data, cache="off"), cfg.data.train_split, train=True,
                              batch_size=args.batch, accelerator=accelerator)
        samples = load_manifest(shards).splits[cfg.data.train_split].samples
        first_batch = next(iter(loader))[0]
        rates: dict[str, list[float]] = {key: [] for key in ROWS}

        def encode_rate(encoder: torch.nn.Module, load_ahead: int) -> float:
            return encode_split(encoder, cfg, "bench", shards=shards, split=cfg.data.train_split, out=work / "latents",
                                accelerator=accelerator, batch_size=args.batch, overwrite=True,
                                load_ahead=load_ahead).images_per_s

        for round_ in range(args.rounds):
            images, seconds = time_loader(loader, round_)
            rates["loader"].append(images / seconds)
            images, seconds = time_forward(model, first_batch, repeats=max(1, len(loader)))
            rates["forward"].append(images / seconds)
            rates["encode"].append(encode_rate(model, 2))
            rates["encode_serial"].append(encode_rate(model, 0))
            stand_in = WaitingEncoder(model.latent_shape, seconds_per_image=1 / rates["loader"][-1])
            rates["stand_in"].append(encode_rate(stand_in, 2))
            rates["stand_in_serial"].append(encode_rate(stand_in, 0))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    best = {key: max(values[1:] or values) for key, values in rates.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    ratio = best["encode"] / best["loader"]
    print(f"\nencoding throughput ({device}, {time.strftime('%Y-%m-%d')}), {samples} images, batch {args.batch}, "
          f"{args.workers} DALI threads, {torch.get_num_threads()} torch threads:")
    for key, name in ROWS.items():
        print(f"  {name:<62} {best[key]:>9,.0f} images/s  {best[key] / best['loader']:>5.2f}x loader")
    shared = 1 / (1 / best["loader"] + 1 / best["forward"])
    print(f"  {'(loader and encoder sharing the cores, at best: 1/(1/loader + 1/forward))':<62} {shared:>9,.0f} images/s"
          f"  {shared / best['loader']:>5.2f}x loader")
    verdict = "met" if ratio >= 1 else f"not met: encoding runs at {ratio:.2f}x the loader"
    print(f"goal encode >= loader: {verdict}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps({
            "device": device, "date": time.strftime("%Y-%m-%d"), "images": samples, "batch": args.batch,
            "workers": args.workers, "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
            "images_per_s": best, "rounds_images_per_s": rates,
            "encode_over_loader": ratio,
        }, indent=1) + "\n")
    return 0
