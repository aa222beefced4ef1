"""Every Python block of README.md runs as written, in order, in one namespace (a later block
may use what an earlier one defined), and a block followed by "prints" and a text block prints
exactly that."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np

from conftest import ROOT

BLOCK = re.compile(r"```python\n(.*?)```(?:\nprints\n```text\n(.*?)```)?", re.S)


def readme_blocks() -> list[tuple[str, str | None]]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_has_python_blocks():
    blocks = readme_blocks()
    assert len(blocks) >= 2 and any(printed for _, printed in blocks)


def test_every_readme_python_block_runs_and_prints_what_it_says(monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "readme"}
    for code, printed in readme_blocks():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        if printed:
            assert out.getvalue() == printed
    y = namespace["y"]  # the MLP block's output
    assert y.shape == (64, 10) and y.dtype == np.float32 and np.isfinite(y).all()
