"""Pack COCO 2017, Food-101 or any folder of images into WebDataset tar shards + DALI index + manifest.json.

    from vaedist.shard import shard_dataset
    manifest = shard_dataset("food101", "data/food-101", "shards/food101", workers=8)

Command line: python -m vaedist.shard {coco,food101,folder} --root DIR --out DIR [--help]
"""
from vaedist.shard.format import Manifest, ShardInfo, SplitInfo, load_manifest, write_manifest
from vaedist.shard.sharder import DEFAULT_SHARD_SIZE, shard_dataset
from vaedist.shard.sources import SOURCES

__all__ = ["DEFAULT_SHARD_SIZE", "Manifest", "SOURCES", "ShardInfo", "SplitInfo", "load_manifest", "shard_dataset",
           "write_manifest"]
