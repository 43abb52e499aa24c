"""The sharder end to end, on the embedded photographs laid out as COCO, Food-101 and folder trees salted with
every kind of bad input; shards read back with tarfile and with DALI's own CPU webdataset reader."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaedist.errors import UserError
from vaedist.sample import build_full_size_jpegs, photo_paths
from vaedist.shard import jpegrows, load_manifest, shard_dataset
from vaedist.shard.format import Manifest

LOWERED_PIXEL_LIMIT = 1_000_000  # above every sample photo (<= 640 px a side), below the salted bomb
REPO = Path(__file__).resolve().parents[1]

# Salted inputs and what must become of them: a reason prefix (rejected) or the stored JPEG's mode (kept).
BAD = {
    "bad_empty.jpg": "empty file",
    "bad_truncated.jpg": "truncated",
    "bad_text.jpg": "not an image",
    "bad_corrupt.jpg": "corrupt",
    "bad_bomb.png": "over the pixel limit",
}
CONVERTED = {"cmyk.jpg": "RGB", "palette.png": "RGB", "rgba.png": "RGB", "grey16.png": "RGB", "photo.webp": "RGB",
             "rotated.jpg": "RGB"}
COPIED = {"grey.jpg": "L"}
IGNORED = ("notes.txt", "nested/000000999999.jpg")


def salt(directory: Path) -> None:
    """Write every kind of good-but-unusual and bad input into `directory` (see BAD, CONVERTED, COPIED, IGNORED)."""
    with Image.open(photo_paths()[0]) as src:
        photo = src.convert("RGB").crop((0, 0, 300, 180))
    good = io.BytesIO()
    photo.save(good, "JPEG", quality=90)
    data = good.getvalue()
    (directory / "bad_empty.jpg").write_bytes(b"")
    (directory / "bad_truncated.jpg").write_bytes(data[: len(data) // 2])
    (directory / "bad_text.jpg").write_text("not a picture\n")
    noisy = bytearray(data)
    noisy[len(data) // 3 : len(data) // 3 + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    (directory / "bad_corrupt.jpg").write_bytes(bytes(noisy))
    Image.new("RGB", (2000, 2000), (30, 90, 200)).save(directory / "bad_bomb.png")
    photo.convert("CMYK").save(directory / "cmyk.jpg", quality=95)
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(directory / "palette.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(directory / "rgba.png")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(directory / "grey16.png")
    photo.save(directory / "photo.webp", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display": stored 300x180, shown 180x300
    photo.save(directory / "rotated.jpg", quality=92, exif=exif)
    photo.convert("L").save(directory / "grey.jpg", quality=90)
    (directory / "notes.txt").write_text("a README next to the images\n")
    (directory / "nested").mkdir()
    photo.save(directory / "nested" / "000000999999.jpg")


@pytest.fixture(scope="module")
def salted_coco(sample_trees, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("salted") / "coco"
    shutil.copytree(sample_trees["coco"], root)
    salt(root / "train2017")
    return root


@pytest.fixture(scope="module")
def coco_shards(salted_coco, tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("coco_shards")
    manifest = shard_dataset("coco", salted_coco, out, workers=2, shard_size="1MB", seed=3,
                             max_pixels=LOWERED_PIXEL_LIMIT, progress=False)
    return out, manifest


def test_salted_coco_keeps_every_valid_image_and_reports_every_bad_one(salted_coco, coco_shards, read_shards):
    out, manifest = coco_shards
    originals = {p.relative_to(salted_coco).as_posix() for d in ("train2017", "test2017", "val2017")
                 for p in (salted_coco / d).glob("0*.jpg")}
    kept = {f"train2017/{name}" for name in {**CONVERTED, **COPIED}}
    samples = read_shards(out, manifest)
    by_path = {s["meta"]["path"]: s for s in samples.values()}

    assert set(by_path) == originals | kept
    assert manifest.splits["train"].samples == 40 + 12 + len(kept)
    assert manifest.splits["val"].samples == 16
    assert {s["meta"]["split"] for s in by_path.values() if s["meta"]["path"].startswith("val2017/")} == {"val"}
    assert {s["split"] for s in by_path.values() if s["meta"]["path"].startswith("val2017/")} == {"val"}
    assert len(manifest.splits["train"].shards) >= 3  # 1 MB shards: the split is really cut
    assert load_manifest(out) == manifest
    # Every rejected input is listed once with its reason; ignored files are not inputs at all.
    assert {s["path"]: s["reason"].split(" (")[0] for s in manifest.skipped} == {
        f"train2017/{name}": reason for name, reason in BAD.items()}
    # Keys: unique by construction of the dict above, and without dots; unlabelled: no cls component.
    assert all("." not in key and "/" not in key for key in samples)
    assert all(set(s) == {"split", "shard", "jpg", "json", "meta"} for s in samples.values())
    assert manifest.classes is None
    # What is stored is a JPEG Pillow decodes at the recorded (upright) size, in the expected mode.
    for path, sample in by_path.items():
        img = Image.open(io.BytesIO(sample["jpg"]))
        assert img.format == "JPEG"
        assert img.size == (sample["meta"]["width"], sample["meta"]["height"]), path
        name = path.split("/")[-1]
        if name.startswith("0") or name in COPIED:  # clean JPEGs (RGB or grey): the published bytes, unchanged
            assert sample["jpg"] == (salted_coco / path).read_bytes()
        else:
            assert img.mode == CONVERTED[name]
    assert by_path["train2017/rotated.jpg"]["meta"]["width"] == 180  # stored 300x180, orientation applied


def test_dali_reads_every_shard_with_our_index_and_gets_the_manifest_count(coco_shards, dali_read_all):
    out, manifest = coco_shards
    for split in ("train", "val"):
        rows = dali_read_all(out, manifest, split, ["jpg", "json"])
        assert len(rows) == manifest.splits[split].samples
        metas = [json.loads(bytes(row[1])) for row in rows]
        assert len({m["path"] for m in metas}) == len(rows)  # no duplicates in one epoch
        for image, meta in zip((r[0] for r in rows), metas):
            assert image.shape[:2] == (meta["height"], meta["width"]) and image.shape[2] == 3


def test_samples_are_shuffled_across_shards_reproducibly(salted_coco, coco_shards, tmp_path):
    out, manifest = coco_shards
    again = shard_dataset("coco", salted_coco, tmp_path / "again", workers=1, shard_size="1MB", seed=3,
                          max_pixels=LOWERED_PIXEL_LIMIT, progress=False)
    assert [s.sha256 for s in again.splits["train"].shards] == [s.sha256 for s in manifest.splits["train"].shards]
    with tarfile.open(out / manifest.splits["train"].shards[0].name) as tar:
        paths = [json.loads(tar.extractfile(m).read())["path"] for m in tar.getmembers() if m.name.endswith(".json")]
    assert paths != sorted(paths)
    assert {p.split("/")[0] for p in paths} == {"train2017", "test2017"}  # both training folders mixed


def test_hashing_in_a_thread_writes_the_same_shards_and_their_true_sha256(sample_trees, tmp_path, monkeypatch):
    """Many workers: the writer hashes in a thread of its own; byte-identical shards, manifest sha256 exact."""
    import hashlib

    from vaedist.shard import sharder

    root = sample_trees["food101"]
    inline = shard_dataset("food101", root, tmp_path / "inline", workers=2, shard_size="400KB", progress=False)
    monkeypatch.setattr(sharder, "HASH_THREAD_FROM_WORKERS", 2)
    threaded = shard_dataset("food101", root, tmp_path / "threaded", workers=2, shard_size="400KB", progress=False)
    assert len(threaded.splits["train"].shards) > 1
    for split in ("train", "val"):
        assert threaded.splits[split].shards == inline.splits[split].shards  # names, counts, bytes, sha256
        for shard in threaded.splits[split].shards:
            assert shard.sha256 == hashlib.sha256((tmp_path / "threaded" / shard.name).read_bytes()).hexdigest()


def test_seed_layout_gives_the_same_images_as_the_official_layout(sample_trees, tmp_path, read_shards):
    manifest = shard_dataset("coco", sample_trees["coco_seed"], tmp_path, workers=2, progress=False)
    paths = {s["meta"]["path"] for s in read_shards(tmp_path, manifest).values()}
    assert manifest.splits["train"].samples == 52 and manifest.splits["val"].samples == 16
    assert {p.rsplit("/", 1)[0] for p in paths} == {"coco_train2017/train2017", "coco_test2017/test2017",
                                                    "coco_valid2017/val2017"}
    assert manifest.skipped == []


def test_food101_label_is_the_line_index_in_classes_txt_and_missing_images_are_reported(sample_trees, tmp_path, read_shards, dali_read_all):
    root = tmp_path / "food-101"
    shutil.copytree(sample_trees["food101"], root)
    classes = (root / "meta" / "classes.txt").read_text().split()
    train_lines = (root / "meta" / "train.txt").read_text().split()
    (root / "images" / f"{train_lines[0]}.jpg").unlink()  # listed in train.txt, missing on disk
    with open(root / "meta" / "test.txt", "a") as fh:
        fh.write(f"{classes[2]}/999999\n")
    out = tmp_path / "out"
    manifest = shard_dataset("food101", root, out, workers=2, shard_size="400KB", progress=False)

    assert manifest.classes == classes
    assert manifest.splits["train"].samples == 6 * 10 - 1 and manifest.splits["val"].samples == 6 * 4
    assert {s["path"]: s["reason"] for s in manifest.skipped} == {
        f"images/{train_lines[0]}.jpg": "listed in meta/train.txt but the image is missing",
        f"images/{classes[2]}/999999.jpg": "listed in meta/test.txt but the image is missing",
    }
    samples = read_shards(out, manifest).values()
    for sample in samples:
        class_dir = sample["meta"]["path"].split("/")[1]
        assert int(sample["cls"]) == classes.index(class_dir)
        assert sample["meta"]["class"] == class_dir
    # webdataset's own reader (the reference loader's) groups the members into the same samples
    import webdataset as wds

    urls = [str(out / s.name) for s in manifest.splits["train"].shards]
    read_back = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(read_back) == manifest.splits["train"].samples
    assert all({"jpg", "cls", "json"} <= set(sample) for sample in read_back)
    dali_labels = [int(bytes(row[1])) for row in dali_read_all(out, manifest, "val", ["jpg", "cls"])]
    assert sorted(dali_labels) == sorted(int(s["cls"]) for s in samples if s["split"] == "val")


def test_folder_classes_are_sorted_subfolders_and_val_fraction_splits_each_class(sample_trees, tmp_path, read_shards):
    root = tmp_path / "photos"
    for class_dir in sorted((sample_trees["food101"] / "images").iterdir(), reverse=True):
        shutil.copytree(class_dir, root / f"z_{class_dir.name}" if class_dir.name == "astronaut" else
                        root / class_dir.name)
    (root / "empty_class").mkdir()  # no images: not a class
    salt(root / "coffee")  # salted files inside a class (nested/ is a deeper folder of the same class there)
    manifest = shard_dataset("folder", root, tmp_path / "out", workers=2, val_fraction=0.25,
                             max_pixels=LOWERED_PIXEL_LIMIT, progress=False)
    assert manifest.classes == ["chelsea", "coffee", "hubble", "retina", "rocket", "z_astronaut"]
    samples = list(read_shards(tmp_path / "out", manifest).values())
    per_class_val = {}
    for s in samples:
        assert manifest.classes[int(s["cls"])] == s["meta"]["path"].split("/")[0] == s["meta"]["class"]
        per_class_val.setdefault(s["meta"]["class"], []).append(s["split"] == "val")
    assert {c: sum(v) for c, v in per_class_val.items() if c != "coffee"} == {c: 4 for c in manifest.classes
                                                                              if c != "coffee"}
    assert len(per_class_val["coffee"]) == 14 + len(CONVERTED) + len(COPIED) + 1  # + nested/ photo
    assert sorted(s["path"] for s in manifest.skipped) == sorted(f"coffee/{name}" for name in BAD)


def test_max_side_stores_downscaled_images_with_original_size_in_meta(sample_trees, tmp_path, read_shards):
    manifest = shard_dataset("food101", sample_trees["food101"], tmp_path, workers=2, max_side=96, progress=False)
    samples = read_shards(tmp_path, manifest).values()
    assert len(samples) == 84
    for sample in samples:
        img = Image.open(io.BytesIO(sample["jpg"]))
        width, height = sample["meta"]["width"], sample["meta"]["height"]
        assert max(img.size) == min(96, max(width, height))
        assert abs(img.size[0] / img.size[1] - width / height) < 0.05
    assert manifest.options["max_side"] == 96


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaedist.shard", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_root_with_neither_coco_layout_is_a_one_line_error(tmp_path):
    (tmp_path / "images").mkdir()
    result = _run_cli("coco", "--root", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "train2017" in result.stderr and "coco_train2017/train2017" in result.stderr
    assert not (tmp_path / "out").exists()


def test_val_fraction_outside_the_folder_layout_is_refused_not_ignored(sample_trees, tmp_path):
    from vaedist.errors import UserError
    from vaedist.shard import shard_dataset

    with pytest.raises(UserError, match="--val-fraction is for the folder layout; food101 has its own"):
        shard_dataset("food101", sample_trees["food101"], tmp_path / "out", val_fraction=0.2, progress=False)
    assert not (tmp_path / "out").exists()


def test_no_valid_image_is_an_error_and_leaves_nothing_behind(tmp_path):
    root = tmp_path / "junk" / "only_class"
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"")
    (root / "b.png").write_text("not a png")
    result = _run_cli("folder", "--root", str(tmp_path / "junk"), "--out", str(tmp_path / "out"), "--workers", "1",
                      "--no-progress")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no valid image" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_rerun_on_complete_output_says_so_and_changes_nothing(sample_trees, tmp_path):
    args = ("food101", "--root", str(sample_trees["food101"]), "--out", str(tmp_path), "--workers", "2",
            "--shard-size", "500KB")
    assert _run_cli(*args).returncode == 0
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.iterdir()}
    splits = load_manifest(tmp_path).splits.values()
    assert sorted(before) == sorted(["manifest.json", "duplicates.json"] + [n for s in splits for n in (s.table.name, s.hashes.name)]
                                    + [n for s in splits for sh in s.shards for n in (sh.name, sh.index)])
    again = _run_cli(*args)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in tmp_path.iterdir()} == before
    other = _run_cli(*args[:-1], "1MB")  # other options: refuse rather than mix two runs
    assert other.returncode != 0 and "--overwrite" in other.stderr
    assert _run_cli(*args[:-1], "1MB", "--overwrite").returncode == 0
    assert load_manifest(tmp_path).options["shard_size"] == 1_000_000


def test_wrong_options_are_user_errors(sample_trees, tmp_path):
    for bad in ({"shard_size": "12 parsecs"}, {"val_fraction": 1.5}, {"max_side": 0}, {"workers": 0}):
        with pytest.raises(UserError):
            shard_dataset("folder", sample_trees["food101"] / "images", tmp_path, progress=False, **bad)
    with pytest.raises(UserError, match="coco-train-dirs"):
        shard_dataset("coco", sample_trees["coco"], tmp_path, coco_train_dirs=("train2017", "test2015"),
                      progress=False)
    assert not any(tmp_path.iterdir())


def test_max_side_shards_are_cut_at_the_target_size_of_stored_bytes(sample_trees, tmp_path):
    # Stored 64 px JPEGs are ~50x smaller than the sources: the plan must use the probe's ratio, not file sizes.
    manifest = shard_dataset("coco", sample_trees["coco"], tmp_path, workers=2, max_side=64, shard_size="40KB",
                             progress=False)
    shards = manifest.splits["train"].shards
    assert len(shards) >= 3
    assert all(20_000 < s.bytes < 80_000 for s in shards[:-1]), [s.bytes for s in shards]


def test_bench_prints_both_rates_and_the_parallel_efficiency():
    result = subprocess.run([sys.executable, "-m", "vaedist.bench", "shard", "--images", "24", "--repeats", "1",
                             "--workers", "2"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "single-process decode" in result.stdout and "sharder, 2 workers" in result.stdout
    assert "parallel efficiency" in result.stdout and "--dedup report adds" in result.stdout
    assert "chunks in turn (1 pairs of passes): hashing adds" in result.stdout
    assert "on Pillow's decode instead (not the row decode), hashing adds" in result.stdout
    assert "the row decode of clean JPEGs" in result.stdout and "as each row is decoded" in result.stdout
    memory, rows = jpegrows.xxh3_variants()
    assert f"xxh3's {rows} code, {memory} for an image in memory" in result.stdout
    # on a CPU with AVX-512 the rows' AVX2 is set beside it
    assert (f"the rows hashed by xxh3's {memory} code instead of its {rows} code" in result.stdout) == (memory != rows)
    # the costs left out of the rows, the search at the end of a COCO-sized run among them
    assert "they and the duplicate search at its end" in result.stdout
    assert "random codes, multi-index hashing)" in result.stdout and "faiss" not in result.stdout


@pytest.mark.gpu
def test_gpu_decoder_renders_every_stored_jpeg_like_pillow(coco_shards):
    """nvJPEG (DALI `mixed`) and Pillow agree on every stored JPEG, converted ones included."""
    from nvidia.dali import fn, pipeline_def, types

    out, manifest = coco_shards
    shards = manifest.splits["train"].shards

    @pipeline_def(batch_size=8, num_threads=2, device_id=0)
    def read():
        jpg, meta = fn.readers.webdataset(paths=[str(out / s.name) for s in shards],
                                          index_paths=[str(out / s.index) for s in shards], ext=["jpg", "json"],
                                          missing_component_behavior="error", name="reader")
        return fn.decoders.image(jpg, device="mixed", output_type=types.RGB), jpg, meta

    pipe = read()
    pipe.build()
    epoch, seen = pipe.reader_meta("reader")["epoch_size"], 0
    while seen < epoch:
        images, jpgs, metas = pipe.run()
        images = images.as_cpu()
        for i in range(len(jpgs)):
            if seen == epoch:
                break
            seen += 1
            meta = json.loads(bytes(np.array(metas.at(i))))
            reference = np.asarray(Image.open(io.BytesIO(np.array(jpgs.at(i)).tobytes())).convert("RGB"), np.float32)
            decoded = np.array(images.at(i), dtype=np.float32)
            assert decoded.shape == reference.shape == (meta["height"], meta["width"], 3), meta["path"]
            assert np.abs(decoded - reference).mean() < 2.0, meta["path"]
    assert seen == manifest.splits["train"].samples


def test_unfinished_run_with_other_inputs_and_a_concurrent_sharder_are_refused(sample_trees, tmp_path):
    from vaedist.shard.state import OutputDir

    output = OutputDir.create(tmp_path)
    with output.exclusive():  # another sharder holds the directory
        with pytest.raises(UserError, match="another sharder"):
            shard_dataset("food101", sample_trees["food101"], tmp_path, workers=1, progress=False)
    output.write_state(fingerprint="inputs of some other run", bytes_ratio=1.0)
    with pytest.raises(UserError, match="unfinished run with other inputs"):
        shard_dataset("food101", sample_trees["food101"], tmp_path, workers=1, progress=False)
    manifest = shard_dataset("food101", sample_trees["food101"], tmp_path, workers=1, progress=False, overwrite=True)
    assert manifest.splits["train"].samples == 60
    assert not (tmp_path / ".vaedist-shard-state.json").exists()


def test_decoding_runs_at_most_a_few_chunks_ahead_of_the_writer(sample_trees, tmp_path, monkeypatch):
    """Memory stays bounded whatever the dataset size: workers never race ahead of the tar writer."""
    from concurrent.futures import ProcessPoolExecutor

    from vaedist.shard import workers
    from vaedist.shard.images import ImageOptions
    from vaedist.shard.plan import plan_shards
    from vaedist.shard.sources import SourceOptions, list_source, sample_keys
    from vaedist.shard.state import OutputDir

    class CountingPool(ProcessPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            CountingPool.submitted += 1
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(workers, "CHUNKSIZE", 8)  # the sample's 84 images: more chunks than the window
    listing = list_source("food101", sample_trees["food101"], SourceOptions())
    plan = plan_shards(listing, seed=0, shard_size=10**9, bytes_ratio=1.0)
    tasks = workers.chunk_tasks(OutputDir(tmp_path), listing, sample_keys([s.path for s in listing.samples]), plan)
    window = workers.IN_FLIGHT_PER_WORKER * 1
    chunks = images = 0
    with CountingPool(1) as pool:
        for chunk in workers.pack_in_parallel(pool, 1, tasks, ImageOptions()):
            chunks += 1
            images += len(chunk.samples) + len(chunk.skipped)
            assert CountingPool.submitted <= chunks + window
            assert len(list(tmp_path.glob(".*.part*.tmp"))) <= window + 1  # parts on disk are bounded too
            Path(chunk.part).unlink()
    assert images == len(listing.samples) and chunks > window + 1


@pytest.mark.parametrize("dataset", ["coco", "folder"])  # unlabelled: .jpg + .json; labelled: .cls + .jpg + .json
def test_shards_meet_their_target_size_with_and_without_labels(tmp_path, dataset):
    """The planner counts the tar members a sample really has: every shard but the last of a split comes out
    within a few per cent of --shard-size. Tiny JPEGs (~1 KB), so that the members' headers weigh."""
    root, target = tmp_path / dataset, 600_000
    if dataset == "coco":
        build_full_size_jpegs(root / "train2017", 900, size=(48, 36))
        build_full_size_jpegs(root / "val2017", 4, size=(48, 36))
    else:
        for number, name in enumerate(("apple", "banana")):
            build_full_size_jpegs(root / name, 450, size=(48, 36), seed=number)
    manifest = shard_dataset(dataset, root, tmp_path / "out", workers=1, shard_size=target,
                             coco_train_dirs=("train2017",), progress=False)
    assert manifest.labelled == (dataset == "folder")
    sizes = [shard.bytes for shard in manifest.splits["train"].shards]
    assert len(sizes) >= 4
    assert all(0.97 * target <= size <= 1.01 * target for size in sizes[:-1]), sizes


