"""The per-kernel profiler (model.profile, tilefuse profile): times from cycle counters around
every op, roofline shares, the kernels' sum against a plain call."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import cli


def mlp() -> tfu.Sequential:
    return tfu.Sequential([tfu.Dense(512, "relu"), tfu.Dense(512, "relu"), tfu.Dense(10)],
                          input_dim=784, seed=0)  # fmt: skip


def test_the_kernels_add_up_to_the_call():
    """Within 15 % of the same calls' wall time (medians; taken again, up to three times,
    should another process on the machine get in the way)."""
    model = tfu.compile(mlp())
    x = np.random.default_rng(0).standard_normal((256, 784)).astype(np.float32)
    for _ in range(3):
        profile = model.profile(x, repeats=15)
        if abs(profile.kernel_seconds - profile.call_seconds) <= 0.15 * profile.call_seconds:
            break
    assert [k.op for k in profile.kernels] == ["dense", "dense", "dense"]
    assert all(k.seconds > 0 and k.gflops > 0 and k.pct_of_roof > 0 for k in profile.kernels)
    assert sum(k.share for k in profile.kernels) == pytest.approx(1.0)
    assert profile.plain_call_seconds > 0
    assert abs(profile.kernel_seconds - profile.call_seconds) <= 0.15 * profile.call_seconds
    big, small = profile.kernels[0], profile.kernels[2]  # 784x512 against 512x10
    assert big.bound == "compute" and small.seconds < big.seconds
    text = str(profile)
    assert "%0 = dense[act=relu](%x, %w0, %b0)" in text and "% of roof" in text


def test_profile_from_the_command_line(capsys):
    assert cli.main(["profile", "examples/transformer_ffn.py", "--batch", "8", "--repeat", "3",
                     "--json"]) == 0  # fmt: skip
    found = json.loads(capsys.readouterr().out)
    assert found["batch"] == 8 and found["repeats"] == 3
    assert {k["op"] for k in found["kernels"]} == {"dense"}  # the layer norm: in the second
    assert cli.main(["profile", "examples/mlp.py", "--repeat", "0"]) == 2


def test_only_the_cpu_target_profiles():
    model = tfu.compile(mlp(), target="reference")
    with pytest.raises(tfu.TilefuseError, match="cpu target"):
        model.profile(np.ones((2, 784), np.float32))


def test_a_native_models_profile_runs_attention_on_the_pool():
    """The profiled forward is Numba's: it reads attention's task function from the pool,
    which a native forward (carrying its own) did not fill, so attention ran serially."""
    from tilefuse.backends import cpu_pool as P

    @tfu.function
    def heads(q: tfu.Input["N", 2, 16, 8], k: tfu.Input["N", 2, 16, 8]):
        return tfu.attention(q, k, k)

    model = tfu.compile(heads)
    assert model.native is not None
    q = np.random.default_rng(0).standard_normal((2, 2, 16, 8)).astype(np.float32)
    pool = model.pool  # the process's pool: an earlier Numba forward may have filled the slot
    installed = int(pool[P.ATTENTION_F32])
    pool[P.ATTENTION_F32] = 0
    try:
        profile = model.profile(q, q, repeats=2)
        assert [k.op for k in profile.kernels] == ["attention"]
        assert pool[P.ATTENTION_F32] != 0 and pool[P.PARALLEL_FOR] != 0
    finally:
        pool[P.ATTENTION_F32] = pool[P.ATTENTION_F32] or installed


def test_a_profile_says_when_the_thread_pool_stalled(monkeypatch):
    """On a busy machine a worker loses its core holding a task and the pool backs off to
    serial calls; a profile taken then says so (the pool's stall count over its calls)."""
    from tilefuse.backends import cpu_pool as P
    from tilefuse.profile import Profile

    model = tfu.compile(mlp())
    x = np.ones((64, 784), np.float32)
    if model.pool.size == 0:
        pytest.skip("no thread pool here")
    quiet = model.profile(x, repeats=2)
    assert quiet.to_dict()["pool_stalls"] >= 0
    plain = model.run

    def stalling_run(inputs):  # each plain call as if one of its jobs had stalled
        model.pool[P.STALLS] += 1
        return plain(inputs)

    monkeypatch.setattr(model, "run", stalling_run)
    busy = model.profile(x, repeats=3)
    assert busy.pool_stalls >= 4  # 3 calls and the warm-up, whatever else stalled
    assert f"the thread pool stalled {busy.pool_stalls} time(s)" in str(busy)
    assert "stalled" not in str(Profile("g", 1, 1, 1.0, "roof"))
