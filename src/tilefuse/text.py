"""The canonical text form of the IR: `parse_graph`, and `print_graph` (which lives in ir.py,
so that a Graph prints itself; it is re-exported here).

    graph mlp(%x: f32[N,784]) -> f32[N,10] {
      %w0 = const[sha="3f1c0a9be2d47e65"] : f32[784,512]
      %b0 = const[value=[0.5, -0.5]] : f32[2]
      %0 = matmul(%x, %w0) : f32[N,512]
      %1 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
      return %1
    }

One line per node in topological order; inputs and constants keep their names, other nodes
are numbered %0, %1, ...; attributes are sorted and defaults are left out. Constants of at
most `INLINE_LIMIT` elements print their values; larger ones print a content hash, and
`parse_graph(text, constants={"w0": array})` supplies their data. `parse(print(g)) == g`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ParseError, TilefuseError
from .ir import (  # noqa: F401 - print_graph and friends live in ir.py: re-exported
    ALL_DTYPES,
    DTYPES,
    INLINE_LIMIT,
    Graph,
    TensorType,
    array_digest,
    format_array,
    format_node,
    format_value,
    node_names,
    print_graph,
)
from .ops import OPS, GraphBuilder

MAX_NUMBER_CHARS = 64  # longer is garbage (and Python refuses ints of > 4300 digits)
MAX_NESTING = 32  # of [ ] and ( ) in attribute values (deeper would exhaust the stack)


# -- parsing -------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""(?P<space>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<newline>\n)
    |(?P<value>%[A-Za-z0-9_]+)|(?P<arrow>->)
    |(?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)(?![A-Za-z0-9_]))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<string>"(?:[^"\\\n]|\\.)*")
    |(?P<punct>[()\[\]{},:=])""",
    re.VERBOSE,
)


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, np.ndarray]) -> None:
        self.lines = text.split("\n")
        self.tokens = list(self._tokenize(text))
        self.pos = 0
        self.depth = 0  # of ( ) being parsed
        self.constants = constants

    def _tokenize(self, text: str):
        line, line_start, i = 1, 0, 0
        while i < len(text):
            m = _TOKEN.match(text, i)
            if not m:
                self._fail(f"unexpected character {text[i]!r}", line, i - line_start + 1)
            kind = m.lastgroup
            if kind == "number" and len(m.group()) > MAX_NUMBER_CHARS:
                self._fail(
                    f"number longer than {MAX_NUMBER_CHARS} characters", line, i - line_start + 1
                )
            if kind == "newline":
                line, line_start = line + 1, m.end()
            elif kind not in ("space", "comment"):
                yield kind, m.group(), line, i - line_start + 1
            i = m.end()
        yield "eof", "", line, i - line_start + 1

    def _fail(self, message: str, line: int, col: int) -> None:
        text_line = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        raise ParseError(message, line, col, text_line)

    def fail(self, message: str, token: tuple | None = None) -> None:
        _, _, line, col = token or self.tokens[self.pos]
        self._fail(message, line, col)

    def peek(self) -> tuple[str, str, int, int]:
        return self.tokens[self.pos]

    def next(self) -> tuple[str, str, int, int]:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def expect(self, text: str) -> tuple:
        token = self.next()
        if token[1] != text:
            shown = token[1] or "end of input"
            self.fail(f"expected {text!r}, found {shown!r}", token)
        return token

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.next()
            return True
        return False

    def expect_kind(self, kind: str, what: str) -> tuple:
        token = self.next()
        if token[0] != kind:
            self.fail(f"expected {what}, found {token[1] or 'end of input'!r}", token)
        return token

    # grammar ------------------------------------------------------------------------------
    def type_(self) -> TensorType:
        token = self.expect_kind("ident", "a dtype (f32 or f64)")
        if token[1] not in ALL_DTYPES:
            self.fail(f"unknown dtype {token[1]!r}; supported: {', '.join(ALL_DTYPES)}", token)
        self.expect("[")
        dims: list[int | str] = []
        while not self.accept("]"):
            if dims:
                self.expect(",")
            tok = self.next()
            if tok[0] == "number" and tok[1].isdigit():
                dims.append(int(tok[1]))
            elif tok[0] == "ident":
                dims.append(tok[1])
            else:
                self.fail(f"expected a dimension (an int or a name), found {tok[1]!r}", tok)
        return TensorType(token[1], tuple(dims))

    def value(self) -> Any:
        token = self.next()
        kind, text = token[0], token[1]
        if kind == "number":
            return float(text) if re.search(r"[.eEna]", text) else int(text)
        if kind == "string":
            try:
                return json.loads(text)
            except ValueError as err:  # a control character or a bad escape inside quotes
                self.fail(f"malformed string {text!r}: {err.msg}", token)
        if kind == "ident":
            return {"true": True, "false": False, "none": None}.get(text, text)
        if text == "[":
            return self.array_literal()
        if text == "(":
            return self.tuple_or_record()
        self.fail(f"expected an attribute value, found {text or 'end of input'!r}", token)

    def array_literal(self, depth: int = 1) -> list:
        if depth > MAX_NESTING:
            self.fail(f"[ ] nested deeper than {MAX_NESTING} levels")
        items: list = []
        while not self.accept("]"):
            if items:
                self.expect(",")
            if self.accept("["):
                items.append(self.array_literal(depth + 1))
            else:
                token = self.expect_kind("number", "a number")
                items.append(float(token[1]))
        return items

    def tuple_or_record(self) -> Any:
        self.depth += 1  # tuples hold values, which may be tuples
        if self.depth > MAX_NESTING:
            self.fail(f"( ) nested deeper than {MAX_NESTING} levels")
        items: list = []
        record: dict[str, Any] = {}
        while not self.accept(")"):
            if items or record:
                self.expect(",")
            if self.peek()[0] == "ident" and self.tokens[self.pos + 1][1] == "=":
                key = self.next()[1]
                self.expect("=")
                record[key] = self.value()
            else:
                items.append(self.value())
        if record and items:
            self.fail("cannot mix key=value and plain items in one ( )")
        self.depth -= 1
        return record if record else tuple(items)

    def attrs(self) -> dict[str, tuple[Any, tuple]]:
        out: dict[str, tuple[Any, tuple]] = {}
        if not self.accept("["):
            return out
        while not self.accept("]"):
            if out:
                self.expect(",")
            token = self.expect_kind("ident", "an attribute name")
            self.expect("=")
            out[token[1]] = (self.value(), token)
        return out

    def graph(self) -> Graph:
        self.expect("graph")
        name = self.expect_kind("ident", "the graph's name")[1]
        b = GraphBuilder(name)
        env: dict[str, int] = {}
        self.expect("(")
        while not self.accept(")"):
            if env:
                self.expect(",")
            token = self.expect_kind("value", "an input such as %x")
            self.expect(":")
            self.define(env, token, b.input(token[1][1:], self.type_()))
        self.expect("->")
        declared_outputs = self.result_types()
        self.expect("{")
        while self.peek()[1] != "return":
            if self.peek()[0] == "eof":
                self.fail("expected 'return' before the end of the graph")
            self.statement(b, env)
        self.expect("return")
        outputs = [self.use(env, self.expect_kind("value", "a value such as %3"))]
        while self.accept(","):
            outputs.append(self.use(env, self.expect_kind("value", "a value such as %3")))
        end = self.expect("}")
        if self.peek()[0] != "eof":
            self.fail(f"unexpected {self.peek()[1]!r} after the graph")
        actual = [b.types[o] for o in outputs]
        if actual != declared_outputs:
            self.fail(
                f"graph returns {', '.join(map(str, actual))} but its header declares "
                f"{', '.join(map(str, declared_outputs))}",
                end,
            )
        return b.build(outputs)

    def buffer(self) -> int | None:
        """`in ws3` after a type: the workspace buffer plan_memory put the value in."""
        if self.peek()[1] != "in":
            return None
        self.next()
        token = self.expect_kind("ident", "a workspace buffer such as ws0")
        if not re.fullmatch(r"ws\d{1,6}", token[1]):
            self.fail(f"expected a workspace buffer such as ws0, found {token[1]!r}", token)
        return int(token[1][2:])

    def result_types(self) -> list[TensorType]:
        if not self.accept("("):
            return [self.type_()]
        types = [self.type_()]
        while self.accept(","):
            types.append(self.type_())
        self.expect(")")
        return types

    def define(self, env: dict[str, int], token: tuple, node_id: int) -> None:
        if token[1] in env:
            self.fail(f"{token[1]} is defined twice", token)
        env[token[1]] = node_id

    def use(self, env: dict[str, int], token: tuple) -> int:
        if token[1] not in env:
            self.fail(f"{token[1]} is used before it is defined", token)
        return env[token[1]]

    def statement(self, b: GraphBuilder, env: dict[str, int]) -> None:
        target = self.expect_kind("value", "a result such as %0")
        self.expect("=")
        op_token = self.expect_kind("ident", "an op name")
        op = op_token[1]
        if op not in OPS or op == "input":
            legal = ", ".join(o for o in OPS if o != "input")
            self.fail(f"unknown op {op!r}; known ops: {legal}", op_token)
        attrs = self.attrs()
        args: list[int] = []
        if self.accept("("):
            while not self.accept(")"):
                if args:
                    self.expect(",")
                args.append(self.use(env, self.expect_kind("value", "an operand such as %x")))
        colon = self.expect(":")
        declared = self.type_()
        buffer = self.buffer()
        if op == "const":
            node_id = self.constant(b, target, attrs, declared)
        else:
            node_id = self.operation(b, op, op_token, args, attrs)
        if buffer is not None:
            b.set_buffer(node_id, buffer)
        if b.types[node_id] != declared:
            self.fail(
                f"{target[1]} is declared {declared} but {op} gives {b.types[node_id]}", colon
            )
        self.define(env, target, node_id)

    def operation(self, b: GraphBuilder, op: str, token: tuple, args: list[int], attrs: dict):
        values = {k: v for k, (v, _) in attrs.items()}
        try:
            return b.op(op, args, **values)
        except TilefuseError as err:
            self.fail(str(err), token)

    def constant(self, b: GraphBuilder, target: tuple, attrs: dict, declared: TensorType) -> int:
        name = target[1][1:]
        unknown = set(attrs) - {"value", "sha"}
        if unknown:
            first = sorted(unknown)[0]
            self.fail(f"const: unknown attribute {first!r}; legal: value, sha", attrs[first][1])
        if "value" in attrs:
            value, token = attrs["value"]
            try:
                array = np.array(value, dtype=declared.np_dtype)
            except (TypeError, ValueError):
                self.fail(f"const {target[1]}: value is not a rectangular array", token)
            if array.shape != declared.shape:
                self.fail(f"const {target[1]}: value has shape {array.shape}", token)
        elif name in self.constants:
            array = np.asarray(self.constants[name], dtype=declared.np_dtype)
            if "sha" in attrs and attrs["sha"][0] != array_digest(array):
                self.fail(f"const {target[1]}: the data given does not match its sha", target)
        else:
            self.fail(
                f"const {target[1]} has no inline value; pass its data with "
                f"parse_graph(text, constants={{{name!r}: array}})",
                target,
            )
        return b.const(array, name)


def parse_graph(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the canonical text form; errors are `ParseError`s with line and column."""
    return _Parser(text, constants or {}).graph()


def load_graph(path: str | os.PathLike) -> Graph:
    """A graph saved by `Graph.save(path)`: the IR text at `path` and the constants' data in
    NAME.npz beside it (read without pickles). Each constant's data is checked against the
    digest the text prints for it."""
    text_path = pathlib.Path(path)
    try:
        text = text_path.read_text()
    except OSError as err:
        raise TilefuseError(f"{text_path}: cannot read the graph ({err.strerror})") from None
    data_path = text_path.with_suffix(".npz")
    constants: dict[str, np.ndarray] = {}
    if data_path.exists():
        try:
            with np.load(data_path, allow_pickle=False) as data:
                constants = {name: data[name] for name in data.files}
        except (OSError, ValueError) as err:
            raise TilefuseError(f"{data_path}: not the constants of a saved graph: {err}") from None
    return parse_graph(text, constants)
