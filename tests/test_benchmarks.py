"""The benchmark harness (benchmarks/): workloads, the systems' forward passes, the peak loop,
round-robin timing, output checks and the report, at toy sizes. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import avx2_host  # noqa: E402
import peak  # noqa: E402
import run as bench  # noqa: E402
import workloads as wl  # noqa: E402

TINY = wl.Case("tiny", "b3", 3, (16, 24, 8), ("relu", "identity"))
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu_tanh", "leaky_relu", "identity")
NO_WAIT = bench.Budget(seconds=0.0, min_reps=3, max_reps=3, sample_seconds=0.0, warm_below=0.0)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def all_activations_case() -> wl.Case:
    dims = (12, 20, 16, 14, 12, 10, 6)
    return wl.Case("acts", "b5", 5, dims, ACTIVATIONS)


# -- workloads -----------------------------------------------------------------------------
def test_standard_cases_are_the_ones_the_report_promises():
    assert [c.name for c in wl.CASES] == [
        "mlp-small/b1", "mlp-small/b16", "mlp-small/b256", "mlp-small/b4096",
        "mlp-wide/b1", "mlp-wide/b64", "mlp-wide/b512",
        "dense-sigmoid/1024", "dense-sigmoid/2048",
    ]  # fmt: skip
    small = wl.select_cases("mlp-small/b1")[0]
    assert small.flops() == 2 * (784 * 512 + 512 * 512 + 512 * 10)
    assert small.weight_bytes() == 4 * (784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10)
    square = wl.select_cases("dense-sigmoid/2048")[0]
    assert (square.batch, square.dims, square.flops()) == (2048, (2048, 2048), 2 * 2048**3)
    wide = wl.select_cases("mlp-wide/b64")[0]
    assert wide.activations == ("gelu_tanh", "identity")


def test_select_cases_by_name_or_workload_in_the_order_given():
    names = [c.name for c in wl.select_cases("dense-sigmoid/2048, mlp-wide,dense-sigmoid/2048")]
    assert names == ["dense-sigmoid/2048", "mlp-wide/b1", "mlp-wide/b64", "mlp-wide/b512"]
    assert len(wl.select_cases("")) == len(wl.CASES)
    with pytest.raises(ValueError, match="unknown case 'mlp-small/b3'.*mlp-small/b16"):
        wl.select_cases("mlp-small/b3")


def test_numpy_forward_agrees_with_the_reference_interpreter():
    case = all_activations_case()
    net = wl.build_net(case)
    x = wl.make_input(case)
    y = wl.numpy_forward(net.params, case.activations, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, net(x), rtol=1e-5, atol=1e-6)


def test_blas_only_does_the_matmuls_alone():
    net = wl.build_net(TINY)
    x = wl.make_input(TINY)
    y = wl.SYSTEMS["blas"].make(net, TINY.activations)(x)
    np.testing.assert_allclose(y, x @ net.params[0][0] @ net.params[1][0], rtol=1e-5)


@pytest.mark.parametrize("system", ["onnxruntime", "torch"])
def test_peer_systems_compute_the_same_network(system):
    if not wl.SYSTEMS[system].available():
        pytest.skip(f"{system} is not installed")
    case = all_activations_case()
    net = wl.build_net(case)
    x = wl.make_input(case)
    runner = wl.SYSTEMS[system].make(net, case.activations)
    runner.set_threads(1)
    np.testing.assert_allclose(runner(x), wl.numpy_forward(net.params, case.activations, x),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.skipif(not has("onnx"), reason="onnx is not installed")
def test_onnx_model_is_valid_with_a_symbolic_batch():
    import onnx

    net = wl.build_net(TINY)
    model = wl.onnx_model(net.params, TINY.activations)
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add",
                                                     "Identity"]  # fmt: skip


# -- peak ----------------------------------------------------------------------------------
needs_fma = pytest.mark.skipif(not peak.host_lanes(), reason="no AVX2 + FMA on this CPU")


@needs_fma
@pytest.mark.parametrize("lanes", peak.host_lanes() or [8])
def test_fma_loop_computes_its_chains(lanes):
    # c <- c * 0.5 + 0.25 from 1.0: after 3 steps 0.5625 in each of the 12 chains
    assert peak.run_loop(lanes, 3) == [12 * 0.5625] * lanes
    assert peak.run_loop(lanes, 200) == [12 * 0.5] * lanes


@needs_fma
def test_measure_peak_reports_every_width():
    result = peak.measure_peak(threads=1, seconds=0.002, repeats=2)
    assert set(result["by_lanes"]) == set(peak.host_lanes())
    assert result["gflops"] == max(r["max"] for r in result["by_lanes"].values()) > 0


def test_read_bandwidth_sums_its_buffer_and_reports_gbps():
    found = peak.measure_bandwidth(1, megabytes=8, repeats=2)
    assert found["gbps"] >= found["median_gbps"] > 0 and found["megabytes"] == 8


def test_best_of_keeps_the_fastest_run_per_width():
    first = peak.summarize(2, {8: {"max": 10.0, "median": 9, "min": 8}})
    second = peak.summarize(
        2, {8: {"max": 12.0, "median": 7, "min": 1}, 16: {"max": 11.0, "median": 10, "min": 9}}
    )
    best = peak.best_of([first, second])
    assert (best["gflops"], best["lanes"]) == (12.0, 8)
    assert best["by_lanes"][16]["max"] == 11.0


# -- timing and checking -------------------------------------------------------------------
def test_round_robin_rotates_the_order_every_round():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = bench.round_robin(fns, NO_WAIT)
    assert "".join(calls[-9:]) == "abcbcacab"
    assert all(len(t.samples) == 3 and t.inner == 1 for t in timings.values())


def test_plan_rounds_batches_short_calls_and_fits_the_budget():
    budget = bench.Budget(seconds=1.0, min_reps=2, max_reps=100, sample_seconds=2e-3,
                          warm_below=5e-3)  # fmt: skip
    inner, rounds = bench.plan_rounds({"fast": 1e-3, "slow": 1e-2}, budget)
    assert inner == {"fast": 2, "slow": 1}
    assert rounds == int(1.0 / ((2 + 1) * 1e-3 + 1e-2))
    assert bench.plan_rounds({"huge": 10.0}, budget)[1] == 2  # at least min_reps


def test_check_output_rejects_wrong_shapes_and_values():
    ref = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    assert bench.check_output(ref + 1e-5, ref)["ok"]
    assert not bench.check_output(ref + 0.1, ref)["ok"]
    assert not bench.check_output(ref.T, ref)["ok"]
    assert not bench.check_output(np.full_like(ref, np.nan), ref)["ok"]


def test_load_between_subtracts_this_process():
    before = {"own": 1.0, "busy": 10.0, "steal": 0.0, "wall": 100.0}
    after = {"own": 2.0, "busy": 13.0, "steal": 0.5, "wall": 102.0}
    cpus = bench.os.cpu_count() or 1
    load = bench.load_between(before, after)
    assert load["others"] == pytest.approx(2.0 / (2.0 * cpus))
    assert load["steal"] == pytest.approx(0.5 / (2.0 * cpus))


class _Off(wl.NumpyUnfused):
    """A fast wrong answer: the harness must not let it win."""

    def __call__(self, x):
        return super().__call__(x) + 0.5


class _Crashes(wl.NumpyUnfused):
    calls = 0

    def __call__(self, x):
        self.calls += 1
        if self.calls > 4:
            raise FloatingPointError("kernel fault")
        return super().__call__(x)


class _GoesWrong(wl.NumpyUnfused):
    calls = 0

    def __call__(self, x):
        self.calls += 1
        return super().__call__(x) * (1 if self.calls == 1 else 2)


def _broken(net, activations):
    raise RuntimeError("no such backend")


def test_wrong_or_broken_systems_get_an_error_and_no_time():
    systems = [
        wl.SYSTEMS["numpy"],
        wl.System("off", "off", None, _Off),
        wl.System("drifts", "drifts", None, _GoesWrong),
        wl.System("broken", "broken", None, _broken),
        wl.System("crashes", "crashes", None, _Crashes),
    ]
    rows = {r["system"]: r for r in bench.run_case(TINY, 1, bench.Runners(systems),
                                                   wl.build_net(TINY), NO_WAIT)}  # fmt: skip
    bench.add_ratios(list(rows.values()), TINY)
    assert rows["numpy"]["vs_numpy"] == 1.0 and rows["numpy"]["check_after"]["ok"]
    assert rows["off"]["error"].startswith("wrong output: max abs error 0.5")
    assert rows["drifts"]["error"].startswith("wrong output after timing")
    assert rows["broken"]["error"] == "build failed: RuntimeError: no such backend"
    assert rows["crashes"]["error"] == "failed while timed: FloatingPointError: kernel fault"
    assert all("median_s" not in rows[n] for n in ("off", "drifts", "broken", "crashes"))
    rows["broken"]["error"] = "a | in a message"
    for row in rows.values():
        row.update(case=TINY.name, threads=1)
    table = bench.detail_table(list(rows.values()), {n: n for n in rows})
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1  # same columns


# -- the whole run -------------------------------------------------------------------------
def test_a_tiny_run_end_to_end_writes_json_markdown_and_plot(tmp_path):
    names = ["tilefuse", "numpy", "blas", "onnxruntime"]
    systems = [wl.SYSTEMS[n] for n in names if wl.SYSTEMS[n].available()]
    report = bench.benchmark([TINY], systems, [1], NO_WAIT, quick=True, calibrate=False)
    bench.write_report(report, tmp_path, "smoke", no_plot=False)

    saved = json.loads((tmp_path / "smoke.json").read_text())
    rows = {r["system"]: r for r in saved["results"]}
    assert set(rows) == {s.name for s in systems}
    assert {n: r["error"] for n, r in rows.items() if "error" in r} == {}
    assert all(r["median_s"] > 0 for r in rows.values())
    assert rows["tilefuse"]["check_after"]["ok"] and rows["blas"]["check"] is None
    assert rows["tilefuse"]["gflop"] == TINY.flops() / 1e9
    low, high = rows["tilefuse"]["vs_best_peer_rounds"]
    assert 0 < low <= high and all("round_s" not in r for r in rows.values())
    assert saved["machine"]["versions"]["numpy"] == np.__version__
    markdown = (tmp_path / "smoke.md").read_text()
    assert "## 1 thread" in markdown and "| tiny/b3 | tilefuse |" in markdown
    assert (tmp_path / "smoke.png").exists() == has("matplotlib")


def test_the_ratio_to_the_best_peer_comes_with_its_spread_over_the_rounds():
    """Round by round, tilefuse's speedup over the best peer (the fastest median): 2, 2, 1;
    its p10-p90 goes beside the ratio of medians in the summary."""
    rows = [
        {"system": "tilefuse", "reference": False, "median_s": 1.0, "round_s": [1.0, 1.0, 2.0]},
        {"system": "numpy", "reference": False, "median_s": 2.0, "round_s": [2.0, 2.0, 2.0]},
        {"system": "onnxruntime", "reference": False, "median_s": 3.0, "round_s": [1.0] * 3},
    ]
    bench.add_ratios(rows, TINY)
    tf = rows[0]
    assert tf["vs_best_peer"] == 2.0 and tf["vs_best_peer_rounds"] == pytest.approx([1.2, 2.0])
    assert all("round_s" not in r for r in rows) and "vs_best_peer_rounds" not in rows[1]
    for row in rows:
        row.update(case=TINY.name, gflop=1.0)
    (line,) = bench.summary_table(rows, {r["system"]: r["system"] for r in rows})[2:]
    assert "| 2× (1.20–2.00) |" in line


def test_the_conditions_rows_and_their_tables(monkeypatch, capsys):
    """mixed-numpy (pair vs sum, a fresh process per system) and busy (fresh processes, hogs)
    plumbing, small."""
    import conditions

    monkeypatch.setattr(conditions, "MIXED_BATCHES", (4,))
    monkeypatch.setattr(conditions, "MIXED_SETTLE_S", 0.0)
    monkeypatch.setattr(conditions, "MIXED_BLOCK_S", 0.001)
    monkeypatch.setattr(sys, "argv", ["conditions.py", "--mixed", "numpy", "--threads", "1"])
    conditions.main()  # what a fresh process prints
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mixed = printed + conditions.mixed_one("tilefuse", 1, rounds=2)
    assert [(r["system"], r["batch"]) for r in mixed] == [("numpy", 4), ("tilefuse", 4)]
    for r in mixed:
        assert r["overhead"] == pytest.approx(r["pair_s"] / (r["projection_s"] + r["alone_s"]))
    asked = []

    def fresh(flags: list[str]) -> object:
        asked.append(flags)
        return {"error": "no such module"} if flags[1] == "onnxruntime" else printed

    monkeypatch.setattr(conditions, "_fresh", fresh)
    logged: list[str] = []
    rows = conditions.mixed_numpy(["numpy", "onnxruntime"], 1, log=logged.append)
    assert rows == printed and asked[0] == ["--mixed", "numpy", "--threads", "1"]
    assert "mixed-numpy: onnxruntime cannot run: no such module" in logged
    alone = conditions.time_one("numpy", 4, 1, seconds=0.02)
    assert alone["median_s"] > 0 and alone["cores"] > 0
    fake = iter([{"median_s": 1e-3, "mean_s": 1e-3, "cores": 1.0},
                 {"median_s": 3e-3, "mean_s": 4e-3, "cores": 0.4}])  # fmt: skip
    monkeypatch.setattr(conditions, "in_fresh_process", lambda *args: next(fake))
    monkeypatch.setattr(conditions, "BUSY_HOGS", 1)
    (busy,) = conditions.busy(["numpy"], 1, log=lambda line: None)
    assert busy["slowdown"] == pytest.approx(3.0) and busy["mean_slowdown"] == pytest.approx(4.0)
    table = "\n".join(bench.conditions_tables({"mixed_numpy": mixed, "busy": [busy]}, {}))
    assert "## Beside NumPy in one process" in table
    assert "| numpy | 1 ms | 3 ms | 3.00x | 1 ms | 4 ms | 4.00x | 0.40 |" in table
    machine = {"cpu": "AMD EPYC 7B13 64-Core Processor", "cores": 2, "isa": ["avx2", "fma"]}
    assert bench.host_stem(machine) == "amd-epyc-7b13-64-core-processor-2c-avx2"


def test_the_compile_table_from_fresh_processes():
    """Cold (empty caches), warm and import, each in processes of their own; one run each."""
    import compile_time

    once = {"import": 1, "cold": 1, "warm": 1}
    found = compile_time.measure(["tilefuse", "numpy"], once)
    assert set(found) == {"tilefuse"}
    times = found["tilefuse"]
    assert 0 < times["import_s"] and 0 < times["warm_s"] and 0 < times["cold_s"]
    assert {"passes", "kernel library: codegen", "forward: codegen"} <= set(times["cold_phases"])
    table = "\n".join(bench.compile_table(found, {"tilefuse": "tilefuse"}))
    assert "## Compile and start-up" in table and "| tilefuse | " in table
    assert "tilefuse's cold compile by phase: " in table


# -- the forced-AVX2 run: the peers see no AVX-512 either ---------------------------------------
def test_the_harness_starts_its_pythons_through_the_cpuid_mask_only_when_asked():
    plain = avx2_host.python_command("x.py", "--flag", env={})
    assert plain == [sys.executable, "x.py", "--flag"]
    masked = avx2_host.python_command("-c", "pass", env={avx2_host.ENV: "1"})
    assert masked[0] == sys.executable and masked[1].endswith("avx2_host.py")
    assert masked[2:] == ["-c", "pass"]


def test_hiding_avx512_after_numpy_loaded_is_refused():
    # NumPy, ONNX Runtime, PyTorch and LLVM pick their kernels from CPUID when they load
    with pytest.raises(RuntimeError, match="(before importing numpy|cannot hide)"):
        avx2_host.hide()
    assert not avx2_host.hidden()


SEES = """
import llvmlite.binding as llvm
from numpy._core._multiarray_umath import __cpu_features__
import avx2_host
print(llvm.get_host_cpu_features().get("avx512f", False), __cpu_features__["AVX512F"],
      avx2_host.hidden(), avx2_host.answered() > 0)
