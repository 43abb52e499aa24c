"""Duplicates on real photographs (the embedded sample's 14 photographs): planted exact copies (same bytes, the
same pixels re-saved as PNG, a grey JPEG as RGB), planted near copies (resized, JPEG quality 10, cropped
2 %), distinct photographs that must not match, a train<->val leak; --dedup report and drop; the dedup
command across shard directories. The Hamming search itself: tests/test_hamming.py."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaedist.dedup import REPORT_NAME, SHEET_NAME, compare_shard_dirs
from vaedist.errors import UserError
from vaedist.sample import photo_paths
from vaedist.shard import duplicates, load_manifest, shard_dataset
from vaedist.shard.duplicates import DEFAULT_THRESHOLD
from vaedist.shard.format import DUPLICATES_NAME, manifest_path, read_duplicates
from vaedist.shard.table import read_table

REPO = Path(__file__).resolve().parents[1]
PHOTOS = {p.stem: p for p in photo_paths()}
VAL_ONLY = "coins"
# planted in train2017: name -> (photograph, how it was made, what it must be found as)
EXACT = {"astronaut_copy.jpg": "astronaut", "chelsea_resaved.png": "chelsea", "camera_rgb.png": "camera"}
NEAR = {"coffee_half.jpg": "coffee", "hubble_q10.jpg": "hubble", "rocket_crop2.jpg": "rocket"}
LEAKS = {"retina.jpg": ("retina", True), "clock_small.jpg": ("clock", False)}  # in val2017: (train photo, exact)


def _plant(root: Path) -> Path:
    train, val = root / "train2017", root / "val2017"
    train.mkdir(parents=True)
    val.mkdir()
    for stem, path in PHOTOS.items():
        shutil.copyfile(path, (val if stem == VAL_ONLY else train) / path.name)
    shutil.copyfile(PHOTOS["astronaut"], train / "astronaut_copy.jpg")  # same bytes
    with Image.open(PHOTOS["chelsea"]) as img:
        img.save(train / "chelsea_resaved.png")  # same pixels, another format
    with Image.open(PHOTOS["camera"]) as img:
        img.convert("RGB").save(train / "camera_rgb.png")  # a grey photograph as RGB: same pixels
    with Image.open(PHOTOS["coffee"]) as img:
        img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(train / "coffee_half.jpg", quality=90)
    with Image.open(PHOTOS["hubble"]) as img:
        img.save(train / "hubble_q10.jpg", quality=10)
    with Image.open(PHOTOS["rocket"]) as img:
        dx, dy = round(img.width * 0.02), round(img.height * 0.02)
        img.crop((dx, dy, img.width - dx, img.height - dy)).save(train / "rocket_crop2.jpg", quality=90)
    shutil.copyfile(PHOTOS["retina"], val / "retina.jpg")  # the same file in train and val
    with Image.open(PHOTOS["clock"]) as img:
        img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.BICUBIC).save(val / "clock_small.jpg",
                                                                                            quality=85)
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return _plant(tmp_path_factory.mktemp("planted") / "coco")


def _shard(root: Path, out: Path, **options):
    return shard_dataset("coco", root, out, workers=2, coco_train_dirs=("train2017",), shard_size="1MB",
                         progress=False, **options)


@pytest.fixture(scope="module")
def reported(planted, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("reported")
    return out, _shard(planted, out)


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((Path(a).name, Path(b).name))


def test_report_finds_every_planted_copy_and_no_distinct_photograph(reported):
    out, manifest = reported
    report = read_duplicates(out, manifest)
    assert report["threshold"] == DEFAULT_THRESHOLD
    train = report["within"]["train"]
    assert train["images"] == len(PHOTOS) - 1 + len(EXACT) + len(NEAR)
    assert {frozenset(Path(p).name for p in group) for group in train["exact_groups"]} == \
        {_pair(copy, PHOTOS[photo].name) for copy, photo in EXACT.items()}
    assert train["exact_copies"] == len(EXACT)
    # exactly the near copies: no two of the 13 distinct photographs (78 pairs) come within the threshold
    assert {_pair(p["a"], p["b"]) for p in train["near_pairs"]} == {_pair(c, PHOTOS[p].name) for c, p in NEAR.items()}
    assert report["within"]["val"]["exact_groups"] == [] and report["within"]["val"]["near_pairs"] == []
    (across,) = report["across"]
    assert (across["a"], across["b"], across["exact_pairs"], across["near_pairs"]) == ("train", "val", 1, 1)
    assert {(Path(p["a"]).name, Path(p["b"]).name, p["exact"]) for p in across["pairs"]} == \
        {(PHOTOS[photo].name, name, exact) for name, (photo, exact) in LEAKS.items()}


def test_json_members_carry_the_hashes_and_identical_pixels_share_one(reported, read_shards):
    out, manifest = reported
    by_path = {s["meta"]["path"]: s["meta"] for s in read_shards(out, manifest).values()}
    for copy, photo in EXACT.items():
        assert by_path[f"train2017/{copy}"]["exact"] == by_path[f"train2017/{PHOTOS[photo].name}"]["exact"]
    assert by_path["train2017/retina.jpg"]["exact"] == by_path["val2017/retina.jpg"]["exact"]
    assert len({meta["exact"] for meta in by_path.values()}) == len(by_path) - len(EXACT) - 1  # and retina
    assert all(len(meta["exact"]) == 32 and len(meta["phash"]) == 16 for meta in by_path.values())


def test_the_summary_names_the_duplicates(planted, tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaedist.shard", "coco", "--root", str(planted), "--out",
                             str(tmp_path), "--workers", "2", "--coco-train-dirs", "train2017"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "within train: 3 groups of identical images (3 extra copies), 3 near pairs" in result.stdout
    assert "train <-> val: 1 identical, 1 near" in result.stdout
    assert "val2017/retina.jpg" in result.stdout


def test_the_shard_directory_lists_the_first_pairs_and_counts_them_all(planted, reported, tmp_path, monkeypatch):
    """duplicates.json lists at most REPORT_LISTED groups or pairs of each kind (the first ones: exact, then the
    closest), while its counts and the dedup command's report stay whole. (A 160k-image set made of near copies
    had a 1.37 GB report, then in the manifest, before the cap.)"""
    rng = np.random.default_rng(0)
    base = int(rng.integers(0, 2**63))
    codes = np.array([base ^ sum(1 << int(b) for b in rng.choice(64, 4, replace=False)) for _ in range(40)],
                     np.uint64)  # each within 4 bits of one code: every pair within 8
    exact = rng.integers(0, 256, (40, 16), dtype=np.uint8)
    exact[[3, 9, 20]], exact[[5, 6]] = exact[3], exact[5]  # two groups of identical pixels
    exact = exact.view("V16").ravel()
    sets = [duplicates.HashSet(name, exact[rows], codes[rows], lambda found, name=name: [f"{name}/{r}" for r in found])
            for name, rows in (("train", slice(0, 30)), ("val", slice(30, 40)))]
    whole = duplicates.find_duplicates(sets).to_json()
    capped = duplicates.find_duplicates(sets, listed=5).to_json()
    train, whole_train = capped["within"]["train"], whole["within"]["train"]
    assert (train["exact_group_count"], train["exact_copies"]) == (2, 3) == (len(whole_train["exact_groups"]), 3)
    assert train["near_pair_count"] == len(whole_train["near_pairs"]) == 30 * 29 // 2 - 3 - 1
    assert train["near_pairs"] == whole_train["near_pairs"][:5] and len(train["near_pairs"]) == 5
    assert [p["distance"] for p in whole_train["near_pairs"]] == sorted(p["distance"] for p in whole_train["near_pairs"])
    (across,), (whole_across,) = capped["across"], whole["across"]
    assert across["near_pairs"] == whole_across["near_pairs"] == 300 and across["pairs"] == whole_across["pairs"][:5]
    assert capped["listed"] == 5 and whole["listed"] is None
    assert any("lists the first 5 of each kind" in line for line in duplicates.duplicates_summary(capped))

    # the sharder writes the capped report beside the manifest, which records its size and sha256
    monkeypatch.setattr("vaedist.shard.sharder.REPORT_LISTED", 1)
    manifest = _shard(planted, tmp_path / "out")
    data = (tmp_path / "out" / DUPLICATES_NAME).read_bytes()
    assert manifest.duplicates == {"name": DUPLICATES_NAME, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    report = json.loads(data)
    assert read_duplicates(tmp_path / "out", manifest) == report
    train = report["within"]["train"]
    assert report["listed"] == 1 and len(train["exact_groups"]) == len(train["near_pairs"]) == 1
    assert (train["exact_group_count"], train["near_pair_count"]) == (len(EXACT), len(NEAR))
    whole_train = read_duplicates(*reported)["within"]["train"]  # the default cap lists all of the planted ones
    assert train["near_pairs"] == whole_train["near_pairs"][:1] and train["exact_groups"] == whole_train["exact_groups"][:1]


def test_a_format_1_manifest_with_the_report_inside_still_reads_and_a_changed_report_is_one_line(reported, tmp_path):
    out, manifest = reported
    old = Path(shutil.copytree(out, tmp_path / "old"))
    raw = json.loads(manifest_path(old).read_text())
    raw["format"], raw["duplicates"] = 1, json.loads((old / DUPLICATES_NAME).read_text())  # as vaedist wrote it before
    (old / DUPLICATES_NAME).unlink()
    manifest_path(old).write_text(json.dumps(raw))
    assert read_duplicates(old, load_manifest(old)) == read_duplicates(out, manifest)
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    report = copy / DUPLICATES_NAME
    report.write_text(report.read_text().replace('"threshold": 8', '"threshold": 9'))  # same size, other bytes
    with pytest.raises(UserError, match="duplicates.json.*sha256") as err:
        read_duplicates(copy, load_manifest(copy))
    assert "\n" not in str(err.value)
    report.unlink()
    with pytest.raises(UserError, match="duplicates.json.*cannot be read"):
        read_duplicates(copy, load_manifest(copy))


def test_drop_removes_copies_and_every_train_image_that_matches_val_while_val_keeps_all(planted, tmp_path,
                                                                                      read_shards, dali_read_all):
    manifest = _shard(planted, tmp_path, dedup="drop")
    dropped = {Path(d["path"]).name: d["reason"] for d in manifest.dropped}
    assert len(dropped) == len(EXACT) + len(NEAR) + len(LEAKS)
    assert dropped["retina.jpg"] == "same pixels as val val2017/retina.jpg"
    assert dropped["clock.jpg"].startswith("near copy (perceptual distance") and "val2017/clock_small.jpg" in dropped["clock.jpg"]
    assert all(d["path"].startswith("train2017/") for d in manifest.dropped)
    assert manifest.splits["val"].samples == 3  # evaluation untouched
    kept = {Path(s["meta"]["path"]).name for s in read_shards(tmp_path, manifest).values() if s["split"] == "train"}
    # one of each copy and its photograph is kept (which one: the first in the shuffled plan)
    for copy, photo in {**EXACT, **NEAR}.items():
        assert len(kept & {copy, PHOTOS[photo].name}) == 1
    assert manifest.splits["train"].samples == len(kept) == len(PHOTOS) - 1 - len(LEAKS)
    table = read_table(tmp_path, manifest, "train", columns=("key",))
    assert len(table) == len(kept) == len(dali_read_all(tmp_path, manifest, "train", ["jpg", "json"]))
    assert read_duplicates(tmp_path, manifest)["across"][0]["pairs"] == []  # nothing left to leak


def test_dedup_command_compares_shard_directories_from_their_tables(reported, planted, tmp_path):
    out, _ = reported
    other = tmp_path / "other"  # a second dataset sharing one photograph (re-encoded) with the first
    (other / "train2017").mkdir(parents=True)
    (other / "val2017").mkdir()
    with Image.open(PHOTOS["hubble"]) as img:
        img.save(other / "train2017" / "hubble_again.jpg", quality=70)
    shutil.copyfile(PHOTOS["ihc"], other / "val2017" / "ihc.jpg")
    _shard(other, tmp_path / "other_shards")
    result = subprocess.run([sys.executable, "-m", "vaedist.dedup", str(out), str(tmp_path / "other_shards"),
                             "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / REPORT_NAME).read_text())
    across = {(a["a"], a["b"]): {(Path(p["a"]).name, Path(p["b"]).name) for p in a["pairs"]} for a in report["across"]}
    assert across[(f"{out}:train", f"{tmp_path / 'other_shards'}:train")] == {("hubble.jpg", "hubble_again.jpg"),
                                                                              ("hubble_q10.jpg", "hubble_again.jpg")}
    assert across[(f"{out}:train", f"{tmp_path / 'other_shards'}:val")] == {("ihc.jpg", "ihc.jpg")}
    with Image.open(tmp_path / "report" / SHEET_NAME) as sheet:  # one row per near pair shown, both thumbnails
        near = sum(len(f["near_pairs"]) for f in report["within"].values()) + \
            sum(not p["exact"] for a in report["across"] for p in a["pairs"])
        assert sheet.format == "PNG" and sheet.height >= near * 160


def test_dedup_command_on_shards_without_hashes_is_one_line(sample_trees, tmp_path):
    shard_dataset("food101", sample_trees["food101"], tmp_path / "plain", workers=2, dedup="off", progress=False)
    result = subprocess.run([sys.executable, "-m", "vaedist.dedup", str(tmp_path / "plain"), "--out",
                             str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--dedup off" in result.stderr
    assert not (tmp_path / "report").exists()


def test_dedup_command_refuses_tables_hashed_with_the_previous_perceptual_hash(reported, tmp_path):
    # Table version 1 held perceptual hashes of a box average over every pixel; version 2 of a sampled grid:
    # ~2 bits apart for the same photograph, so comparing the two would miss copies silently
    out, _ = reported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads(manifest_path(old).read_text())
    for split in manifest["splits"].values():
        split["table"]["version"] = 1
    manifest_path(old).write_text(json.dumps(manifest))
    result = subprocess.run([sys.executable, "-m", "vaedist.dedup", str(out), str(old), "--out",
                             str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "version 1" in result.stderr and "--overwrite" in result.stderr
    assert not (tmp_path / "report").exists()
