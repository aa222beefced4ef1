"""docs/walkthrough.md runs: its python blocks are executed in order in one namespace."""

from __future__ import annotations

import pathlib
import re

import pytest

WALKTHROUGH = pathlib.Path(__file__).parent.parent / "docs" / "walkthrough.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", WALKTHROUGH.read_text(), flags=re.S)


def test_walkthrough_has_code():
    assert len(python_blocks()) >= 6


def test_walkthrough_runs(capsys: pytest.CaptureFixture[str]):
    namespace: dict = {"__name__": "walkthrough"}
    for block in python_blocks():
        exec(compile(block, str(WALKTHROUGH), "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "dense[act=gelu, approximate=tanh]" in printed
    assert "softmax(" in printed
    assert 'define i64 @"tilefuse_forward"(' in printed  # the native forward's LLVM IR
