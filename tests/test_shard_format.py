"""The shard format module on its own: light to import, and its size arithmetic equal to what it encodes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vaedist.shard.format import SampleMeta, member_name, meta_size

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path, split, class_name", [
    ("train2017/000000000009.jpg", "train", None),
    ("images/apple_pie/1005649.jpg", "val", "apple_pie"),
    ("crème/brûlée 1.jpg", "train", "crème"),  # escaped by json.dumps (ensure_ascii)
    ('odd"name\\x.jpg', "train", 'a"b'),
    ("tab\there.jpg", "val", None),
])
def test_meta_size_is_the_length_of_the_encoded_json(path, split, class_name):
    assert meta_size(path, split, class_name) == len(SampleMeta(path, 12345, 99999, split, class_name).encode())


def test_reading_a_manifest_imports_no_torch():
    code = "import sys, vaedist.shard.format; print(sorted(m for m in ('torch',) if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("key", ["a.b", "a/b"])
def test_keys_with_dots_or_slashes_are_refused(key):
    with pytest.raises(ValueError):
        member_name(key, "jpg")
