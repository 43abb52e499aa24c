"""The embedded sample: real photographs laid out as COCO 2017 and Food-101 trees.

The package ships 14 public-domain / CC0 photographs (see CREDITS.md). From them we cut many different
crops (place, size, aspect ratio, JPEG quality all drawn from a seeded generator) so that the quickstart,
the tests and the benchmarks run on real JPEG photographs with no download:

    python -m vaedist.sample OUT_DIR            # OUT_DIR/coco/{train2017,val2017,test2017}, OUT_DIR/food-101/...

Food-101's classes are the colour photographs (each crop of one photograph is an instance of its class),
so latent projections coloured by class have something to show.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

PHOTOS_DIR = Path(__file__).parent / "photos"
FOOD_CLASSES = ["astronaut", "chelsea", "coffee", "hubble", "retina", "rocket"]  # colour photographs


def photo_paths() -> list[Path]:
    return sorted(PHOTOS_DIR.glob("*.jpg"))


def _crops(photo: Path, count: int, max_side: int, rng: random.Random) -> Iterator[tuple[Image.Image, int]]:
    """`count` different crops of one photograph, resized so the longer side is at most `max_side`."""
    with Image.open(photo) as src:
        src.load()
        w, h = src.size
        for _ in range(count):
            aspect = rng.uniform(0.65, 1.6)  # width / height
            area = rng.uniform(0.35, 1.0) * w * h
            cw = min(w, max(32, int(round((area * aspect) ** 0.5))))
            ch = min(h, max(32, int(round((area / aspect) ** 0.5))))
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = src.crop((x0, y0, x0 + cw, y0 + ch))
            # Upscale small crops too: COCO images are ~640 px on the longer side, Food-101's are 512
            side = rng.randint(max_side * 3 // 4, max_side)
            scale = side / max(cw, ch)
            crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            yield crop, rng.randint(75, 95)


@dataclass
class SampleSizes:
    coco_train: int = 160
    coco_test: int = 40
    coco_val: int = 48
    food_train_per_class: int = 24
    food_test_per_class: int = 8


def build_coco(root: Path, sizes: SampleSizes, layout: str = "official", seed: int = 0, max_side: int = 640) -> Path:
    """COCO 2017 tree: `official` = root/{train2017,val2017,test2017}; `seed` = root/coco_train2017/train2017, ...
    `max_side`: the crops' longer side is drawn from [3/4, 1] of it (COCO's images: 640; small JPEGs for
    scale benchmarks: e.g. 160)."""
    rng = random.Random(seed)
    photos = photo_paths()
    dirs = {
        "train2017": "train2017" if layout == "official" else "coco_train2017/train2017",
        "val2017": "val2017" if layout == "official" else "coco_valid2017/val2017",
        "test2017": "test2017" if layout == "official" else "coco_test2017/test2017",
    }
    counts = {"train2017": sizes.coco_train, "val2017": sizes.coco_val, "test2017": sizes.coco_test}
    image_id = 1
    for split, rel in dirs.items():
        out = root / rel
        out.mkdir(parents=True, exist_ok=True)
        per_photo = -(-counts[split] // len(photos))
        made = 0
        for photo in photos:
            for crop, quality in _crops(photo, per_photo, max_side, rng):
                if made == counts[split]:
                    break
                crop.save(out / f"{image_id:012d}.jpg", quality=quality)
                image_id += 1
                made += 1
    return root


def build_food101(root: Path, sizes: SampleSizes, seed: int = 1) -> Path:
    """Food-101 tree: root/images/<class>/<id>.jpg and root/meta/{classes,labels,train,test}.txt."""
    rng = random.Random(seed)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    train_lines, test_lines = [], []
    image_id = 100000
    for name in FOOD_CLASSES:
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        n = sizes.food_train_per_class + sizes.food_test_per_class
        for i, (crop, quality) in enumerate(_crops(PHOTOS_DIR / f"{name}.jpg", n, 512, rng)):
            crop.save(root / "images" / name / f"{image_id}.jpg", quality=quality)
            (train_lines if i < sizes.food_train_per_class else test_lines).append(f"{name}/{image_id}")
            image_id += 1
    (root / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in FOOD_CLASSES))
    (root / "meta" / "labels.txt").write_text("".join(f"{c.replace('_', ' ').title()}\n" for c in FOOD_CLASSES))
    (root / "meta" / "train.txt").write_text("".join(f"{x}\n" for x in train_lines))
    (root / "meta" / "test.txt").write_text("".join(f"{x}\n" for x in test_lines))
    return root


def build_full_size_jpegs(out: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 2) -> Path:
    """`count` COCO-sized (640x480) colour JPEG photographs in one folder, for loader benchmarks."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    photos = [p for p in photo_paths() if p.stem in FOOD_CLASSES]
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as src:
            img = src.convert("RGB")
        w, h = img.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        img.save(out / f"{i:012d}.jpg", quality=90)
    return out


def build_sample(out: Path, sizes: SampleSizes | None = None, coco_layout: str = "official") -> dict[str, Path]:
    sizes = sizes or SampleSizes()
    return {
        "coco": build_coco(Path(out) / "coco", sizes, layout=coco_layout),
        "food101": build_food101(Path(out) / "food-101", sizes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaedist.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to create coco/ and food-101/")
    parser.add_argument("--coco-layout", choices=["official", "seed"], default="official")
    defaults = SampleSizes()
    # Larger trees for the quality benchmark (docs/benchmarks.md: 60 / 20 crops per class)
    parser.add_argument("--food-train-per-class", type=int, default=defaults.food_train_per_class,
                        help=f"Food-101 training crops per class (default: {defaults.food_train_per_class})")
    parser.add_argument("--food-test-per-class", type=int, default=defaults.food_test_per_class,
                        help=f"Food-101 test crops per class (default: {defaults.food_test_per_class})")
    args = parser.parse_args(argv)
    if args.food_train_per_class < 1 or args.food_test_per_class < 1:
        parser.error("--food-train-per-class and --food-test-per-class must be at least 1")
    sizes = SampleSizes(food_train_per_class=args.food_train_per_class, food_test_per_class=args.food_test_per_class)
    trees = build_sample(args.out, sizes, coco_layout=args.coco_layout)
    for name, path in trees.items():
        print(f"{name}: {path}")
    return 0