def test_progress_bar_counts_every_input_and_the_summary_lists_the_rejected(sample_trees, tmp_path):
    root = tmp_path / "food-101"
    shutil.copytree(sample_trees["food101"], root)
    train_lines = (root / "meta" / "train.txt").read_text().split()
    (root / "images" / f"{train_lines[0]}.jpg").write_bytes(b"")  # an input the workers reject
    result = _run_cli("food101", "--root", str(root), "--out", str(tmp_path / "out"), "--workers", "2",
                      "--shard-size", "400KB")
    assert result.returncode == 0, result.stderr
    assert "84/84" in result.stderr  # tqdm's bar: every input counted, the rejected one too
    assert f"images/{train_lines[0]}.jpg: empty file" in result.stdout
    assert "train: 59 samples" in result.stdout


def _odd_tree(root: Path) -> dict[str, str]:
    """Two classes of photos plus every kind of entry a walk can trip on; returns path -> expected reason."""
    photos = photo_paths()
    for cls, picks in (("a", photos[:3]), ("b", photos[3:5])):
        (root / cls).mkdir(parents=True)
        for p in picks:
            shutil.copy(p, root / cls / p.name)
    os.symlink(".", root / "a" / "self")  # a/self/self/... : ELOOP after ~40 levels before
    os.symlink("..", root / "a" / "up")  # back to the root: every class again, forever
    os.symlink(".", root / "top")  # a "class" that is the root itself
    os.symlink("nowhere.jpg", root / "b" / "dangling.jpg")
    os.symlink("loop.jpg", root / "b" / "loop.jpg")  # a link to itself
    os.mkfifo(root / "b" / "fifo.jpg")  # opened for reading, it would block the sharder for ever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "b" / "sock.jpg"))
    server.close()
    os.symlink("/dev/null", root / "b" / "null.jpg")
    return {"a/self": "symlink loop", "a/up": "symlink loop", "top": "symlink loop",
            "b/dangling.jpg": "dangling symlink", "b/loop.jpg": "symlink loop", "b/fifo.jpg": "not a regular file (a FIFO)",
            "b/sock.jpg": "not a regular file (a socket)", "b/null.jpg": "not a regular file (a character device)"}


