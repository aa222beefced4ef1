"""Bad input to a compiled CPU model, table-tested: each row is an input and its outcome (the
error and its message, or the correct answer). docs/reliability.md shows the same table.
Then: weights changed after compile, out= arrays, several threads at once, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.errors import DTypeError, InputError, ShapeError
from tilefuse.ir import TensorType
from tilefuse.ops import GraphBuilder

NET = tfu.Sequential(
    [tfu.Dense(16, activation="relu"), tfu.Dense(4, activation="tanh")], input_dim=5, seed=4
)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((7, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return tfu.compile(NET)


def expected(x: np.ndarray) -> np.ndarray:
    return tfu.reference.run(NET.graph(), np.ascontiguousarray(x, np.float32))


def misaligned(x: np.ndarray) -> np.ndarray:
    buffer = np.zeros(x.nbytes + 1, np.uint8)
    view = np.frombuffer(buffer.data, np.uint8, x.nbytes, offset=1).view(np.float32)
    view = view.reshape(x.shape)
    view[...] = x
    assert not view.flags.aligned
    return view


def matrix(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # NumPy discourages np.matrix; users still pass them
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(x)


def read_only(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y.setflags(write=False)
    return y


# (name, input, outcome): an exception class and a message fragment, or "ok" (the reference's
# answer, computed from the same values in a C-contiguous float32 array)
REJECTED = [
    ("rank 1", X[0], ShapeError, "got rank 1 array of shape (5,)"),
    ("rank 3", X[None], ShapeError, "got rank 3"),
    ("rank 0", np.array(1.0, np.float32), ShapeError, "got rank 0"),
    ("wrong width", RNG.standard_normal((7, 6)).astype(np.float32), ShapeError,
     "axis 1 has size 6, expected 5"),
    ("int32", X.astype(np.int32), DTypeError, "got dtype int32; convert with x.astype(np.float32)"),
    ("int64", X.astype(np.int64), DTypeError, "got dtype int64"),
    ("bool", X > 0, DTypeError, "got dtype bool"),
    ("float16", X.astype(np.float16), DTypeError, "got dtype float16"),
    ("float64 into f32", X.astype(np.float64), DTypeError, "got dtype float64"),
    ("complex64", X.astype(np.complex64), DTypeError, "got dtype complex64"),
    ("object", X.astype(object), DTypeError, "got dtype object"),
    ("big-endian float32", X.astype(">f4"), DTypeError, "got dtype >f4"),
    ("a list", X.tolist(), InputError, "got list, not a NumPy array"),
    ("None", None, InputError, "got NoneType, not a NumPy array"),
    ("broadcast, 10^10 rows", np.broadcast_to(X[:1], (10**10, 5)), InputError,
     "more than this machine's"),
]  # fmt: skip

ACCEPTED = [
    ("C-contiguous", X),
    ("Fortran-ordered", np.asfortranarray(X)),
    ("transposed view", np.ascontiguousarray(X.T).T),
    ("strided rows", np.repeat(X, 2, axis=0)[::2]),
    ("strided columns", np.repeat(X, 3, axis=1)[:, ::3]),
    ("negative strides", X[::-1][::-1]),
    ("read-only", read_only(X)),
    ("misaligned", misaligned(X)),
    ("batch 1", X[:1]),
    ("batch 0", X[:0]),
    ("a matrix subclass", matrix(X)),
    ("NaN in row 2", np.where(np.arange(7)[:, None] == 2, np.float32(np.nan), X)),
    ("+inf and -inf", np.where(X > 1.5, np.float32(np.inf), np.where(X < -1.5, -np.inf, X))),
    ("huge finite values", X * np.float32(1e30)),
    ("subnormal values", X * np.float32(1e-42)),
]


@pytest.mark.parametrize("name, value, error, message", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_with_a_clear_error(model, name, value, error, message):
    with pytest.raises(error) as err:
        model(value)
    assert message in str(err.value)
    assert "input %x" in str(err.value) or error is InputError


@pytest.mark.parametrize("name, value", ACCEPTED, ids=[r[0] for r in ACCEPTED])
def test_accepted_and_computed_as_numpy_would(model, name, value):
    got = model(value)
    want = expected(np.asarray(value))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # NaN where NumPy has NaN
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(value), np.asarray(value))  # input not written


def test_nan_stays_in_its_row(model):
    x = X.copy()
    x[3, 1] = np.nan
    y = model(x)
    assert np.isnan(y[3]).all() and not np.isnan(np.delete(y, 3, axis=0)).any()


def test_the_input_is_never_written(model):
    x = X.copy()
    model(x)
    np.testing.assert_array_equal(x, X)


def test_symbolic_batch_must_agree_between_inputs():
    @tfu.function
    def pair(a: tfu.Input["N", 3], b: tfu.Input["N", 3]):
        return a * b

    m = tfu.compile(pair)
    with pytest.raises(ShapeError, match="N=4 on axis 0, but N=3 elsewhere"):
        m(np.ones((3, 3), np.float32), np.ones((4, 3), np.float32))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((X, X), {}, "takes 1 input(s) (x), got 2"),
        ((), {}, "missing input 'x'"),
        ((), {"y": X}, "has no input 'y'"),
        ((X,), {"x": X}, "input 'x' given twice"),
    ],
)
def test_wrong_arguments(model, args, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model(*args, **kwargs)


# -- out= --------------------------------------------------------------------------------------
def test_out_arrays(model):
    want = expected(X)
    fortran = np.asfortranarray(np.empty((7, 4), np.float32))
    assert model(X, out=fortran) is fortran
    np.testing.assert_allclose(fortran, want, rtol=2e-3, atol=2e-4)
    for bad, message in [
        (np.empty((7, 5), np.float32), "shape (7, 4)"),
        (np.empty((7, 4), np.float64), "dtype float32"),
        (read_only(np.empty((7, 4), np.float32)), "read-only"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            model(X, out=bad)


def test_out_aliasing_the_input():
    @tfu.function
    def square_plus(x: tfu.Input["N", 4]):
        return tfu.tanh(x @ np.eye(4, dtype=np.float32)[::-1] + x)

    m = tfu.compile(square_plus)
    x = RNG.standard_normal((9, 4)).astype(np.float32)
    want = tfu.reference.run(square_plus.graph(), x)
    m(x, out=x)  # computed into a temporary, then copied
    np.testing.assert_allclose(x, want, rtol=2e-3, atol=2e-4)


# -- the model owns its weights ----------------------------------------------------------------
def test_weights_changed_after_compile_change_nothing():
    w = RNG.standard_normal((5, 3)).astype(np.float32)
    bias = RNG.standard_normal(3).astype(np.float32)
    b = GraphBuilder("owned")
    x = b.input("x", TensorType("f32", ("N", 5)))
    w_id = b.const(w, "w")
    bias_id = b.const(bias, "b")
    g = b.build([b.op("relu", [b.op("add", [b.op("matmul", [x, w_id]), bias_id])])])
    # a Graph built by hand may hold the caller's own, writable arrays
    shared = {w_id: w, bias_id: bias}
    g = tfu.Graph(g.name, g.nodes.values(), g.inputs, g.outputs, shared)
    for target in ("cpu", "reference"):
        m = tfu.compile(g, target=target, pipeline="" if target == "reference" else None)
        before = m(X)
        w *= -1
        bias += 100
        np.testing.assert_array_equal(m(X), before)
        w *= -1
        bias -= 100


def test_weights_captured_by_a_function_are_copied():
    w = RNG.standard_normal((5, 3)).astype(np.float32)

    @tfu.function
    def layer(x: tfu.Input["N", 5]):
        return x @ w

    m = tfu.compile(layer)
    before = m(X)
    w[...] = 0
    np.testing.assert_array_equal(m(X), before)


# -- threads -----------------------------------------------------------------------------------
def test_several_threads_call_one_model_at_once(model):
    batches = [RNG.standard_normal((n, 5)).astype(np.float32) for n in (1, 3, 64, 200, 0, 11)]
    wants = [expected(x) for x in batches]
    failures: list[str] = []

    def worker(k: int) -> None:
        for round_ in range(25):
            i = (k + round_) % len(batches)
            got = model(batches[i])
            if got.shape != wants[i].shape or not np.allclose(got, wants[i], 2e-3, 2e-4):
                failures.append(f"thread {k} round {round_} batch {len(batches[i])}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


# -- Ctrl-C ------------------------------------------------------------------------------------
_INTERRUPTED = """
import sys, time, numpy as np, tilefuse as tfu
net = tfu.Sequential([tfu.Dense(1024, activation="relu"), tfu.Dense(1024), tfu.Dense(8)],
                     input_dim=1024, seed=0)
model = tfu.compile(net)
big = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)
small = np.random.default_rng(1).standard_normal((5, 1024)).astype(np.float32)
out = np.empty((4096, 8), np.float32)
print("ready", flush=True)
try:
    for _ in range(1000):
        model(big, out=out)
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
want = tfu.reference.run(net.graph(), small)
for batch in (small, big[:300]):
    got = model(batch)
    ref = tfu.reference.run(net.graph(), batch)
    assert np.allclose(got, ref, rtol=2e-3, atol=2e-4 * max(1, np.abs(ref).max())), "corrupt"
print("ok", flush=True)
"""


def test_ctrl_c_during_a_kernel_leaves_the_model_working():
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=os.environ,
    )  # fmt: skip
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # well inside the loop of ~100 ms calls
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "ok"], out + err
