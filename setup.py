"""The one compiled part: a pass over a decoded image's memory for both of its hashes (vaedist/shard/_pixelpass.c).

Optional, so that an install without a C compiler still works: the sharder then hashes through numpy
(vaedist/shard/fingerprint.py), the same hashes at about twice the cost. Everything else is in pyproject.toml.
"""
from setuptools import Extension, setup

XXHASH = "vaedist/shard/_xxhash"  # xxHash 0.8.4, vendored unmodified (its README.md)

setup(ext_modules=[Extension(
    "vaedist.shard._pixelpass",
    sources=["vaedist/shard/_pixelpass.c"],
    include_dirs=[XXHASH],
    depends=[f"{XXHASH}/{name}" for name in ("xxhash.h", "xxh_x86dispatch.c", "xxh_x86dispatch.h")],
    extra_compile_args=["-O3"],
    optional=True,
)])
