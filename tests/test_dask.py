"""tfu.dask.predict: compiled models over dask.array and Dask DataFrame chunks, on the local
schedulers and on a real LocalCluster of worker processes (each compiles once)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402

import tilefuse as tfu  # noqa: E402
from tilefuse.check import tolerance  # noqa: E402
from tilefuse.dask import worker_threads  # noqa: E402
from tilefuse.ops import cast_graph  # noqa: E402

FEATURES = 784
CLUSTER_ROWS = 1_000_000
CLUSTER_CHUNK = 50_000  # 20 chunks; docs/scaling.md: 10k-50k-row chunks ran at one speed


def mnist_mlp() -> tfu.Sequential:
    layers = [tfu.Dense(512, activation="relu"), tfu.Dense(512, activation="relu"), tfu.Dense(10)]
    return tfu.Sequential(layers, input_dim=FEATURES, seed=0)


@pytest.fixture(scope="module")
def net():
    return mnist_mlp()


@pytest.fixture(scope="module")
def model(net):
    return tfu.compile(net, target="cpu")


def assert_matches_reference(got: np.ndarray, net, x: np.ndarray) -> None:
    exact = tfu.reference.run(cast_graph(net.graph(), "f64"), x.astype(np.float64))
    rtol, atol = tolerance("f32", float(np.max(np.abs(exact))))
    np.testing.assert_allclose(got, exact, rtol=rtol, atol=atol)


def features(rows: int, chunk: int, seed: int = 0, feature_chunk: int = FEATURES) -> da.Array:
    """Rows drawn lazily, chunk by chunk, from a seeded generator."""
    rng = da.random.default_rng(seed)
    shape, chunks = (rows, FEATURES), (chunk, feature_chunk)
    return rng.standard_normal(shape, chunks=chunks, dtype=np.float32)


# -- local schedulers --------------------------------------------------------------------------
def test_an_array_maps_chunk_by_chunk_with_the_right_chunks_and_dtype(model, net):
    X = features(2_500, 1_000, feature_chunk=200)  # predict joins the feature chunks
    y = tfu.dask.predict(model, X)
    assert y.shape == (2_500, 10)
    assert y.chunks == ((1_000, 1_000, 500), (10,))
    assert y.dtype == np.float32
    assert_matches_reference(y.compute(), net, X.compute())


def test_f64_rows_are_cast_to_the_model_dtype(model, net):
    X = features(300, 128).astype(np.float64)
    y = tfu.dask.predict(model, X)
    assert y.dtype == np.float32
    assert_matches_reference(y.compute(scheduler="sync"), net, X.compute().astype(np.float32))


def test_a_dataframe_gives_a_dataframe_with_its_index(model, net):
    x = features(600, 600).compute()
    names = [f"pixel{i}" for i in range(FEATURES)]
    frame = dd.from_array(x, columns=names).repartition(npartitions=3)
    out = tfu.dask.predict(model, frame, output_columns=[f"digit{d}" for d in range(10)])
    assert list(out.columns) == [f"digit{d}" for d in range(10)]
    result = out.compute()
    assert list(result.index) == list(range(600))
    assert_matches_reference(result.to_numpy(), net, x)


def test_a_dataframe_can_give_an_array_and_pick_its_feature_columns(model, net):
    x = features(400, 400).compute()
    names = [f"pixel{i}" for i in range(FEATURES)]
    frame = dd.from_array(x, columns=names).repartition(npartitions=2)
    frame["label"] = 1
    y = tfu.dask.predict(model, frame, columns=names, output="array")
    assert y.dtype == np.float32 and y.shape[1] == 10
    assert_matches_reference(y.compute(), net, x)


def test_the_callers_model_keeps_its_threads(model):
    before = model.threads
    tfu.dask.predict(model, features(64, 32), threads=1).compute()
    assert model.threads == before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: features(10, 10)[:, :100], "rows of shape"),
        (lambda: np.zeros((10, FEATURES), np.float32), "dask.array or a Dask DataFrame"),
        (lambda: dd.from_array(np.zeros((4, 3)), columns=list("abc")), "3 feature columns"),
    ],
)
def test_inputs_that_do_not_fit_are_refused(model, make, message):
    with pytest.raises(tfu.InputError, match=message):
        tfu.dask.predict(model, make())


def test_models_with_two_outputs_are_refused():
    @tfu.function
    def two(x: tfu.Input["N", 4]):
        return tfu.relu(x), tfu.tanh(x)

    with pytest.raises(tfu.InputError, match="one input and one output"):
        tfu.dask.predict(tfu.compile(two, target="reference"), features(4, 4)[:, :4])


class FakeClient:
    """What worker_threads reads from a distributed Client."""

    def __init__(self, workers: dict[str, tuple[str, int, int]]) -> None:
        self.workers = workers  # address -> (host, task threads, cores)

    def scheduler_info(self, n_workers: int = 5) -> dict:
        info = {a: {"host": h, "nthreads": t} for a, (h, t, _) in self.workers.items()}
        return {"workers": info}

    def run(self, function) -> dict:
        return {address: cores for address, (_, _, cores) in self.workers.items()}


def test_kernel_threads_share_each_hosts_cores():
    plan = worker_threads(
        FakeClient({
            "tcp://a:1": ("a", 1, 2), "tcp://a:2": ("a", 1, 2),  # 2 processes on 2 cores
            "tcp://b:1": ("b", 2, 16),  # one process running 2 tasks at once on 16 cores
            "tcp://c:1": ("c", 8, 4),  # more task threads than cores: one kernel thread
        })
    )  # fmt: skip
    assert plan == {"tcp://a:1": 1, "tcp://a:2": 1, "tcp://b:1": 8, "tcp://c:1": 1}


# -- a real cluster --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_a_million_rows_on_two_worker_processes_each_compiling_once(client, model, net):
    X = features(CLUSTER_ROWS, CLUSTER_CHUNK, seed=7)
    y = tfu.dask.predict(model, X)
    assert y.chunks[0] == (CLUSTER_CHUNK,) * (CLUSTER_ROWS // CLUSTER_CHUNK)
    sample = np.sort(np.random.default_rng(3).choice(CLUSTER_ROWS, 48, replace=False))
    result, sample_rows = dask.compute(y, X[sample])  # one pass: X's chunks are made once
    assert result.shape == (CLUSTER_ROWS, 10) and np.isfinite(result).all()
    assert_matches_reference(result[sample], net, sample_rows)

    stats = client.run(lambda: dict(tfu.cache.stats))
    assert len(stats) == 2
    assert all(s.get("compiles", 0) <= 1 for s in stats.values()), stats
    assert sum(s.get("compiles", 0) for s in stats.values()) >= 1, stats
    share = max(1, tfu.dask.cores() // 2)  # 2 worker processes x 1 task thread
    threads = client.run(lambda: [m.threads for m in tfu.compiler._rebuilt.values()])
    assert all(t == [share] for t in threads.values() if t), threads


def test_the_thread_plan_of_a_real_cluster(client):
    plan = worker_threads(client)
    assert sorted(plan) == sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert set(plan.values()) == {max(1, tfu.dask.cores() // 2)}


def test_predicting_again_compiles_nothing_more(client, model):
    tfu.dask.predict(model, features(20_000, 5_000, seed=8)).sum().compute()
    before = client.run(lambda: tfu.cache.stats["compiles"])
    tfu.dask.predict(model, features(20_000, 5_000, seed=9)).sum().compute()
    assert client.run(lambda: tfu.cache.stats["compiles"]) == before
    assert all(count <= 1 for count in before.values()), before
