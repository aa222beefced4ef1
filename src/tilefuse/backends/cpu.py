"""The Numba/LLVM CPU backend: the whole network as one generated, JIT-compiled function.

    model = tfu.compile(net, target="cpu")    # canonicalize, fuse, tile, plan_memory, render
    print(model.source())                     # the generated Python, one block per IR line

`render(g)` turns the tiled graph into readable Python source: one `@njit` function
`forward` that binds the symbolic batch, calls one kernel driver per fused dense op
(`cpu_kernels`: packed, blocked, LLVM-IR micro-kernels with the epilogue in registers) and
writes plain loops for the remaining ops. The source is written to a content-hashed `.py`
file in the cache directory and imported, so Numba's `cache=True` finds it again in the
next process. Weights are constants: they are packed into micro-panel order once, here.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import phases
from .._version import kernel_fingerprint
from ..cache import digest, load_generated
from ..errors import IndexRangeError, InputError, TilefuseError
from ..ir import Graph, TensorType
from ..passes.memory import memory_plan_of
from . import cpu_native, reference
from . import cpu_pool as P
from .cpu_kernels import pool_control
from .cpu_library import KernelFailure, failure_message
from .model import CompiledModel
from .render import Rendered, load_module, render

if TYPE_CHECKING:
    from ..profile import Profile


# -- the model -----------------------------------------------------------------------------
class CpuModel(CompiledModel):
    target = "cpu"

    def __init__(self, graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> None:
        super().__init__(graph, stages, options)
        with phases.phase("render"):
            self.rendered = render(self.final)
        self._input_nodes = [self.final[i] for i in self.final.inputs]
        self.threads = options.get("threads")
        self._local = threading.local()  # workspace (and native frame) per calling thread
        self._memory: tuple[tuple, int] = ((), 0)  # (dims, bytes a call needs) of the last call
        self.pool = pool_control()  # the kernels' thread pool (see cpu_pool)
        plan = self.rendered.native if options.get("native", True) else None
        self.native = None if plan is None else _Native(plan, self.rendered, self.pool)
        if self.native is not None:  # driver calls only: no Numba (cpu_native)
            # networks of one shape share the code; a passed check is this model's (weights)
            loaded = self.native.loaded
            check_name = f"{loaded.name}-{digest(str(self.final))[:12]}"
            self.loaded: Any = replace(loaded, name=check_name)
            self.module, self.forward = None, None
        else:
            with phases.phase("forward: import"):
                self.loaded = load_generated(self.rendered.source, kernel_fingerprint(),
                                             self.final.name, self._compile_forward)  # fmt: skip
            self.module = self.loaded.module
            self.forward = self.module.forward
            self._install_attention_tasks()
        self._fast = _FastPath.of(self)
        self._profiled: tuple[Rendered, Any] | None = None  # (source, forward) with clocks

    def _install_attention_tasks(self) -> None:
        """The pool slots a Numba forward's attention reads its task function from (a native
        forward carries its own): else attention runs serially."""
        from . import cpu_runtime

        for dtype in sorted({n.type.dtype for n in self.final if n.op == "attention"}):
            with phases.phase("run-time kernels: attention tasks"):
                cpu_runtime.install_tasks(self.pool, dtype)

    def _compile_forward(self, module: Any, rendered: Rendered | None = None) -> bool:
        """Compile (or load) `forward` for the one signature calls use: C-contiguous, aligned,
        writable inputs (run copies others), so that the self-checked code is the code that
        runs. Returns whether Numba served it from its cache."""
        import numba

        rendered = rendered or self.rendered
        array, dtype = numba.types.Array, numba.from_dtype
        sig = [array(dtype(n.type.np_dtype), n.type.rank, "C") for n in self._input_nodes]
        sig += [numba.typeof(p) for p in rendered.params]
        sig += [array(dtype(dt), 1, "C") for dt, _ in rendered.workspace]
        sig += [array(numba.int64, 1, "C")]  # the thread pool
        if rendered.profiled_ops:
            sig += [array(numba.int64, 1, "C")]  # the profile's clock readings
        sig += [array(dtype(t.np_dtype), t.rank, "C") for t in rendered.outputs]
        with phases.phase("forward: Numba"):
            module.forward.compile(tuple(sig))
        hit = sum(module.forward.stats.cache_hits.values()) > 0
        if not hit:  # Numba's own timer of its LLVM passes and codegen
            metadata = getattr(module.forward.overloads.get(tuple(sig)), "metadata", None) or {}
            seconds = metadata.get("timers", {}).get("llvm_lock", 0.0)
            phases.move("forward: Numba", "forward: Numba LLVM", seconds)
        return hit

    def __call__(self, *args: Any, out: Any = None, **kwargs: Any) -> Any:
        fast = self._fast
        if fast and out is None and not kwargs and len(args) == 1 and fast.accepts(args[0]):
            return self._call_fast(fast, args[0])
        inputs = reference.bind_inputs(self.final, args, kwargs)
        outs = self.run(inputs, None if out is None else _as_list(out))
        if self.call_check is not None:  # check="always"
            self.call_check(self, inputs, outs)
        if not self.sealed:
            self.seal()
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _call_fast(self, fast: _FastPath, x: np.ndarray) -> np.ndarray:
        """The common call, one ready array in and one out, with no per-call checks beyond
        `fast.accepts`: at batch 1 the generic path's Python costs as much as the kernels."""
        batch = x.shape[fast.batch_axis]
        if batch > fast.checked_batch:
            self.check_memory({self.rendered.batch_symbol: batch}, [x])
            fast.checked_batch = batch
        out = np.empty(fast.out_shape(batch), fast.out_dtype)
        native = self.native
        if native is not None and native.fast is not None:
            buffers = self.workspace(batch)  # noqa: F841 - alive while the kernels use them
            local = self._local
            frame = local.frame  # alive, and the frame of these buffers, during the call
            status = native.fast(x, out, local.frame_address)
            if status:
                raise native.failure(frame, status)
        else:
            self._forward([x], self.workspace(batch), [out])
        if not self.sealed:
            self.seal()
        return out

    def dims(self, inputs: Sequence[np.ndarray]) -> dict[str, int]:
        """The symbolic dims' sizes in this call."""
        dims: dict[str, int] = {}
        for node, array in zip(self._input_nodes, inputs, strict=True):
            for d, size in zip(node.type.shape, array.shape, strict=True):
                if isinstance(d, str):
                    dims[d] = size
        return dims

    def run(
        self, inputs: Sequence[np.ndarray], outs: list[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        dims = self.dims(inputs)
        self.check_memory(dims, inputs)
        inputs = [_as_kernel_input(a) for a in inputs]
        shapes = [tuple(dims.get(d, d) for d in t.shape) for t in self.rendered.outputs]
        if outs is None:
            outs = [np.empty(s, t.np_dtype) for s, t in zip(shapes, self.rendered.outputs)]
        if len(outs) != len(shapes):
            raise InputError(f"out= has {len(outs)} array(s) for {len(shapes)} output(s)")
        targets = [_check_out(o, s, t) for o, s, t in zip(outs, shapes, self.rendered.outputs)]
        targets = [_unaliased(t, inputs) for t in targets]
        workspace = self.workspace(dims.get(self.rendered.batch_symbol, 0))
        self._forward(inputs, workspace, targets)
        for given, target in zip(outs, targets):
            if given is not target:
                given[...] = target
        return outs

    def _forward(self, inputs: Sequence[np.ndarray], workspace: list[np.ndarray],
                 targets: Sequence[np.ndarray]) -> None:  # fmt: skip
        """One call of the compiled forward, native or Numba's, on ready arrays."""
        if self.native is not None:
            local = self._local
            frame = local.frame  # the frame of `workspace` (this thread's, for this batch)
            self.native.bind(frame, inputs, targets)
            status = self.native.forward(local.frame_address)
            if status:
                raise self.native.failure(frame, status)
            return
        P.set_thread_limit(self.pool, self.threads)
        try:
            self.forward(*inputs, *self.rendered.params, *workspace, self.pool, *targets)
        except KernelFailure as err:
            raise TilefuseError(failure_message(self.final.name, err)) from None

    def check_memory(self, dims: dict[str, int], inputs: Sequence[np.ndarray]) -> None:
        """Raise InputError, before allocating anything, when a call with these dims needs more
        memory (outputs, workspace, contiguous copies of the inputs) than the machine has."""
        key = tuple(sorted(dims.items()))
        if self._memory[0] != key:
            self._memory = (key, _bytes_needed(self.final, self.rendered, dims))
        needed = self._memory[1] + sum(a.nbytes for a in inputs if not _kernel_ready(a))
        total = _physical_memory()
        if total and needed > total:
            sizes = ", ".join(f"{d}={n}" for d, n in dims.items())
            raise InputError(
                f"{self.final.name}: a call with {sizes or 'these inputs'} needs "
                f"{_gib(needed)} for its outputs and intermediates, more than this machine's "
                f"{_gib(total)} of memory; split the batch"
            )

    def workspace(self, batch: int) -> list[np.ndarray]:
        """The memory plan's buffers for `batch`, kept per thread and reused while it fits."""
        local, threads = self._local, self.threads  # (read once: another thread may set it)
        if getattr(local, "batch", None) != batch or local.threads != threads:
            local.buffers = [np.empty(size(batch), dt) for dt, size in self.rendered.workspace]
            local.batch, local.threads = batch, threads
            if self.native is not None:  # the native forward's frame: these buffers' addresses
                local.frame = self.native.frame(local.buffers, threads)
                local.frame_address = local.frame.ctypes.data
        return local.buffers

    def set_threads(self, threads: int | None) -> None:
        self.threads = threads  # each thread's next call makes its frame anew

    def profile(self, *args: Any, repeats: int = 20, **kwargs: Any) -> Profile:
        """Per kernel: time, share of the call, GFLOP/s, GB/s and % of the roofline, in the
        call of median wall time among `repeats` calls of a `forward` that reads the cycle
        counter around every op (compiled once, beside the plain one); the median of as many
        plain calls beside it."""
        from ..profile import Profile
        from ..roofline import machine_peak

        if repeats < 1:
            raise InputError(f"profile: repeats must be >= 1, got {repeats}")
        inputs = [_as_kernel_input(a) for a in reference.bind_inputs(self.final, args, kwargs)]
        dims = self.dims(inputs)
        self.check_memory(dims, inputs)
        rendered, forward = self._profiled_forward()
        shapes = [tuple(dims.get(d, d) for d in t.shape) for t in rendered.outputs]
        outs = [np.empty(s, t.np_dtype) for s, t in zip(shapes, rendered.outputs)]
        batch = dims.get(rendered.batch_symbol, 1)
        workspace = self.workspace(dims.get(rendered.batch_symbol, 0))
        clock = np.zeros(len(rendered.profiled_ops) + 1, np.int64)
        hz = cycles_per_second()
        P.set_thread_limit(self.pool, self.threads)
        stalls = int(self.pool[P.STALLS]) if self.pool.size else 0
        samples, calls, plain = [], [], []
        for r in range(repeats + 1):  # the first of each is a warm-up
            start = time.perf_counter()
            forward(*inputs, *rendered.params, *workspace, self.pool, clock, *outs)
            middle = time.perf_counter()
            self.run(inputs)
            if r:
                samples.append(np.diff(clock) / hz)
                calls.append(middle - start)
                plain.append(time.perf_counter() - middle)
        # the call of median wall time, op by op: its ops add up to it (medians taken op by
        # op would not, on a busy machine: each call is interrupted in a different op)
        median = int(np.argsort(calls)[len(calls) // 2])
        per_op = [float(s) for s in samples[median]]
        stalls = int(self.pool[P.STALLS]) - stalls if self.pool.size else 0
        return Profile.of(self.final, rendered.profiled_ops, per_op, calls[median], batch,
                          repeats, machine_peak(), float(np.median(plain)), stalls)  # fmt: skip

    def _profiled_forward(self) -> tuple[Rendered, Any]:
        if self._profiled is None:
            rendered = render(self.final, profile=True)
            warm = functools.partial(self._compile_forward, rendered=rendered)
            loaded = load_generated(rendered.source, kernel_fingerprint(), self.final.name,
                                    warm, trial=False)  # fmt: skip
            self._profiled = (rendered, loaded.module.forward)
            self._install_attention_tasks()  # the profiled forward is Numba's
        return self._profiled

    def source(self) -> str:
        """The generated forward: Python for Numba, or, for a network of driver calls only,
        the LLVM IR of its native forward (cpu_native)."""
        if self.native is not None:
            return cpu_native.source(self.native.plan)
        return self.rendered.source

    def llvm(self) -> str:
        """Optimised LLVM IR of `forward` with the kernels it calls linked in."""
        return self._inspect("llvm")

    def asm(self) -> str:
        """Assembly of `forward` with the kernels it calls linked in."""
        return self._inspect("asm")

    def _inspect(self, kind: str) -> str:
        """`forward` compiled afresh with Numba's line table (Numba cannot show code it loaded
        from its cache), each op's code under its IR line, then the kernel library of each
        dtype it calls (`cpu_listing`)."""
        from . import cpu_library, cpu_listing

        if self.native is not None:
            return self.native.listing(kind)
        import numba

        from .cpu_entry import DTYPES

        if not self.forward.signatures:
            self.run(random_batch(self.final))
        signature = self.forward.signatures[0]
        with phases.phase(f"{kind}: compile forward with a line table"):
            options = dict(debug=True, _dbg_extend_lifetimes=False, boundscheck=False)
            fresh = numba.njit(fastmath=False, error_model="numpy", **options)(self.forward.py_func)
            fresh.compile(signature)
            code = fresh.inspect_asm(signature) if kind == "asm" else fresh.inspect_llvm(signature)
        smap = cpu_listing.SourceMap.of(self.rendered.source)
        library = {}
        for name in smap.driver_ops:  # "f32 6x16"
            dtype, micro = name.split()
            mr, nr = (int(v) for v in micro.split("x"))
            with phases.phase(f"{kind}: kernel library {name}"):
                library[name] = cpu_library.listing(DTYPES[dtype], kind, (mr, nr))
        return cpu_listing.listing(kind, code, self.rendered.source, library, self.final.name)


class _Native:
    """A native forward (cpu_native) loaded, and the frames of its calls."""

    def __init__(self, plan: cpu_native.NativePlan, rendered: Rendered, pool: np.ndarray) -> None:
        self.plan, self.layout = plan, plan.frame()
        with phases.phase("forward: native"):
            self.loaded = cpu_native.load(plan)
        self.forward, self.fast = self.loaded.forward, self.loaded.fast
        self.params = list(rendered.params)  # kept alive: the frames hold their addresses
        template = np.zeros(self.layout.size, np.int64)
        template[cpu_native.POOL], template[cpu_native.POOL_SIZE] = pool.ctypes.data, pool.size
        base = self.layout.base
        for j, p in enumerate(self.params):
            template[base["param"] + j] = p.ctypes.data
        for j, address in enumerate(cpu_native.driver_addresses(plan)):
            template[base["entry"] + j] = address
        if plan.tasks:  # attention's task functions (attention's library's)
            from . import cpu_library

            for j, dtype in enumerate(plan.tasks):
                at = base["task"] + cpu_native.TASK_SLOTS * j
                template[at : at + cpu_native.TASK_SLOTS] = cpu_library.attention_task(dtype)
        if plan.parallel_for:
            from . import cpu_library

            template[base["parallel_for"]] = cpu_library.parallel_for_limited_address()
        self.template = template

    def frame(self, workspace: list[np.ndarray], threads: int | None) -> np.ndarray:
        frame = self.template.copy()
        frame[cpu_native.THREADS] = threads or 0
        for j, buffer in enumerate(workspace):
            frame[self.layout.base["workspace"] + j] = buffer.ctypes.data
        return frame

    def bind(self, frame: np.ndarray, inputs: Sequence[np.ndarray],
             outputs: Sequence[np.ndarray]) -> None:  # fmt: skip
        base = self.layout.base
        for j, a in enumerate(inputs):
            frame[base["input"] + j] = a.ctypes.data
        for j, a in enumerate(outputs):
            frame[base["output"] + j] = a.ctypes.data
        for symbol, j, axis in self.plan.dims:
            frame[self.layout.dim(symbol)] = inputs[j].shape[axis]

    def failure(self, frame: np.ndarray, status: int) -> TilefuseError:
        """The error a failed call raises: a gather's index out of range (an IndexError, as
        the Numba forward's, and an InputError naming the op), or a driver's status."""
        line = self.plan.calls[int(frame[cpu_native.FAILED_OP])].line
        if status == cpu_native.INDEX_OUT_OF_RANGE:
            return IndexRangeError(f"{self.plan.graph}: {line}: an index is out of range for "
                                   "the table's axis (-extent .. extent-1)")  # fmt: skip
        return TilefuseError(failure_message(self.plan.graph, KernelFailure(line, int(status))))

    def listing(self, kind: str) -> str:
        """The forward's optimised LLVM IR or assembly, then the drivers' libraries."""
        from . import cpu_library as L

        tm = L.target_machine()
        module = L.optimized(cpu_native.build_module(self.plan), tm)
        code = tm.emit_assembly(module) if kind == "asm" else str(module)
        library = {}
        for d, mr, nr in self.plan.entries:
            with phases.phase(f"{kind}: kernel library {d} {mr}x{nr}"):
                library[f"{d} {mr}x{nr}"] = L.listing(L.DTYPE_NAMES[d], kind, (mr, nr))
        from .cpu_listing import library_listing, native_listing

        lines = [call.line for call in self.plan.calls]
        # the calls that make one indirect call each: a driver's, or the pool's parallel-for
        indirect = (cpu_native.DenseCall, cpu_native.AttentionCall, cpu_native.LayerNormCall)
        drivers = [k for k, c in enumerate(self.plan.calls) if isinstance(c, indirect)]
        text = native_listing(kind, code, library, lines, self.plan.graph, drivers)
        for dtype in sorted(set(self.plan.tasks)):  # attention's library, after the kernels'
            with phases.phase(f"{kind}: attention library {dtype}"):
                found = L.listing(L.DTYPE_NAMES[dtype], kind, attention=True)
            ops = [c.line for c in self.plan.calls if isinstance(c, cpu_native.AttentionCall)
                   and self.plan.tasks[c.task] == dtype]  # fmt: skip
            text += "\n" + library_listing(
                found,
                kind,
                dtype,
                ops,
                "attention's library",
                "the attention ops of this network run its task",
            )
        return text


@dataclass
class _FastPath:
    """What a call must look like to skip the generic checks: one input with one symbolic
    axis (the batch) and its other extents fixed, one output, no per-call self-check."""

    dtype: np.dtype
    shape: tuple  # the input's extents, None on the batch axis
    batch_axis: int
    out_template: tuple  # the output's extents, None where the batch goes
    out_dtype: np.dtype
    checked_batch: int = -1  # calls up to this batch have passed the memory check

    @staticmethod
    def of(model: CpuModel) -> _FastPath | None:
        g, rendered = model.final, model.rendered
        if len(g.inputs) != 1 or len(g.outputs) != 1 or model.options.get("check") == "always":
            return None
        t, out = g[g.inputs[0]].type, rendered.outputs[0]
        symbolic = [a for a, d in enumerate(t.shape) if isinstance(d, str)]
        names = {d for d in (*t.shape, *out.shape) if isinstance(d, str)}
        if len(symbolic) != 1 or names != {rendered.batch_symbol}:
            return None

        def blank(shape: tuple) -> tuple:
            return tuple(None if isinstance(d, str) else d for d in shape)

        return _FastPath(t.np_dtype, blank(t.shape), symbolic[0], blank(out.shape), out.np_dtype)

    def accepts(self, x: Any) -> bool:
        if type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim != len(self.shape):
            return False
        flags = x.flags
        if not (flags.c_contiguous and flags.aligned and flags.writeable):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, x.shape))

    def out_shape(self, batch: int) -> tuple:
        return tuple(batch if d is None else d for d in self.out_template)


_HZ: list[float] = []


def cycles_per_second() -> float:
    """The cycle counter's rate (the TSC's, constant on x86-64 CPUs of the last 15 years),
    measured once against time.perf_counter over 20 ms."""
    if not _HZ:
        from .cpu_entry import read_cycles

        read_cycles()  # compiled (or loaded) before timing
        c0, t0 = read_cycles(), time.perf_counter()
        time.sleep(0.02)
        c1, t1 = read_cycles(), time.perf_counter()
        _HZ.append((c1 - c0) / (t1 - t0))
    return _HZ[0]


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, tuple | list) else [out]


def _kernel_ready(a: np.ndarray) -> bool:
    return a.flags.c_contiguous and a.flags.aligned and a.flags.writeable


def _as_kernel_input(a: np.ndarray) -> np.ndarray:
    """`a` as forward's compiled signature takes it: Fortran-ordered, strided, misaligned and
    read-only arrays are copied (forward never writes its inputs)."""
    return a if _kernel_ready(a) and type(a) is np.ndarray else np.array(a, order="C", subok=False)


def _unaliased(target: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
    """An out= that overlaps an input would be overwritten while it is read: use a temporary."""
    if any(np.may_share_memory(target, a) for a in inputs):
        return np.empty_like(target)
    return target


def _bytes_needed(g: Graph, rendered: Rendered, dims: dict[str, int]) -> int:
    """Outputs plus workspace (the memory plan's buffers, or every value when unplanned)."""
    batch = dims.get(rendered.batch_symbol, 0)
    total = sum(dt.itemsize * size(batch) for dt, size in rendered.workspace)
    plan = memory_plan_of(g)
    for node in g.ops():
        planned = plan is not None and node.id in plan.buffer_of
        if not planned or node.id in g.outputs:
            elements = math.prod(dims.get(d, d) for d in node.type.shape)
            total += node.type.np_dtype.itemsize * elements
    return total


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_out(out: Any, shape: tuple, t: TensorType) -> np.ndarray:
    """The array forward writes: `out` itself when it is C-contiguous, else a temporary."""
    if not isinstance(out, np.ndarray) or out.shape != shape:
        raise InputError(f"out= must be a NumPy array of shape {shape}")
    if out.dtype != t.np_dtype:
        raise InputError(f"out= must have dtype {t.np_dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise InputError("out= is read-only")
    return out if out.flags.c_contiguous else np.empty(shape, t.np_dtype)


def random_batch(g: Graph, batch: int = 2) -> list[np.ndarray]:
    shapes = [[d if isinstance(d, int) else batch for d in t.shape] for t in g.input_types()]
    return [np.zeros(s, t.np_dtype) for s, t in zip(shapes, g.input_types())]


def compile_cpu(graph: Graph, stages: dict[str, Graph], options: dict[str, Any]) -> CpuModel:
    return CpuModel(graph, stages, options)


__all__ = ["CpuModel", "compile_cpu", "load_module", "reference", "render"]
