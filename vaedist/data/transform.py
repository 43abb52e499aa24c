"""The one description of the seed's image transform, shared by the DALI pipeline, the reference loader and
the decode-once cache.

Seed (`data/data_loader.py`): CenterCrop(375) -> Resize(64x64) -> RandomHorizontalFlip (train only) ->
ToTensor -> grey to 3 channels -> Normalize(0.5, 0.5). Ours, in order:

1. decode to RGB (grey and CMYK become 3 channels; the sharder already wrote upright JPEGs);
2. centre crop of `crop` x `crop` pixels **of the original image**. On shards written with `--max-side`,
   the window is scaled per axis by stored/original size (the sample's json holds the original size), so
   both kinds of shard show the same view. Where the image is smaller than the window the missing border
   is **zero (black) padding**, as the seed's torchvision CenterCrop does. The window is torchvision's
   exactly (rounding and padding split included: `centre_crop_window`), shared by both backends, and so
   by the cache, which stores what they decode;
3. resize to `size` x `size`, bilinear with antialiasing, rounded to uint8 like the seed's PIL image:
   Pillow's BILINEAR (reference), torch's uint8 antialiased bilinear, which follows Pillow's filter (after
   DALI's CPU decoding: 4x faster than DALI's `fn.resize` there), DALI's linear+antialias (GPU). This
   uint8 [N, 3, size, size] is what the cache stores;
4. random horizontal flip (training only) and normalisation to [-1, 1] (mean 0.5, std 0.5), in torch on
   the training device by `flip_and_normalise` — one implementation for every source, so a cached
   epoch equals an uncached one bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from vaedist.config import DataConfig

MEAN = 0.5  # seed Normalize(mean=0.5, std=0.5) on [0, 1] values => x / 127.5 - 1 on uint8
STD = 0.5


@dataclass(frozen=True)
class TransformSpec:
    crop: int  # centre crop side, in pixels of the original image
    size: int  # output side
    flip: bool  # random horizontal flip (only ever applied when training)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "TransformSpec":
        return cls(crop=cfg.crop, size=cfg.size, flip=cfg.flip)


def centre_crop_window(width: ArrayLike, height: ArrayLike, orig_width: ArrayLike, orig_height: ArrayLike,
                       crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x0, y0, w, h) of the centre crop in stored pixels, int64 arrays of the inputs' shape; x0/y0 < 0 means
    zero padding on that side. Numpy, so that one formula serves a whole DALI batch and one Pillow image.

    In pixels of the ORIGINAL image it is torchvision's `CenterCrop` window exactly (`_original_window`). On a
    `--max-side` shard the stored image is the original resampled to (width, height): Pillow's resize maps
    the original's whole extent onto the stored one, so original coordinate u is stored coordinate
    u * width / orig_width. Each edge of the window is scaled so and rounded to the nearest stored pixel
    boundary (np.round: half to even, like Python's round). That is the closest integer window: each edge
    is at most half a stored pixel from the exact view (at --max-side 160 on a 512-px Food-101 image: 1.6
    original pixels, a quarter of an output pixel at size 64), where rounding the size and the offset
    separately could put the far edge a whole stored pixel off. On full-size shards (width == orig_width)
    the scale is 1 and the window is torchvision's, pixel for pixel.
    """
    x0, x1 = (np.round(edge * (np.asarray(width, np.float64) / np.asarray(orig_width, np.float64)))
              for edge in _original_window(orig_width, crop))
    y0, y1 = (np.round(edge * (np.asarray(height, np.float64) / np.asarray(orig_height, np.float64)))
              for edge in _original_window(orig_height, crop))
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)  # a window of at least one stored pixel
    return x0.astype(np.int64), y0.astype(np.int64), (x1 - x0).astype(np.int64), (y1 - y0).astype(np.int64)


def _original_window(side: ArrayLike, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of torchvision's CenterCrop along one axis of `side` original pixels (float64 arrays).

    torchvision 0.29 `functional.center_crop`: where the image is at least `crop` long the start is
    `int(round((side - crop) / 2.0))`, Python's round, half to even (an odd margin of 1 starts at 0, of 3 at
    2, of 5 at 2); where it is shorter it first pads `(crop - side) // 2` zeros before and the rest after,
    so the start is minus that floor. The seed's transform is this CenterCrop (seed `vae_train.py`:
    `transforms.CenterCrop((args.image_crop, args.image_crop))`).
    """
    side = np.asarray(side, dtype=np.float64)
    start = np.where(side >= crop, np.round((side - crop) / 2.0), -np.floor((crop - side) / 2.0))
    return start, start + crop


def flip_and_normalise(images: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """images: uint8 [N, 3, S, S] (any memory layout); flips: bool [N] or None -> float32 [N, 3, S, S] in
    [-1, 1], contiguous."""
    if flips is not None:
        # Row i of [images; mirrored images] or row N + i: a gather, not a data-dependent branch (no GPU -> CPU
        # sync per batch), on uint8 before the 4x larger floats. 40x faster on CPU than torch.where on floats.
        n = images.shape[0]
        both = torch.cat([images, images.flip(-1)])  # [2N, 3, S, S]
        images = both.index_select(0, torch.arange(n, device=images.device) + n * flips.long())
    # Converting into a new contiguous NCHW float tensor also undoes a channels-last input's layout, 3-7x
    # faster on CPU than `.contiguous()` on the uint8 or the float images.
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device).copy_(images)
    return out.div_(255 * STD).sub_(MEAN / STD)
