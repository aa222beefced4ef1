"""Errors users see. Each names what is wrong and where: the user's file:line, the node, the
legal choices. Nothing from deep inside NumPy or Numba should reach a user unexplained."""

from __future__ import annotations

from collections.abc import Iterable


class TilefuseError(Exception):
    """Base of every error tilefuse raises on purpose."""


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """' (did you mean 'relu'?)' when `word` is a near miss of one of `choices`, else ''."""
    import difflib

    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ShapeError(TilefuseError, ValueError):
    """Shapes that do not fit together (inner dims of a matmul, broadcasting, ranks)."""


class DTypeError(TilefuseError, TypeError):
    """A dtype tilefuse does not support, or two operands that disagree."""


class AttrError(TilefuseError, ValueError):
    """An unknown op, attribute or attribute value (lists the legal ones)."""


class ParseError(TilefuseError, ValueError):
    """Malformed IR text; carries the line and column."""

    def __init__(self, message: str, line: int, col: int, text_line: str = "") -> None:
        self.line, self.col = line, col
        caret = f"\n  {text_line}\n  {' ' * (col - 1)}^" if text_line else ""
        super().__init__(f"line {line}, column {col}: {message}{caret}")


class InvalidNameError(TilefuseError, ValueError):
    """A graph, input, constant or dim name that is not an ASCII identifier (names reach the IR
    text and generated code, so nothing else is accepted)."""


class VerifyError(TilefuseError, ValueError):
    """A graph that breaks an IR invariant (cycle, dangling input, wrong arity, stale type)."""


class InputError(TilefuseError, ValueError):
    """Arguments a compiled model or the reference interpreter cannot accept."""


class IndexRangeError(InputError, IndexError):
    """An index a gather reads (a token id) outside its table's axis."""


class MiscompileError(TilefuseError, AssertionError):
    """A compiled model disagrees with the reference interpreter."""
