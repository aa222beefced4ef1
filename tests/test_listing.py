"""`model.llvm()` / `model.asm()` (`--emit llvm|asm`): `forward` alone, each op's code under
its IR line, no debug records or mangled names, then the kernel library it calls."""

from __future__ import annotations

import io
import pathlib
import re

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import phases
from tilefuse.backends import cpu_listing as L
from tilefuse.cli import saying_phases

SOURCE = """\
@njit(cache=True)
def forward(x_x, pool, out0):
    d_N = x_x.shape[0]

    # %0 = dense[act=relu](%x, %w, %b) : f32[N,8] in ws0
    status = dense_f32_6x16(E.data(x_x), d_N)

    # %1 = softmax(%0) : f32[N,8]
    for i0 in range(d_N):
        pass
"""

ASM = """\
\t.text
\t.file\t"<string>"
\t.globl\t_ZN5gen7forwardB2v1E5Array
\t.p2align\t4, 0x90
\t.type\t_ZN5gen7forwardB2v1E5Array,@function
_ZN5gen7forwardB2v1E5Array:
.Lfunc_begin0:
\t.cfi_startproc
\t.loc\t1 3 1 prologue_end
\tpushq\t%rbp
\t.loc\t1 6 1
\tmovq\t%rdi, %rax
\tcallq\t*%rbx
.Ltmp3:
\t.loc\t1 6 1
\taddq\t$8, %rax
\t.loc\t1 9 1
\tvaddps\t%ymm0, %ymm1, %ymm2
\t.loc\t1 6 1
\tretq
.Lfunc_end0:
\t.size\t_ZN5gen7forwardB2v1E5Array, .Lfunc_end0-_ZN5gen7forwardB2v1E5Array
\t.type\t_ZN7cpython5gen7forwardB2v1E5Array,@function
_ZN7cpython5gen7forwardB2v1E5Array:
\tmovq\t%rdi, %rax
.Lfunc_end1:
"""


def test_source_map_names_the_op_of_every_line_and_the_driver_calls():
    smap = L.SourceMap.of(SOURCE)
    assert smap.op(3) == L.ENTRY
    assert smap.op(6) == "%0 = dense[act=relu](%x, %w, %b) : f32[N,8] in ws0"
    assert smap.op(9).startswith("%1 = softmax")
    assert smap.driver_ops == {"f32 6x16": ["%0 = dense[act=relu](%x, %w, %b) : f32[N,8] in ws0"]}


def test_annotated_asm_keeps_forward_only_under_its_ir_lines():
    text = L.annotated_asm(ASM, L.SourceMap.of(SOURCE))
    assert text.splitlines() == [
        "forward:",
        f"\t# ---- {L.ENTRY}",
        "\tpushq\t%rbp",
        "\t# ---- %0 = dense[act=relu](%x, %w, %b) : f32[N,8] in ws0",
        "\tmovq\t%rdi, %rax",
        "\tcallq\t*%rbx",
        "\taddq\t$8, %rax",
        "\t# ---- %1 = softmax(%0) : f32[N,8]",
        "\tvaddps\t%ymm0, %ymm1, %ymm2",
        "\t# ---- %0 = dense[act=relu](%x, %w, %b) : f32[N,8] in ws0",  # code moved back: said
        "\tretq",
    ]


def test_library_functions_are_named_by_role():
    assert "6x16 micro-kernel" in L.role("tilefuse_tile_float32_v8_6x16")
    assert "2 rows x 2 panels of 16" in L.role("tilefuse_rows_float32_v8_2x2x16")
    assert "driver" in L.role("tilefuse_dense_float64_v4")
    assert "softmax" in L.role("tilefuse_softmax_rows_float32_v8")


@pytest.fixture(scope="module")
def residual():
    w = np.random.default_rng(0).standard_normal((24, 24)).astype(np.float32) * 0.2
    b = np.zeros((1, 24), np.float32)

    @tfu.function
    def block(x: tfu.Input["N", 24, "f32"], w=w, b=b):
        return tfu.softmax(tfu.relu(x @ w + b) + tfu.tanh(x))  # tanh, dense(+ residual), softmax

    model = tfu.compile(block, target="cpu", native=False)  # the Numba forward's listing
    model(np.ones((3, 24), np.float32))
    return model


@pytest.mark.parametrize("kind", ["llvm", "asm"])
def test_listing_puts_every_op_of_the_network_above_its_code(residual, kind):
    text = getattr(residual, kind)()
    ops = list(residual.final.ops())
    marked = re.findall(r"[;#] ---- (%\S+ = .*)$", text, re.M)
    source_ops = re.findall(r"^\s*# (%\S+ = .*)$", residual.source(), re.M)
    assert len(source_ops) == len(ops) >= 3
    assert set(source_ops) <= set(marked)  # each op's code is under its own IR line
    head = text.split("==== kernel library")[0]
    assert "_ZN" not in head and "cpython" not in head  # forward only, demangled
    assert "tilefuse.backends.cpu_runtime.softmax" in head  # the runtime kernel it calls
    assert "!dbg" not in text and ".loc\t" not in text and ".cfi_" not in text
    dense_ops = [line for line in source_ops if "= dense" in line]
    library = text.split("==== kernel library, f32 ")[1]
    assert all(line in library.split("----")[0] for line in dense_ops)
    assert "tilefuse_tile_float32" in library and "micro-kernel" in library
    if kind == "llvm":
        assert re.search(r"^define .*@forward\(", text, re.M)
    else:
        assert text.count("\nforward:\n") == 1


def test_slow_stages_say_what_they_do_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with saying_phases(stream):
        with phases.phase("asm: kernel library f32 6x16"):
            pass
    assert "asm: kernel library f32 6x16 ..." in stream.getvalue()
    assert stream.getvalue().endswith("\r\x1b[K")  # the line is cleared at the end
    quiet = io.StringIO()
    with saying_phases(quiet), phases.phase("ptxas -arch=sm_90"):
        pass
    assert quiet.getvalue() == ""


def test_a_native_transformer_listing_marks_its_calls():
    """A transformer's native forward: in LLVM IR every call sits under its IR line; in the
    assembly each call made through a pointer (the drivers, attention's and the layer norms'
    parallel-for) does, counted in order; its layer norms run in the dense kernels."""
    pytest.importorskip("onnx")
    path = pathlib.Path(__file__).parent / "models" / "torch_encoder.onnx"
    model = tfu.compile(tfu.from_onnx(path), target="cpu")
    calls = model.native.plan.calls
    lines = [c.line for c in calls]
    for kind in ("llvm", "asm"):
        head = getattr(model, kind)().split("==== kernel library")[0]
        marked = set(re.findall(r"^[;#] (%\S+ = .*)$", head, re.M))
        indirect = {c.line for c in calls if type(c).__name__ in
                    ("DenseCall", "AttentionCall", "LayerNormCall")}  # fmt: skip
        assert (set(lines) if kind == "llvm" else indirect) <= marked
    assert "tilefuse_normalize_rows_float32" in model.llvm()  # post-norm: in the dense kernels
    attention = model.llvm().split("==== attention's library, f32")[1]  # after the kernels'
    assert "---- tilefuse_attention_task_float32" in attention and "softmax of a block" in attention
