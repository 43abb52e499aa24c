"""Which decoder backend a loader uses: DALI where it imports (data.backend=auto), else the reference loader."""
from __future__ import annotations

from vaedist.errors import UserError


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401  # the probe itself: DALI is optional, and importing it may fail
    except Exception:  # ImportError, or a broken CUDA runtime underneath
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "dali" if dali_available() else "reference"
    if backend == "dali" and not dali_available():
        raise UserError("data.backend=dali but nvidia.dali does not import here; install nvidia-dali-cuda120 "
                        "(or nvidia-dali-cuda130) or set data.backend=reference")
    return backend
