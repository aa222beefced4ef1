"""Batch inference beyond one machine: a compiled model mapped over Dask chunks.

    import dask.array as da, tilefuse as tfu
    model = tfu.compile(net, target="cpu")
    X = da.from_zarr("features.zarr")            # N x 784, larger than memory
    y = tfu.dask.predict(model, X)               # lazy N x 10, one task per row chunk
    y.to_zarr("scores.zarr")                     # or y.compute(), y[:5].compute(), ...

Place in the pipeline: after the backend. The model enters the Dask graph once, as one key
whose value is the pickled model (graph, weights, target, options: `compiler.rebuild_model`)
as bytes, so the scheduler never unpickles it; a worker loads it, the others fetch it, and
each worker process compiles it once (from its on-disk cache when that has the module) and
runs it on every chunk it gets. Kernel threads per task are chosen so that a host's worker
processes × their task threads × kernel threads do not exceed its cores.

Needs the optional extra `tilefuse[dask]`; `import tilefuse` does not import Dask.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import threading
from collections import defaultdict
from typing import Any

import dask
import dask.array as da
import numpy as np

from .backends import CompiledModel
from .errors import InputError
from .ir import TensorType

__all__ = ["predict", "worker_threads"]


def predict(
    model: CompiledModel,
    X: Any,
    *,
    columns: list[str] | None = None,
    output: str = "same",
    output_columns: list[str] | None = None,
    threads: int | None = None,
) -> Any:
    """`model` over every row of `X`, lazily: a dask.array or a Dask DataFrame of features.

    X: an array of rows (chunked along rows: the feature dims are joined into one chunk
    here) or a DataFrame whose `columns` (default: all) are the features, in model order.
    output: "same" gives an array for an array and a DataFrame (the input's index, columns
    `output_columns`, default y0, y1, ...) for a DataFrame; "array" gives an array for both.
    threads: kernel threads per task (default: a worker's share of its host's cores).

        f32[N,784] chunks ((50000, ...), (784,))  ->  f32[N,10] chunks ((50000, ...), (10,))
    """
    input_type, output_type = signature(model)
    client = _current_client()
    plan = {"all": threads} if threads else worker_threads(client) if client else {}
    model_key = model_in_graph(model, distributed=client is not None)
    if isinstance(X, da.Array):
        return predict_array(model_key, X, input_type, output_type, plan)
    if not _is_dataframe(X):
        raise InputError(f"tfu.dask.predict takes a dask.array or a Dask DataFrame, not {type(X)}")
    features = X[list(columns)] if columns is not None else X
    if len(features.columns) != input_type.shape[1] or input_type.rank != 2:
        raise InputError(
            f"{len(features.columns)} feature columns for a model input of type {input_type}"
        )
    if output == "array":
        return predict_array(model_key, features.to_dask_array(), input_type, output_type, plan)
    return predict_frame(model_key, features, input_type, output_type, plan, output_columns)


def signature(model: CompiledModel) -> tuple[TensorType, TensorType]:
    """The one input and one output, both batched along a leading symbolic dim."""
    g = model.final
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise InputError(
            f"tfu.dask.predict maps models with one input and one output; {g.name} has "
            f"{len(g.inputs)} and {len(g.outputs)}"
        )
    (input_type,), (output_type,) = g.input_types(), g.output_types()
    batch = input_type.shape[0] if input_type.rank else None
    fixed = [*input_type.shape[1:], *output_type.shape[1:]]
    if not isinstance(batch, str) or output_type.shape[:1] != (batch,) or not _ints(fixed):
        raise InputError(
            f"tfu.dask.predict needs rows along a symbolic first dim only: {g.name} maps "
            f"{input_type} to {output_type}"
        )
    return input_type, output_type


def predict_array(
    model: Any, X: da.Array, input_type: TensorType, output_type: TensorType, plan: dict
) -> da.Array:
    """One map_blocks task per row chunk; the feature dims become one chunk each."""
    if X.shape[1:] != input_type.shape[1:]:
        raise InputError(f"rows of shape {X.shape[1:]} for a model input of type {input_type}")
    X = X.astype(input_type.np_dtype).rechunk({axis: -1 for axis in range(1, X.ndim)})
    dtype = output_type.np_dtype
    chunks = (X.chunks[0], *((d,) for d in output_type.shape[1:]))
    axes = {}
    if X.ndim != output_type.rank:  # e.g. images in, vectors out
        axes = {"drop_axis": list(range(1, X.ndim)), "new_axis": list(range(1, output_type.rank))}
    meta = np.empty((0,) * output_type.rank, dtype)
    return da.map_blocks(
        predict_block, X, model, plan, chunks=chunks, dtype=dtype, meta=meta, **axes
    )


def predict_frame(
    model: Any,
    features: Any,
    input_type: TensorType,
    output_type: TensorType,
    plan: dict,
    output_columns: list[str] | None,
) -> Any:
    """One map_partitions task per partition; the result keeps the partition's index."""
    import pandas as pd

    names = list(output_columns or [f"y{j}" for j in range(output_type.shape[1])])
    if len(names) != output_type.shape[1]:
        raise InputError(f"{len(names)} output_columns for a model output of type {output_type}")
    index = features._meta.index
    meta = pd.DataFrame({c: np.empty(0, output_type.np_dtype) for c in names}, index=index)
    return features.map_partitions(
        predict_partition, model, plan, input_type.np_dtype, names, meta=meta
    )


