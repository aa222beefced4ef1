"""What the generated CUDA modules and `CudaModel` share at run time: finding numba.cuda (or
saying how to get it), launch shapes, device arrays from foreign objects, scratch buffers.

Importing this module imports numba.cuda, which decides once per process between a real GPU
and Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, read at that first import).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import TilefuseError

HOW_TO_ENABLE = (
    "target='cuda' needs either an NVIDIA GPU with its driver and numba-cuda "
    "(pip install 'tilefuse[cuda]'), or Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 in "
    "the environment before Python starts (the simulator runs the same kernels on the CPU, "
    "slowly: small shapes only)"
)

ELEMENTWISE_THREADS = 256  # threads per block of the one-thread-per-element kernels


def _import_cuda() -> Any:
    try:
        from numba import cuda
    except ImportError as err:
        raise TilefuseError(f"{HOW_TO_ENABLE} (numba.cuda cannot be imported: {err})") from None
    return cuda


cuda = _import_cuda()


def simulated() -> bool:
    """True when numba.cuda is the CUDA simulator rather than a real GPU."""
    return hasattr(cuda, "simulator_init") or hasattr(cuda, "FakeCUDAKernel")


def require_device() -> None:
    """Raise the how-to-enable error when there is neither a GPU nor the simulator."""
    if simulated():
        return
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise TilefuseError(
            "NUMBA_ENABLE_CUDASIM=1 was set after numba.cuda had been imported for a real GPU; "
            "set it before Python starts"
        )
    if not cuda.is_available():
        reason = cuda.cuda_error() if hasattr(cuda, "cuda_error") else None
        detail = f" (numba.cuda: {' '.join(str(reason).split())})" if reason else ""
        raise TilefuseError(f"{HOW_TO_ENABLE}{detail}")


def device_name() -> str:
    if simulated():
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


# -- launch shapes ---------------------------------------------------------------------------
def blocks(extent: int, size: int) -> int:
    """Blocks of `size` covering `extent`; at least one, so an empty launch is still legal."""
    return max(1, -(-extent // size))


def elementwise_launch(size: int) -> tuple[int, int]:
    """(blocks, threads) for a one-thread-per-element kernel over `size` elements: a small
    tensor gets a small block (the simulator runs every thread as a Python thread)."""
    threads = min(ELEMENTWISE_THREADS, max(32, -(-size // 32) * 32))
    return blocks(size, threads), threads


# -- device arrays -----------------------------------------------------------------------------
def as_device_array(value: Any) -> Any | None:
    """A numba device array viewing `value` without a copy, or None when it is host data.
    Takes numba device arrays and anything with `__cuda_array_interface__` (CuPy, PyTorch)."""
    if cuda.devicearray.is_cuda_ndarray(value):
        return value
    if hasattr(value, "__cuda_array_interface__") and hasattr(cuda, "as_cuda_array"):
        return cuda.as_cuda_array(value)
    return None


def to_device(array: np.ndarray) -> Any:
    return cuda.to_device(np.ascontiguousarray(array))


class Scratch:
    """Device buffers for intermediates, kept between calls of the same batch size: a layer's
    output is allocated once, not per call. `get(k, shape, dtype)` is buffer k of this call."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, Any] = {}

    def get(self, key: int, shape: tuple[int, ...], dtype: Any) -> Any:
        slot = (key, shape, np.dtype(dtype).str)
        if slot not in self.buffers:
            self.buffers[slot] = cuda.device_array(shape, dtype)
        return self.buffers[slot]
