"""The reference backend: Pillow + a torch DataLoader with worker processes, reading the same shards at
the same .idx offsets and following the same `order.SamplePlan` as DALI. It is the yardstick of the
parity test and the fallback where DALI does not import.
"""
from __future__ import annotations

import io
import multiprocessing
import struct
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from vaedist.data.bad_samples import BadSamples
from vaedist.data.index import SplitIndex, open_tars
from vaedist.data.transform import TransformSpec, centre_crop_window
from vaedist.jpeg import marker_chain_problem


def pil_seed_transform(jpeg: bytes, orig_width: float, orig_height: float, spec: TransformSpec) -> torch.Tensor:
    """Encoded JPEG -> uint8 [3, size, size]: the transform's deterministic part (see `transform.py`)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        img = img.convert("RGB")  # grey, CMYK -> 3 channels
    x0, y0, w, h = (int(v) for v in centre_crop_window(img.width, img.height, orig_width, orig_height, spec.crop))
    img = img.crop((x0, y0, x0 + w, y0 + h))  # Pillow fills outside the image with zeros
    img = img.resize((spec.size, spec.size), Image.BILINEAR)  # Pillow's resize is antialiased
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


# What Pillow raises on damaged data (as vaedist.shard.images' full decode sees it): such a sample is bad.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def pillow_problem(jpeg: bytes) -> str | None:
    """Why Pillow cannot decode `jpeg` fully (None: it can). The reference backend's verdict on a sample."""
    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            img.load()
    except DECODE_ERRORS as err:
        return _short(err)
    return None


class ShardSamples(torch.utils.data.Dataset):
    """Map-style dataset over one split: item i -> (uint8 [3, size, size], i, "") or, for a bad sample, (zeros,
    i, what is wrong with its JPEG): one damaged JPEG must not end the DataLoader's epoch. A broken marker
    chain is bad here too (Pillow would skip the stray bytes; DALI rejects it): both backends skip the same."""

    def __init__(self, index: SplitIndex, spec: TransformSpec):
        self.index, self.spec = index, spec
        self.reader = open_tars(index.shard_dir, index.shards)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        ix = self.index
        jpeg = bytes(self.reader.read_many([(ix.shard[i], ix.offset[i], ix.size[i])])[0])
        problem = marker_chain_problem(jpeg)
        if problem is None:
            try:
                return pil_seed_transform(jpeg, float(ix.orig_width[i]), float(ix.orig_height[i]), self.spec), i, ""
            except DECODE_ERRORS as err:
                problem = f"fails to decode (Pillow: {_short(err)})"
        return torch.zeros((3, self.spec.size, self.spec.size), dtype=torch.uint8), i, problem


# Workers are forked from a forkserver, a clean process that has imported this module but runs no threads,
# not from the training process: that one runs DALI's, torch's and OpenMP's threads, and a child forked while
# one of them holds a lock can crash (a DataLoader worker segfaulted so, seen in the test suite after DALI
# pipelines had run in the same process). The forkserver starts once per process; its workers fork in ms.
_WORKER_CONTEXT = multiprocessing.get_context("forkserver")
_WORKER_CONTEXT.set_forkserver_preload([__name__])


class ReferenceDecoder:
    """Turns batches of sample indices into uint8 [N, 3, size, size] on `device`, in DataLoader workers.
    A sample that fails to decode goes to `bad` (policy), and its batch is fixed by `bad`'s rule."""

    def __init__(self, index: SplitIndex, spec: TransformSpec, device: torch.device, workers: int, prefetch: int,
                 bad: BadSamples):
        self.dataset = ShardSamples(index, spec)
        self.device, self.workers, self.prefetch = device, workers, prefetch
        self.bad = bad

    def decode(self, batches: list[np.ndarray], keep_size: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(indices, uint8 images) per batch, in order; `indices` differ from the batch's where a sample failed."""
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
            prefetch_factor=self.prefetch if self.workers else None, pin_memory=self.device.type == "cuda",
            multiprocessing_context=_WORKER_CONTEXT if self.workers else None,
        )
        for batch, (images, _, reasons) in zip(batches, loader):
            if any(reasons):
                for i, reason in zip(batch.tolist(), reasons):
                    if reason:
                        self.bad.add(i, "jpg", reason)
                fixed = self.bad.fix(batch, keep_size)
                # The replacements are samples of the same batch, decoded already: take their images.
                position = {int(i): p for p, i in reversed(list(enumerate(batch.tolist())))}
                images = images[torch.as_tensor([position[int(i)] for i in fixed], dtype=torch.long)]
                batch = fixed
            yield batch, images.to(self.device, non_blocking=True)
