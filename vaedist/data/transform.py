"""The one description of the seed's image transform, shared by the DALI pipeline, the reference loader and
the decode-once cache.

Seed (`data/data_loader.py`): CenterCrop(375) -> Resize(64x64) -> RandomHorizontalFlip (train only) ->
ToTensor -> grey to 3 channels -> Normalize(0.5, 0.5). Ours, in order:

1. decode to RGB (grey and CMYK become 3 channels; the sharder already wrote upright JPEGs);
2. centre crop of `crop` x `crop` pixels **of the original image**. On shards written with `--max-side`,
   the window is scaled per axis by stored/original size (the sample's json holds the original size), so
   both kinds of shard show the same view. Where the image is smaller than the window the missing border
   is **zero (black) padding**, as the seed's torchvision CenterCrop does; both backends pad identically
   because they share `centre_crop_window` (integer window, may start at a negative offset);
3. resize to `size` x `size`, bilinear with antialiasing, rounded to uint8 like the seed's PIL image:
   Pillow's BILINEAR (reference), torch's uint8 antialiased bilinear, which follows Pillow's filter (after
   DALI's CPU decoding: 4x faster than DALI's `fn.resize` there), DALI's linear+antialias (GPU). This
   uint8 [N, 3, size, size] is what the cache stores;
4. random horizontal flip (training only) and normalisation to [-1, 1] (mean 0.5, std 0.5), in torch on
   the training device by `flip_and_normalise` — one implementation for every source, so a cached
   epoch equals an uncached one bit for bit.

The window arithmetic differs slightly from torchvision's (floor instead of round-half-even for an odd
margin): a one-pixel offset at most, inside the parity bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

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


def centre_crop_window(width: Any, height: Any, orig_width: Any, orig_height: Any, crop: float,
                       floor: Callable[[Any], Any] = math.floor) -> tuple[Any, Any, Any, Any]:
    """(x0, y0, w, h) of the centre crop in stored pixels; x0/y0 < 0 means zero padding on that side.

    Written with plain arithmetic so that the same function runs on Python numbers (reference loader) and
    on float64 numpy arrays of a whole batch (DALI backend, on the host: pass `floor=np.floor`): one formula
    for both backends.
    """
    w = floor(crop * width / orig_width + 0.5)  # `crop` original pixels, in stored pixels
    h = floor(crop * height / orig_height + 0.5)
    x0 = floor((width - w) / 2)
    y0 = floor((height - h) / 2)
    return x0, y0, w, h


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