"""


@pytest.mark.skipif(avx2_host.unavailable() is not None,
                    reason=f"cannot hide AVX-512 here: {avx2_host.unavailable()}")  # fmt: skip
def test_a_process_started_through_the_mask_sees_a_cpu_without_avx512():
    masked = avx2_host.python_command("-c", SEES, env={avx2_host.ENV: "1"})
    done = subprocess.run(masked, capture_output=True, text=True, timeout=300, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "True", "True"]
    # any other fault still ends the process as it would (the handler passes it on)
    crash = "import ctypes; ctypes.string_at(8, 1)"  # (address 0 reads as b"")
    done = subprocess.run(avx2_host.python_command("-c", crash, env={avx2_host.ENV: "1"}),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == -11


def test_the_header_says_how_the_peers_of_a_forced_avx2_run_chose_their_kernels():
    assert bench.hidden_avx512_note({"avx2_forced": False}) == ""
    kept = bench.hidden_avx512_note({"avx2_forced": True, "avx512_hidden": None})
    assert "kept AVX-512" in kept
    seen = {"hidden": True, "cpuid_answered": 40, "numpy": False, "torch": "AVX2"}
    note = bench.hidden_avx512_note({"avx2_forced": True, "avx512_hidden": seen})
    assert "numpy no AVX-512, torch AVX2; 40 CPUIDs answered" in note


def test_command_line_rejects_unknown_cases_and_systems():
    with pytest.raises(SystemExit, match="unknown case"):
        bench.main(["--cases", "mlp-huge/b1"])
    with pytest.raises(SystemExit, match="unknown system"):
        bench.main(["--systems", "numpy,tensorflow"])
    assert bench.choose_threads("1,64", lambda line: None) == [1]


def test_gpu_bench_smoke_runs_on_the_simulator(tmp_path):
    """The GPU benchmark's plumbing on the CUDA simulator: its checked result and report; the
    systems that need a GPU (torch, CuPy) are left out, even where a CPU-only torch is
    installed."""
    import os
    import subprocess

    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_bench.py"), "--smoke", "--out", str(tmp_path),
         "--cases", "dense-sigmoid/24", "--seconds", "0"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert report["device"] == "CUDA simulator" and report["simulator"] is True
    assert report["systems"] == ["tilefuse", "tilefuse-out"]
    (row,) = report["cases"]
    assert row["case"] == "dense-sigmoid/24" and row["flops"] == 2 * 24**3
    assert row["systems"]["tilefuse"]["max_abs_diff"] < 1e-5
    assert "| dense-sigmoid/24 |" in (tmp_path / "gpu-smoke.md").read_text()