def test_symlink_loops_and_special_files_are_listed_as_skipped_and_never_block(tmp_path, read_shards):
    expected = _odd_tree(tmp_path / "tree")
    result = _run_cli("folder", "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "out"), "--workers", "1",
                      "--no-progress")  # _run_cli's timeout turns a hang into a failure
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    manifest = load_manifest(tmp_path / "out")
    assert manifest.classes == ["a", "b"] and manifest.splits["train"].samples == 5
    skipped = {s["path"]: s["reason"] for s in manifest.skipped}
    assert set(skipped) == set(expected)
    for path, reason in expected.items():
        assert skipped[path].startswith(reason), (path, skipped[path])
    packed = sorted(s["meta"]["path"] for s in read_shards(tmp_path / "out", manifest).values())
    assert packed == sorted(f"{c}/{p.name}" for c, picks in (("a", photo_paths()[:3]), ("b", photo_paths()[3:5]))
                            for p in picks)


@pytest.mark.timeout(30)  # reading a FIFO blocks: a regression hangs, and this turns it into a failure
def test_a_fifo_put_in_place_of_an_image_after_listing_is_rejected_without_blocking(tmp_path):
    from vaedist.shard.images import ImageOptions, ImageRejected, prepare_image

    os.mkfifo(tmp_path / "late.jpg")
    with pytest.raises(ImageRejected, match="not a regular file"):
        prepare_image(tmp_path / "late.jpg", ImageOptions())


