"""What `make demo` shows: the seed example, the IR of the MLP (and its fused form once the
passes are there), and why batching matters: a per-example loop against one batched call.

    python examples/demo.py
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import seed_layer
import two_layer
from mlp import net, per_example

import tilefuse as tfu
from tilefuse import passes
from tilefuse.backends import BACKENDS

BATCH = 1024
TARGETS = ("reference", "cpu")  # the CPU targets; cuda would run on its simulator here
PASS_MODULES = ("canonicalize", "fuse", "tile", "memory")


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 72 - len(text)))


def passes_available() -> bool:
    return all(importlib.util.find_spec(f"tilefuse.passes.{m}") for m in PASS_MODULES)


def show_seed() -> None:
    heading("seed example: A = sigmoid(X @ W + B)")
    print(seed_layer.net.graph())
    values = seed_layer.values_by_op(seed_layer.X)
    print("Z =", values["add"], "  A =", values["sigmoid"])


def show_two_layer() -> None:
    heading("two-layer sigmoid network: rows and columns, per example and vectorized")
    results = two_layer.compare(m=6)
    for what, value in results.items():
        print(f"  {what:22} {np.array2string(value[0], precision=6)}")


def show_mlp() -> None:
    heading("the 784-512-512-10 MLP as graph IR")
    print(net.graph())
    if not passes_available():
        print("(the fused IR appears here once the passes are installed)")
        return
    heading("the same MLP after canonicalize,fuse,tile")
    print(passes.run_stages(net.graph(), "canonicalize,fuse,tile")["tiled"])


def seconds(fn, repeat: int = 3) -> float:
    fn()  # warm-up: JIT backends compile on their first call
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def show_batching() -> None:
    heading(f"per-example loop vs one batched call, batch {BATCH}")
    if "cpu" in BACKENDS:
        print(
            "  (the cpu target compiles its kernels on the first run, then loads them from cache)"
        )
    x = np.random.default_rng(0).standard_normal((BATCH, 784)).astype(np.float32)
    loop_s = seconds(lambda: per_example(x), repeat=1)
    expected = per_example(x)
    print(f"  {'NumPy, loop over examples':32} {loop_s * 1e3:9.2f} ms")
    for target in (t for t in TARGETS if t in BACKENDS):
        start = time.perf_counter()
        model = tfu.compile(net, target=target)
        model(x[:1])  # JIT backends compile on the first call; later runs load their cache
        compile_s = time.perf_counter() - start
        batched_s = seconds(lambda model=model: model(x))
        diff = np.max(np.abs(model(x) - expected))
        print(
            f"  {'tfu ' + target + ', one batched call':32} {batched_s * 1e3:9.2f} ms"
            f"   {loop_s / batched_s:5.1f}x faster   max |diff| {diff:.1e}"
            f"   (compiled in {compile_s:.1f} s)"
        )


def main() -> None:
    show_seed()
    show_two_layer()
    show_mlp()
    show_batching()


if __name__ == "__main__":
    main()
