"""The one compiled part: one pass over a decoded image's pixels for both of its hashes, and the row-by-row JPEG
decode that feeds it (vaedist/shard/_pixelpass.c).

Optional, so that an install without a C compiler still works: the sharder then decodes with Pillow and hashes
through numpy (vaedist/shard/fingerprint.py), the same hashes and verdicts, slower. Everything else is in
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
)])