def model_in_graph(model: CompiledModel, distributed: bool) -> Any:
    """The model as one key of the Dask graph. On a cluster its value is the pickled bytes
    and a task loads them: a graph's literals are unpickled by the scheduler, which need not
    be able to compile. Local schedulers get a copy (so setting threads leaves `model` be)."""
    name = f"tilefuse-model-{model.cache_key()}"
    if not distributed:
        return dask.delayed(copy.copy(model), name=name, traverse=False)
    return dask.delayed(pickle.loads, pure=True)(pickle.dumps(model), dask_key_name=name)


# -- in the tasks ----------------------------------------------------------------------------
def predict_block(block: np.ndarray, model: CompiledModel, plan: dict) -> np.ndarray:
    threads = threads_here(plan)
    if threads and hasattr(model, "set_threads"):
        model.set_threads(threads)
    return model(block)


def predict_partition(
    part: Any, model: CompiledModel, plan: dict, dtype: np.dtype, names: list[str]
) -> Any:
    import pandas as pd

    rows = predict_block(part.to_numpy(dtype=dtype), model, plan)
    return pd.DataFrame(rows, index=part.index, columns=names)


def threads_here(plan: dict) -> int | None:
    """Kernel threads for the task running now: the plan's for this worker, else a share of
    the cores among the tasks that can run at once (None: the model's own setting)."""
    if "all" in plan:
        return plan["all"]
    worker = _current_worker()
    if worker is not None:
        return plan.get(worker.address) or max(1, cores() // worker.state.nthreads)
    local_synchronous = threading.current_thread() is threading.main_thread()
    if local_synchronous and multiprocessing.parent_process() is None:
        return None
    pool = dask.config.get("num_workers", None) or cores()
    return max(1, cores() // pool)


# -- thread plan -----------------------------------------------------------------------------
def worker_threads(client: Any) -> dict[str, int]:
    """Kernel threads per worker: its host's cores shared evenly among the task threads of
    all worker processes on that host (2 cores, 2 workers × 1 thread: 1 kernel thread)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    host_cores = client.run(cores)  # address -> cores that process may use
    tasks_on_host: dict[str, int] = defaultdict(int)
    for info in workers.values():
        tasks_on_host[info["host"]] += info["nthreads"]
    return {
        address: max(1, host_cores.get(address, cores()) // tasks_on_host[info["host"]])
        for address, info in workers.items()
    }


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _current_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _is_dataframe(X: Any) -> bool:
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(X, dd.DataFrame)


def _ints(dims: list[Any]) -> bool:
    return all(isinstance(d, int) for d in dims)
