"""Benchmarks that print their figures side by side: `python -m vaedist.bench {shard,loader,train,dedup,lambda,encode,quality} ...`.

Each sub-command lives in its own module (shard.py, loader.py, train.py, encode.py, quality.py, ...) with a `main(argv) -> int`.
On a CPU quote the ratios between the rows of the speed benchmarks; absolute images/s only mean something on
a GPU. The quality benchmark's figures do not depend on the machine's speed.
"""
