"""The 784-512-512-10 MLP over rows that need not fit in memory, on a Dask cluster.

    python examples/dask_predict.py                        # a 2-process LocalCluster
    python examples/dask_predict.py --address tcp://scheduler:8786   # a real cluster
    python examples/dask_predict.py --measure              # docs/scaling.md's numbers

Rows are drawn lazily from a seeded generator, chunk by chunk, on the workers; each worker
process compiles the model once and runs it on every chunk it gets. Needs `tilefuse[dask]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import tilefuse as tfu

net = tfu.Sequential(
    [
        tfu.Dense(512, activation="relu"),
        tfu.Dense(512, activation="relu"),
        tfu.Dense(10),
    ],
    input_dim=784,
    seed=0,
)


CHUNKS = (10_000, 25_000, 50_000, 100_000)  # rows per chunk that --measure compares


def rows(count: int, chunk: int, seed: int = 0):
    """count x 784 f32 rows, made on the workers when a chunk is needed."""
    import dask.array as da

    rng = da.random.default_rng(seed)
    return rng.standard_normal((count, 784), chunks=(chunk, 784), dtype=np.float32)


def predict_on_cluster(client, model, count: int, chunk: int) -> None:
    import dask

    X = rows(count, chunk)
    y = tfu.dask.predict(model, X)
    print(f"X: {X.dtype}{list(X.shape)} in {X.numblocks[0]} chunks -> y: {y.dtype}{list(y.shape)}")
    sample = np.arange(0, count, max(1, count // 16))
    start = time.perf_counter()
    scores, sample_rows = dask.compute(y, X[sample])
    seconds = time.perf_counter() - start
    print(f"{count} rows in {seconds:.2f} s: {count / seconds:,.0f} rows/s")
    want = tfu.reference.run(net.graph(), sample_rows)
    print("sample rows match the reference:", np.allclose(scores[sample], want, 2e-3, 2e-4))
    print("class counts:", np.bincount(scores.argmax(axis=1), minlength=10))
    compiles = client.run(lambda: tfu.cache.stats["compiles"])
    print("compiles per worker process:", sorted(compiles.values()))


# -- the measurements in docs/scaling.md ---------------------------------------------------------
def time_cluster(model, count: int, chunk: int, repeats: int) -> float:
    """Median seconds to draw `count` rows on the workers, predict and gather the scores."""
    y = tfu.dask.predict(model, rows(count, chunk))
    y[:1].compute()  # every worker has compiled before the clock starts
    return statistics.median(_seconds(y.compute) for _ in range(repeats))


def time_single_process(model, count: int, chunk: int, repeats: int) -> tuple[float, float]:
    """Median seconds for the same rows in one process, chunk by chunk: (draw and predict,
    predict only). The rows are drawn by the same Dask graph, on the synchronous scheduler."""
    X = rows(count, chunk)
    totals, model_only = [], []
    for _ in range(repeats):
        out = np.empty((count, 10), np.float32)
        start, in_model = time.perf_counter(), 0.0
        for k, block in enumerate(X.blocks):
            x = block.compute(scheduler="sync")
            before = time.perf_counter()
            model(x, out=out[k * chunk : k * chunk + len(x)])
            in_model += time.perf_counter() - before
        totals.append(time.perf_counter() - start)
        model_only.append(in_model)
    return statistics.median(totals), statistics.median(model_only)


def time_drawing(count: int, chunk: int, repeats: int) -> float:
    return statistics.median(_seconds(rows(count, chunk).sum().compute) for _ in range(repeats))


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(model, count: int, chunks: list[int], repeats: int) -> None:
    print(f"{count} rows x 784 f32, {tfu.dask.cores()} cores, medians of {repeats} runs")
    together, alone = time_single_process(model, count, chunks[0], repeats)
    report(f"one process, model(x) per {chunks[0]}-row chunk: draw + predict", count, together)
    report("one process: predict only (the model calls)", count, alone)
    report("cluster: draw only (X.sum())", count, time_drawing(count, chunks[0], repeats))
    for chunk in chunks:
        seconds = time_cluster(model, count, chunk, repeats)
        report(f"cluster, {chunk}-row chunks: draw + predict + gather", count, seconds)


def report(what: str, count: int, seconds: float) -> None:
    print(f"| {what} | {seconds:.2f} s | {count / seconds:,.0f} rows/s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a running scheduler (default: a LocalCluster)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=25_000)
    parser.add_argument("--measure", action="store_true", help="time it against one process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(net.graph())
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        print("this example needs Dask: pip install 'tilefuse[dask]'")
        return
    model = tfu.compile(net, target="cpu")
    cluster = None
    if args.address is None:  # loopback only, two worker processes of one thread each
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)  # fmt: skip
    with Client(args.address or cluster) as client:
        if args.measure:
            chunks = [args.chunk, *(c for c in CHUNKS if c != args.chunk)]
            measure(model, args.rows, chunks, args.repeats)
        else:
            predict_on_cluster(client, model, args.rows, args.chunk)
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
