"""Pickling compiled models: a model ships its graph, weights, target and options and compiles
again where it is unpickled, once per process (counted in tilefuse.cache.stats)."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse.backends import graph_state
from tilefuse.cache import stats
from tilefuse.compiler import graph_from_state, rebuild_model


def mlp(seed: int = 0) -> tfu.Sequential:
    layers = [tfu.Dense(64, activation="relu"), tfu.Dense(10)]
    return tfu.Sequential(layers, input_dim=32, seed=seed)


@pytest.fixture(scope="module")
def cpu_model():
    return tfu.compile(mlp(), target="cpu")


def rows(n: int = 9) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 32)).astype(np.float32)


def test_unpickling_in_a_fresh_process_gives_identical_outputs(cpu_model, tmp_path):
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(cpu_model))
    np.save(tmp_path / "x.npy", rows())
    script = textwrap.dedent("""
        import pickle, sys, numpy as np
        from tilefuse.cache import stats
        payload = open(sys.argv[1] + "/model.pkl", "rb").read()
        first = pickle.loads(payload)
        after_first = dict(stats)
        second = pickle.loads(payload)
        assert second is first, "the second unpickle built another model"
        assert stats["compiles"] == after_first["compiles"] == 1, dict(stats)
        assert stats["unpickle_hits"] == 1, dict(stats)
        np.save(sys.argv[1] + "/y.npy", second(np.load(sys.argv[1] + "/x.npy")))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cpu_model(rows()))


def test_a_second_unpickle_in_the_same_process_does_not_recompile(cpu_model):
    payload = pickle.dumps(cpu_model)
    first = pickle.loads(payload)
    compiles, hits = stats["compiles"], stats["unpickle_hits"]
    second = pickle.loads(payload)
    assert second is first
    assert stats["compiles"] == compiles
    assert stats["unpickle_hits"] == hits + 1
    np.testing.assert_array_equal(second(rows()), cpu_model(rows()))


def test_the_rebuilt_model_is_the_same_compile(cpu_model):
    clone = pickle.loads(pickle.dumps(cpu_model))
    assert clone is not cpu_model
    assert clone.graph == cpu_model.graph
    assert clone.target == "cpu"
    assert clone.source() == cpu_model.source()
    assert clone.cache_key() == cpu_model.cache_key()


def test_the_key_follows_weights_target_and_options(cpu_model):
    assert tfu.compile(mlp(), target="cpu").cache_key() == cpu_model.cache_key()
    assert tfu.compile(mlp(seed=1), target="cpu").cache_key() != cpu_model.cache_key()
    assert tfu.compile(mlp(), target="reference").cache_key() != cpu_model.cache_key()
    assert tfu.compile(mlp(), target="cpu", threads=1).cache_key() != cpu_model.cache_key()


def test_a_model_pickles_with_the_options_it_was_compiled_with():
    model = tfu.compile(mlp(seed=2), target="cpu", threads=2)
    key = model.cache_key()
    model.set_threads(1)  # what a Dask task does on its worker: the key stays the same
    assert model.cache_key() == key
    clone = pickle.loads(pickle.dumps(model))
    assert clone.threads == 2
    assert clone.cache_key() == key


def test_reference_models_pickle_too():
    model = tfu.compile(mlp(seed=3), target="reference")
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model)
    np.testing.assert_array_equal(clone(rows()), model(rows()))


def test_a_shallow_copy_shares_the_compiled_code(cpu_model):
    compiles = stats["compiles"]
    twin = copy.copy(cpu_model)
    assert stats["compiles"] == compiles
    assert twin.forward is cpu_model.forward
    twin.set_threads(1)
    assert cpu_model.threads != 1


def test_graphs_round_trip_with_read_only_constants():
    g = mlp().graph()
    rebuilt = graph_from_state(*pickle.loads(pickle.dumps(graph_state(g))))
    assert rebuilt == g
    assert all(not a.flags.writeable for a in rebuilt.constants.values())
    assert pickle.loads(pickle.dumps(g)) == g  # plain Graph pickling works as well


def test_meta_that_does_not_pickle_is_left_behind():
    g = mlp().graph()
    g.meta["note"] = "kept"
    g.meta["hook"] = lambda: None
    assert graph_state(g)[-1] == {}
    del g.meta["hook"]
    assert graph_state(g)[-1] == {"note": "kept"}


def test_unpickling_recomputes_the_key_instead_of_trusting_it():
    """A pickle of graph B carrying model A's key returned model A."""
    a, b = mlp(seed=5), mlp(seed=6)
    model_a = tfu.compile(a, target="reference")
    pickle.loads(pickle.dumps(model_a))
    forged = (model_a.cache_key(), graph_state(b.graph()), "reference", dict(model_a.options))
    model_b = rebuild_model(*forged)
    assert model_b is not model_a
    np.testing.assert_allclose(model_b(rows()), tfu.reference.run(b.graph(), rows()))


def test_rebuild_model_compiles_what_it_is_given():
    g = mlp(seed=4).graph()
    options = {"pipeline": "", "check": False, "threads": None}
    model = rebuild_model("test-key-reference", graph_state(g), "reference", options)
    assert rebuild_model("test-key-reference", graph_state(g), "reference", options) is model
    np.testing.assert_allclose(model(rows()), tfu.reference.run(g, rows()))
