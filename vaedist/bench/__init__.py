"""Benchmarks that print their figures side by side: `python -m vaedist.bench {shard,loader,train,encode} ...`.

Each sub-command lives in its own module (shard.py, loader.py, train.py, encode.py) with a `main(argv) -> int`.
On a CPU quote the ratios between the rows; absolute images/s only mean something on a GPU.
"""
