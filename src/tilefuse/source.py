"""Pieces of generated Python source, made safe to paste into it.

Generated code (the backends' modules, reproducers, fuzz cases) is code: every string that
came from a user, a model file or a pickle reaches it only through these helpers or `repr`.
Names are ASCII identifiers by the time they get here (ir.check_name, at the door); these
helpers do not rely on that.
"""

from __future__ import annotations

import math

from .ir import check_name


def comment(text: str) -> str:
    """`text` as Python comment lines. Anything but printable ASCII is escaped, so that no
    string can end the comment and become code."""
    lines = text.split("\n")
    safe = ["".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in line) for line in lines]
    return "\n".join(("# " + line).rstrip() for line in safe) + "\n"


def float_literal(value: float) -> str:
    """A float as a Python expression (`math` imported): repr, or math.inf / math.nan, which
    repr spells as names no module defines."""
    value = float(value)
    if math.isnan(value):
        return "math.nan"
    if math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


def identifier(name: str, what: str = "name") -> str:
    """`name` for use as (part of) a variable name in generated code: an identifier or an
    error, never anything else."""
    return check_name(name, what)
