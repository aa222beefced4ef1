"""One place per fact: every op of the op table has a lowering rule on every target, and an
activation added from outside the package (here, from this test module: its table row and
nothing else) runs on every target, fused into a dense where the target's kernel can."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import use_cuda_simulator

use_cuda_simulator()

import tilefuse as tfu  # noqa: E402
from tilefuse import ops  # noqa: E402
from tilefuse.backends import cuda_runtime  # noqa: E402
from tilefuse.backends.render import Renderer, lowering_rule  # noqa: E402
from tilefuse.ops import OPS, Activation  # noqa: E402
from tilefuse.passes import run_pipeline  # noqa: E402


def test_every_op_has_a_rule_on_every_target():
    from tilefuse.backends import cuda, render

    for op, opdef in OPS.items():
        if op in ("input", "const"):
            continue
        assert opdef.ref is not None, f"{op} has no reference"
        rule = lowering_rule(op)
        for renderer in (Renderer, cuda.CudaRenderer):
            assert hasattr(renderer, f"render_{rule}"), (op, renderer)
        if rule == "unary":
            assert op in render._UNARY_CODE and op in cuda._UNARY_CODE, op


def test_an_op_without_a_rule_is_a_clear_error():
    ops.register_activation("rowmax", Activation(lambda x, **_: x.max(-1, keepdims=True) + 0 * x))
    try:
        with pytest.raises(tfu.TilefuseError, match="no rule for rowmax"):
            lowering_rule("rowmax")
    finally:
        ops.unregister_activation("rowmax")


def softsign(x: np.ndarray, **_) -> np.ndarray:
    return x / (1 + np.abs(x))


@pytest.fixture
def with_softsign():
    """An activation the package has never heard of: its table row, nothing else."""
    row = Activation(softsign, lambda attrs: ["v = v / ({T}(1) + abs(v))"], flops=3)
    ops.register_activation("softsign", row)
    yield
    ops.unregister_activation("softsign")


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
def test_an_activation_added_from_a_test_module_runs_on_every_target(with_softsign, target):
    if target == "cuda" and not cuda_runtime.simulated():
        pytest.skip("numba.cuda was imported for a GPU first")
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((6, 16)) / 3, rng.standard_normal((16, 4)) / 4

    @tfu.function
    def net(x: tfu.Input["N", 6, "f32"]):
        h = tfu.activation("softsign")(x @ w1.astype(np.float32))
        return tfu.relu(tfu.activation("softsign")(h) @ w2.astype(np.float32))

    fused = run_pipeline(net.graph(), "canonicalize,fuse")
    assert "dense[act=softsign, bias=false, post=(softsign)]" in str(fused)  # fused, twice
    model = tfu.compile(net, target=target)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    want = np.maximum(softsign(softsign(x @ w1)) @ w2, 0)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
    dense = tfu.Sequential([tfu.Dense(3, "softsign")], input_dim=6)  # by name, in a layer
    np.testing.assert_allclose(tfu.compile(dense, target=target)(x), dense(x), rtol=1e-5)
