"""Decode-once cache: everything but the flip is deterministic, so a rank's cropped and resized uint8
images are kept after the first epoch and later epochs are served from memory with fresh order and flips.

Where: `device` memory when training on CUDA and it fits (COCO at 64x64 is ~2 GB), else pinned host
memory (`host`; plain host memory when there is no GPU), else off. The plan is logged with its size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import psutil
import torch

log = logging.getLogger(__name__)

# Leave room for the model, activations and the rest of the process.
DEVICE_SHARE = 0.5  # of free GPU memory
HOST_SHARE = 0.5  # of available host memory


@dataclass
class CachePlan:
    location: str  # "off" | "device" | "host"
    nbytes: int
    reason: str  # one line for the log


def plan_cache(mode: str, num_images: int, size: int, device: torch.device) -> CachePlan:
    """Resolve data.cache (off|auto|device|host) to where the cache goes, falling back when it cannot fit."""
    nbytes = num_images * 3 * size * size
    if mode == "off":
        return CachePlan("off", 0, "decode-once cache off (data.cache=off)")
    gib = nbytes / 2**30
    amount = f"{gib:.2f} GiB" if gib >= 1 else f"{nbytes / 2**20:.1f} MiB"
    host_free = psutil.virtual_memory().available
    if device.type == "cuda" and mode in ("auto", "device"):
        gpu_free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= DEVICE_SHARE * gpu_free:
            return CachePlan("device", nbytes, f"decode-once cache: {num_images} images, {amount} on {device}")
        why = f"{amount} does not fit in half of the {gpu_free / 2**30:.1f} GiB free on {device}"
    elif mode == "device" and device.type != "cuda":
        why = "no CUDA device"
    else:
        why = ""
    if nbytes <= HOST_SHARE * host_free:
        kind = "pinned host memory" if device.type == "cuda" else "host memory"
        return CachePlan("host", nbytes, f"decode-once cache: {num_images} images, {amount} in {kind}"
                         + (f" ({why})" if why else ""))
    return CachePlan("off", 0, f"decode-once cache off: {amount} does not fit in half of the "
                     f"{host_free / 2**30:.1f} GiB of available host memory" + (f", and {why}" if why else ""))


class DecodeOnceCache:
    """uint8 [len(owned), 3, size, size] rows for the samples a rank owns, filled as they are decoded."""

    def __init__(self, plan: CachePlan, owned: np.ndarray, num_total: int, size: int, device: torch.device):
        self.plan = plan
        self.device = device
        where = device if plan.location == "device" else torch.device("cpu")
        pin = plan.location == "host" and device.type == "cuda"
        self.images = torch.empty((len(owned), 3, size, size), dtype=torch.uint8, device=where, pin_memory=pin)
        self._row = np.full(num_total, -1, dtype=np.int64)  # global sample index -> cache row
        self._row[owned] = np.arange(len(owned))
        self._filled = np.zeros(len(owned), dtype=bool)

    @property
    def complete(self) -> bool:
        return bool(self._filled.all())

    def missing(self, indices: np.ndarray) -> np.ndarray:
        return indices[~self._filled[self._row[indices]]]

    def exclude(self, indices: np.ndarray) -> None:
        """Samples that will never be asked for (they fail to decode): the cache is complete without them."""
        rows = self._row[indices]
        self._filled[rows[rows >= 0]] = True

    def store(self, indices: np.ndarray, images: torch.Tensor) -> None:
        rows = self._row[indices]
        self.images[torch.from_numpy(rows).to(self.images.device)] = images.to(self.images.device)
        self._filled[rows] = True

    def take(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [len(indices), 3, size, size] on the training device."""
        rows = torch.from_numpy(self._row[indices]).to(self.images.device)
        return self.images.index_select(0, rows).to(self.device, non_blocking=True)
