import importlib
import sys

from vaedist.errors import run_cli

COMMANDS = {"shard": "vaedist.bench.shard", "loader": "vaedist.bench.loader", "train": "vaedist.bench.train",
            "dedup": "vaedist.bench.dedup", "lambda": "vaedist.bench.lambda_mse",
            "encode": "vaedist.bench.encode", "quality": "vaedist.bench.quality",
            "verify": "vaedist.bench.verify", "run-size": "vaedist.bench.run_size",
            "remote": "vaedist.bench.remote", "scale": "vaedist.bench.scale"}


def main() -> int:
    usage = f"usage: python -m vaedist.bench {{{','.join(COMMANDS)}}} [--help]"
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
        print(usage + "\n\n  shard   the sharder's images/s against one process decoding the same files\n"
              "  loader  DALI, the reference loader and the cache against the seed's pipeline, side by side\n"
              "  train   the training step on synthetic data, through the loader, and through the cache\n"
              "  dedup   the duplicate finder: Hamming search on 265k hashes (index), the near-copy threshold\n"
              "  lambda  the decoder's steps at lambda_mse 1e-6 to 1 with RMSprop, Adam and SGD (its gradient RMS vs eps)\n"
              "  encode  python -m vaedist.encode against the training loader on the same shards\n"
              "  quality recipes trained for the same steps, val PSNR/SSIM/PCC/KL next to no-learning baselines\n"
              "  verify  verify's SHA-256 hashing: one thread against every core\n"
              "  run-size  files and bytes a run writes per evaluation (W&B folder, run dir), bounded vs not\n"
              "  remote  the loader from shards behind a URL against the same shards on local disk\n"
              "  scale   sharding, the loader's cold start (bytes read, first batch) and steps/s at growing sample counts")
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    return module.main(sys.argv[2:])


run_cli(main, prog="vaedist.bench")
