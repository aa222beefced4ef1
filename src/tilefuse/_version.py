"""tilefuse's version, and the fingerprint of the kernel library's sources.

Layer 0: the standard library only, so that every module (and a script, running this file)
can ask without importing anything else:

    python src/tilefuse/_version.py --kernels      # the kernel library's fingerprint
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import sys

__version__ = "0.1.0"

# the code a compiled kernel depends on: a change to any of these is a new kernel library
KERNEL_SOURCES = (
    "backends/cpu_kernels.py",
    "backends/llvm_ukernel.py",
    "backends/cpu_entry.py",
    "backends/cpu_library.py",
    "backends/cpu_runtime.py",
    "backends/cpu_pool.py",
    "tiling.py",  # the register tiles the kernels are built for
)


@functools.cache
def kernel_fingerprint() -> str:
    """sha256 (hex) of tilefuse's version and the kernel library's sources: one value for
    the kernel library's symbol names and cache key, generated modules' keys and the tuning
    log."""
    here = pathlib.Path(__file__).parent
    h = hashlib.sha256(__version__.encode())
    for name in KERNEL_SOURCES:
        path = here / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return h.hexdigest()


if __name__ == "__main__":
    print(kernel_fingerprint()[:16] if "--kernels" in sys.argv else __version__)
