"""The reference backend: Pillow + a torch DataLoader with worker processes, reading the same shards at
the same .idx offsets and following the same `order.SamplePlan` as DALI. It is the yardstick of the
parity test and the fallback where DALI does not import.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from vaedist.data.index import SplitIndex, open_tars
from vaedist.data.transform import TransformSpec, centre_crop_window


def pil_seed_transform(jpeg: bytes, orig_width: float, orig_height: float, spec: TransformSpec) -> torch.Tensor:
    """Encoded JPEG -> uint8 [3, size, size]: the transform's deterministic part (see `transform.py`)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        img = img.convert("RGB")  # grey, CMYK -> 3 channels
    x0, y0, w, h = centre_crop_window(img.width, img.height, orig_width, orig_height, spec.crop)
    img = img.crop((x0, y0, x0 + w, y0 + h))  # Pillow fills outside the image with zeros
    img = img.resize((spec.size, spec.size), Image.BILINEAR)  # Pillow's resize is antialiased
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


class ShardSamples(torch.utils.data.Dataset):
    """Map-style dataset over one split: item i -> (uint8 [3, size, size], i)."""

    def __init__(self, index: SplitIndex, spec: TransformSpec):
        self.index, self.spec = index, spec
        self.reader = open_tars(index.shard_dir, index.shards)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ix = self.index
        jpeg = bytes(self.reader.view(ix.shard[i], ix.offset[i], ix.size[i]))
        return pil_seed_transform(jpeg, float(ix.orig_width[i]), float(ix.orig_height[i]), self.spec), i


class ReferenceDecoder:
    """Turns batches of sample indices into uint8 [N, 3, size, size] on `device`, in DataLoader workers."""

    def __init__(self, index: SplitIndex, spec: TransformSpec, device: torch.device, workers: int, prefetch: int):
        self.dataset = ShardSamples(index, spec)
        self.device, self.workers, self.prefetch = device, workers, prefetch

    def decode(self, batches: list[np.ndarray]) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
            prefetch_factor=self.prefetch if self.workers else None, pin_memory=self.device.type == "cuda",
        )
        for images, _ in loader:
            yield images.to(self.device, non_blocking=True)
