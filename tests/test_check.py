"""The self-check at compile: when it runs (first compile, not a cache hit; always; never),
what a mismatch says (the pass or the backend node, a reproducer that runs), inputs that
prove nothing, and deterministic=True."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import cache, ops
from tilefuse.check import CheckWarning, check_key, error_ratio
from tilefuse.errors import AttrError, MiscompileError
from tilefuse.ir import Graph
from tilefuse.passes import PASSES, Pass

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((13, 24)).astype(np.float32)
B1 = RNG.standard_normal(24).astype(np.float32)
W2 = RNG.standard_normal((24, 6)).astype(np.float32)
SCALE = RNG.standard_normal((1, 6)).astype(np.float32)


@tfu.function
def scaled(x: tfu.Input["N", 13]):
    h = tfu.tanh(x @ W1 + B1)
    return (h @ W2) * SCALE  # the mul becomes a post step of the fused dense


def fresh_net(seed: int) -> tfu.Sequential:
    """A network no other test compiles (its weights are in the module key)."""
    return tfu.Sequential([tfu.Dense(9, activation="relu"), tfu.Dense(3)], input_dim=5, seed=seed)


def test_first_compile_checks_and_a_cache_hit_does_not():
    net = fresh_net(1001)
    first = tfu.compile(net)
    assert not first.check_report.skipped and first.check_report.batches == (1, 11)
    assert first.check_report.worst <= 1.0
    again = tfu.compile(net)  # same module, already checked
    assert again.loaded.hit and "passed when it was first compiled" in again.check_report.skipped
    cache.check_record(check_key(again)).unlink()  # forget the pass: checked again
    assert not tfu.compile(net).check_report.skipped


def test_a_new_process_trusts_the_checked_cache_entry():
    net_code = (
        "tfu.Sequential([tfu.Dense(9, activation='relu'), tfu.Dense(3)], input_dim=5, seed=1002)"
    )
    script = (
        "import tilefuse as tfu\n"
        f"m = tfu.compile({net_code})\n"
        "print(m.loaded.hit, bool(m.check_report.skipped))\n"
    )
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ
        )
        runs.append(result.stdout.split())
    # the first process checks (its code may come from the cache: networks of one shape
    # share a native forward; the check is per model, weights included); the second trusts it
    assert runs[0][1] == "False" and runs[1] == ["True", "True"]


def test_check_false_and_bad_values():
    model = tfu.compile(fresh_net(1003), check=False)
    assert model.check_report.skipped == "check=False"
    with pytest.raises(AttrError, match="check='sometimes'"):
        tfu.compile(fresh_net(1003), check="sometimes")


def test_check_always_compares_every_call(monkeypatch):
    model = tfu.compile(fresh_net(1004), check="always")
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    model(x)
    real_run = model.run
    monkeypatch.setattr(model, "run", lambda inputs, outs=None: [o * 2 for o in real_run(inputs)])
    with pytest.raises(MiscompileError, match="output 0 of the cpu model differs"):
        model(x)


@dataclasses.dataclass(frozen=True)
class BreakTanh(Pass):
    """A wrong pass: tanh -> sigmoid (same shapes, so verify cannot tell)."""

    name: ClassVar[str] = "break_tanh"

    def run(self, g: Graph) -> Graph:
        nodes = [
            dataclasses.replace(n, op="sigmoid") if n.op == "tanh" else n for n in g.nodes.values()
        ]
        return Graph(g.name, nodes, g.inputs, g.outputs, g.constants, g.meta)


def test_a_wrong_pass_is_named_with_the_node_it_broke(monkeypatch):
    monkeypatch.setitem(PASSES, "break_tanh", BreakTanh)
    spec = "canonicalize,break_tanh,fuse,tile,plan_memory"
    with pytest.raises(MiscompileError) as err:
        tfu.compile(scaled, pipeline=spec)
    message = str(err.value)
    assert "introduced by pass break_tanh" in message
    assert "= sigmoid(" in message and "test_check.py:" in message  # the node and user's line
    assert "reproducer: python " in message


def test_a_backend_bug_is_named_with_its_node_and_the_reproducer_runs(monkeypatch):
    # the code generated for mul is now wrong (the reference still multiplies)
    monkeypatch.setitem(ops.BINARY_OPS, "mul", ops.Binary("+", np.multiply))
    with pytest.raises(MiscompileError) as err:
        tfu.compile(scaled)
    message = str(err.value)
    assert "introduced by the cpu backend's code for it" in message
    assert "= mul(" in message  # the tile pass split the post step out: it runs on its own
    repro = message.split("reproducer: python ")[1].split(";")[0].strip()
    files = sorted(p.name for p in os.scandir(os.path.dirname(repro)))
    assert files == ["constants.npz", "inputs.npz", "repro.py"]
    # the injected bug lives in this process only: the reproducer compiles cleanly elsewhere
    result = subprocess.run([sys.executable, repro], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0 and "fixed" in result.stdout, result.stderr


def test_the_reproducer_fails_while_the_bug_is_there(tmp_path):
    """A reproducer written by one process and run by another that has the same bug (here a
    sitecustomize that injects it) exits 1 with the localized error."""
    inject = tmp_path / "sitecustomize.py"
    inject.write_text(
        "from tilefuse import ops\nops.BINARY_OPS['mul'] = ops.Binary('-', ops.np.multiply)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = (
        "import sys, tilefuse as tfu\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_check import scaled\n"
        "try:\n    tfu.compile(scaled)\n"
        "except tfu.errors.MiscompileError as e:\n"
        "    print(str(e).split('reproducer: python ')[1].split(';')[0].strip())\n"
    )
    made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    repro = made.stdout.strip().splitlines()[-1]
    result = subprocess.run([sys.executable, repro], capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert "backend's code for it" in result.stdout


def test_saturated_activation_gets_rescaled_inputs():
    w = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)

    @tfu.function
    def stuck_at_one(x: tfu.Input["N", 4]):
        return tfu.sigmoid(x @ w + 40.0)  # at inputs of size ~1 every element is 1.0

    report = tfu.compile(stuck_at_one).check_report
    assert report.input_scale >= 10.0 and report.notes == []


def test_a_dead_layer_is_reported():
    w = np.ones((4, 3), np.float32)

    @tfu.function
    def dead(x: tfu.Input["N", 4]):
        return tfu.relu(x @ w * 1e-3 - 1e6)  # no input scale tried wakes it

    with pytest.warns(CheckWarning, match="relu is saturated for every element"):
        report = tfu.compile(dead).check_report
    assert report.notes and "the ops before it are unchecked" in report.notes[0]


def test_error_ratio_nan_inf_and_shapes():
    want = np.array([1.0, np.nan, np.inf, -np.inf])
    assert error_ratio(want.astype(np.float32), want, "f32") == 0.0
    assert error_ratio(np.array([1.0, 0.0, np.inf, -np.inf]), want, "f32") == np.inf
    assert error_ratio(np.array([1.0, np.nan, -np.inf, -np.inf]), want, "f32") == np.inf
    assert error_ratio(np.zeros(3), np.zeros(4), "f64") == np.inf
    assert (
        error_ratio(np.array([1.001]), np.array([1.0]), "f32")
        < 1.0
        < error_ratio(np.array([1.001]), np.array([1.0]), "f64")
    )


# -- deterministic=True ----------------------------------------------------------------------
_THREADS_SCRIPT = """
import hashlib, numpy as np, numba, tilefuse as tfu
net = tfu.Sequential([tfu.Dense(300, activation="gelu"), tfu.Dense(77, activation="tanh"),
                      tfu.Dense(10)], input_dim=257, seed=7)
