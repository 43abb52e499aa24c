"""The two compiled parts: one pass over a decoded image's pixels for both of its hashes, and the row-by-row JPEG
decode that feeds it (vaedist/shard/_pixelpass.c); the duplicate search's pairs within a Hamming radius
(vaedist/shard/_hamming.c).

Optional, so that an install without a C compiler still works: the sharder then decodes with Pillow and hashes
through numpy (vaedist/shard/fingerprint.py), the same hashes and verdicts, slower, and the Hamming search is
faiss's flat index (vaedist/shard/hamming.py), the same pairs, slower at scale. Everything else is in
pyproject.toml.
"""
from setuptools import Extension, setup

XXHASH = "vaedist/shard/_xxhash"  # xxHash 0.8.4, vendored unmodified (its README.md)
LIBJPEG = "vaedist/shard/_libjpeg"  # libjpeg-turbo's headers only, vendored unmodified (its README.md)

setup(ext_modules=[Extension(
    "vaedist.shard._pixelpass",
    sources=["vaedist/shard/_pixelpass.c"],
    include_dirs=[XXHASH, LIBJPEG],
    depends=[f"{XXHASH}/{name}" for name in ("xxhash.h", "xxh_x86dispatch.c", "xxh_x86dispatch.h")]
    + [f"{LIBJPEG}/{name}" for name in ("jpeglib.h", "jmorecfg.h", "jconfig.h")],
    extra_compile_args=["-O3"],
    optional=True,
), Extension(
    "vaedist.shard._hamming",  # the duplicate search's pairs within a Hamming radius (vaedist/shard/hamming.py)
    sources=["vaedist/shard/_hamming.c"],
    extra_compile_args=["-O3"],
    optional=True,
)])
