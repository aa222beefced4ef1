"""Where tilefuse keeps what it compiles: generated kernel modules and Numba's cache files.

Default `~/.cache/tilefuse` (or `$XDG_CACHE_HOME/tilefuse`); `TILEFUSE_CACHE_DIR` moves it.
Files are written atomically (a temporary file renamed into place), so a crashed or
concurrent writer never leaves a half-written module behind.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def cache_dir() -> pathlib.Path:
    root = os.environ.get("TILEFUSE_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tilefuse")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` so that readers see either nothing or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