m = tfu.compile(net, deterministic=True)
x = np.random.default_rng(0).standard_normal((203, 257)).astype(np.float32)
digests = []
for t in range(1, numba.config.NUMBA_NUM_THREADS + 1):
    m.set_threads(t)
    digests.append(hashlib.sha256(m(x).tobytes()).hexdigest())
print(m.check_report.deterministic, *sorted(set(digests)))
"""


def test_deterministic_is_bit_identical_across_runs_and_thread_counts():
    outputs = []
    for threads in (1, 3, 4):
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        result = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True,
                                text=True, env=env, check=True)  # fmt: skip
        outputs.append(result.stdout.split())
    assert all(o[0] == "True" and len(o) == 2 for o in outputs), outputs  # one digest each
    assert len({o[1] for o in outputs}) == 1  # and the same one in every process


def test_deterministic_check_catches_a_nondeterministic_model(monkeypatch):
    model = tfu.compile(fresh_net(1005), check=False)
    calls = iter(range(100))
    real_run = model.run
    monkeypatch.setattr(
        model, "run", lambda inputs, outs=None: [o + next(calls) * 1e-7 for o in real_run(inputs)]
    )
    from tilefuse.check import check_determinism

    with pytest.raises(MiscompileError, match="changes between runs or thread counts"):
        check_determinism(model)


def test_check_record_is_json_with_the_result():
    model = tfu.compile(fresh_net(1006))
    record = json.loads(cache.check_record(check_key(model)).read_text())
    assert record["passed"] is True and record["graph"] == model.graph.name
