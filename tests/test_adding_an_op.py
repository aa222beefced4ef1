"""docs/adding-an-op.md runs: its python blocks, in order, in one namespace."""

from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).parent.parent / "docs" / "adding-an-op.md"


def test_adding_an_activation_as_the_page_says(capsys: pytest.CaptureFixture[str]):
    from tilefuse import ops

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {"__name__": "adding_an_op"}
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102
    finally:
        if "softsign" in ops.ACTIVATIONS:
            ops.unregister_activation("softsign")
    printed = capsys.readouterr().out
    assert "dense[act=softsign, bias=false]" in printed
    assert "softsign(%0)" in printed  # the CPU's final IR: its own op after the kernel
    assert "softsign" not in ops.OPS