def test_val_fraction_holds_out_validated_images_only_and_resumes_to_the_same_split(tmp_path, monkeypatch, read_shards):
    root = tmp_path / "photos"
    (root / "only").mkdir(parents=True)
    for p in photo_paths()[:10]:
        shutil.copy(p, root / "only" / p.name)
    for i in range(3000):  # empty files sorted among the photos, far more of them than of photos
        (root / "only" / f"e{i:05d}.jpg").write_bytes(b"")
    manifest = shard_dataset("folder", root, tmp_path / "out", workers=2, val_fraction=0.2, seed=3, progress=False)
    assert manifest.splits["val"].samples == 2 and manifest.splits["train"].samples == 8  # 20 % of the 10 photos
    assert len(manifest.skipped) == 3000 and {s["reason"] for s in manifest.skipped} == {"empty file"}
    held_out = sorted(s["meta"]["path"] for s in read_shards(tmp_path / "out", manifest).values() if s["split"] == "val")

    # Killed after its validation pass, the run resumes from the state it left: the same split, no second draw.
    import vaedist.shard.sharder as sharder

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sharder, "_write_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        shard_dataset("folder", root, tmp_path / "again", workers=1, val_fraction=0.2, seed=3, progress=False)
    monkeypatch.undo()

    def validate_again(*args, **kwargs):
        raise AssertionError("a resumed run must take the rejected inputs from its state")
    monkeypatch.setattr(sharder, "rejected_inputs", validate_again)
    resumed = shard_dataset("folder", root, tmp_path / "again", workers=1, val_fraction=0.2, seed=3, progress=False)
    assert resumed.splits == manifest.splits  # same shards, byte for byte (sha256)
    assert sorted(s["meta"]["path"] for s in read_shards(tmp_path / "again", resumed).values()
                  if s["split"] == "val") == held_out
