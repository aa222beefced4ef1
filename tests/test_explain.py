"""explain and the roofline: golden output on a small network, costs, the measured peak and its
cache, model.explain(), and the command line (`explain`, `show --emit/--diff`, `run`, `bench`)."""

from __future__ import annotations

import difflib
import io
import json
import pathlib
import re
import sys

import numpy as np
import pytest

import tilefuse as tfu
from conftest import GOLDEN_DIR, ROOT
from tilefuse import cli, explain, roofline
from tilefuse.passes import run_stages

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
GOLDENS = sorted((GOLDEN_DIR / "explain").glob("*.tf"))
SEPARATOR = "// ---- expected: tilefuse explain\n"
PEAK = roofline.Peak(100.0, 20.0, "test")


@pytest.fixture(autouse=True)
def deterministic(monkeypatch):
    """The same tilings and roofline on every host: no measurement, the generic machine."""
    monkeypatch.setenv("TILEFUSE_MACHINE", "generic")
    monkeypatch.setenv(roofline.GFLOPS_ENV, "100")
    monkeypatch.setenv(roofline.GBPS_ENV, "20")


def tilefuse(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("//"))


def without_locations(text: str) -> str:
    """Layers record the user's file:line where the graph was traced, which differs here."""
    return re.sub(r"   \(\S+:\d+\)$", "", text, flags=re.MULTILINE)


def residual_graph() -> tfu.Graph:
    source = (GOLDEN_DIR / "explain/residual.tf").read_text().split(SEPARATOR)[0]
    return tfu.parse_graph(without_comments(source))


# -- golden ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_explain_golden(path: pathlib.Path, update_goldens: bool) -> None:
    source, separator, expected = path.read_text().partition(SEPARATOR)
    assert separator, f"{path}: no {SEPARATOR.strip()!r} line"
    actual = str(explain.explain_graph(tfu.parse_graph(without_comments(source))))
    if update_goldens:
        path.write_text(source + SEPARATOR + actual)
        return
    if actual != expected:
        diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), lineterm="")
        pytest.fail(f"{path.name}:\n" + "\n".join(diff), pytrace=False)


def test_there_is_an_explain_golden() -> None:
    assert GOLDENS


def test_explain_names_every_reason_and_what_to_change() -> None:
    e = explain.explain_graph(residual_graph())
    assert [m.code for m in e.missed] == ["multi_use", "unsupported_activation"]
    assert all(m.advice == explain.ADVICE[m.code] for m in e.missed)
    text = str(e)
    assert "change  use the dense result once" in text
    assert "runs alone: it reads %1, whose fusion stopped (multi_use)" in text


def test_every_kernel_of_the_final_graph_is_explained() -> None:
    g = residual_graph()
    final = run_stages(g)["memory"]
    e = explain.explain_graph(g)
    assert [k.op for k in e.kernels] == [n.op for n in final.ops()]
    dense = [k for k in e.kernels if k.op == "dense"]
    assert all(k.tiling and len(k.tile_reasons) == 6 and k.tile_code == "model" for k in dense)
    assert [r.split("=")[0].split(" ")[0] for r in dense[0].tile_reasons] == [
        "mr",
        "kc",
        "mc",
        "nc",
        "parallel",
        "pack",
    ]


def test_an_epilogue_split_by_the_tile_pass_is_not_called_fused() -> None:
    """Post steps used to be reported as fused into the dense kernel while they ran as a
    second loop; explain now reads the records of both passes, by node id. (The add of an
    operand of the output's type is the kernel's: a residual; the relu after it is not.)"""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)

    @tfu.function
    def residual(x: tfu.Input["N", 4], r: tfu.Input["N", 3]):
        return tfu.relu(x @ w + r)

    e = explain.explain_graph(residual.graph())
    (dense,) = [k for k in e.kernels if k.op == "dense"]
    assert dense.fusion.startswith("matmul + epilogue (add) run as one dense kernel; relu run as")
    assert [k.op for k in e.kernels] == ["dense", "relu"]
    assert dense.tile_code == "model" and len(dense.tile_reasons) == 6


# -- costs and the roofline --------------------------------------------------------------------
def test_dense_cost_counts_the_matmul_the_epilogue_and_each_operand_once() -> None:
    g = run_stages(residual_graph(), "canonicalize,fuse")["fused"]
    first = next(n for n in g if n.op == "dense")  # relu(x @ w0 + b0): [N,4] @ [4,3]
    cost = roofline.op_cost(g, first, batch=10)
    assert cost.flops == 2 * 10 * 3 * 4 + 10 * 3 * (1 + 1)  # matmul, bias, relu
    assert cost.bytes == 4 * (10 * 4 + 4 * 3 + 3 + 10 * 3)


def test_roofline_attainable_and_bound() -> None:
    assert PEAK.ridge == 5.0
    assert PEAK.attainable(1.0) == 20.0 and PEAK.bound(1.0) == "memory"
    assert PEAK.attainable(50.0) == 100.0 and PEAK.bound(50.0) == "compute"


def test_kernels_sit_on_the_roof() -> None:
    e = explain.explain_graph(residual_graph(), batch=64, peak=PEAK)
    for k in e.kernels:
        assert k.intensity == pytest.approx(k.flops / k.bytes)
        assert k.attainable_gflops == pytest.approx(min(100.0, 20.0 * k.intensity))
        assert k.bound == ("compute" if k.intensity >= 5.0 else "memory")


def test_fusion_moves_fewer_bytes() -> None:
    e = explain.explain_graph(residual_graph())
    assert e.cost_after.bytes < e.cost_before.bytes
    assert e.cost_after.flops == e.cost_before.flops  # fusion saves traffic, not work


def test_env_overrides_skip_the_measurement(monkeypatch) -> None:
    monkeypatch.setattr(roofline, "measured_peak", lambda: pytest.fail("measured"))
    peak = roofline.machine_peak()
    assert (peak.gflops, peak.gbps) == (100.0, 20.0)


def test_the_measurement_is_cached_per_host(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(roofline.GFLOPS_ENV)
    monkeypatch.delenv(roofline.GBPS_ENV)
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(roofline, "measure_gflops", lambda: 123.0)
    monkeypatch.setattr(roofline, "measure_gbps", lambda: 45.0)
    roofline.measured_peak.cache_clear()
    try:
        first = roofline.machine_peak()
    finally:
        roofline.measured_peak.cache_clear()
    saved = json.loads((tmp_path / roofline.CACHE_FILE).read_text())
    assert saved[roofline.host_key()]["gflops"] == 123.0
    monkeypatch.setattr(roofline, "measure_gflops", lambda: pytest.fail("measured twice"))
    assert roofline.machine_peak() == first
    monkeypatch.setenv(roofline.GBPS_ENV, "7")
    assert (roofline.machine_peak().gflops, roofline.machine_peak().gbps) == (123.0, 7.0)


def test_the_fma_loop_measures_a_positive_rate() -> None:
    lanes = roofline.fma_lanes()
    assert np.isfinite(roofline.run_fma_loop(10, lanes))  # compiled here, not in the timing
    assert roofline.gflops_with_threads(2, 20_000, lanes) > 0.1
    assert roofline.measure_gbps(size=2**22, repeat=1) > 0.01


# -- model.explain() ---------------------------------------------------------------------------
def test_model_explain_is_the_explanation_of_its_stages() -> None:
    model = tfu.compile(residual_graph(), target="reference", pipeline="canonicalize,fuse,tile")
    e = model.explain(batch=32)
    assert e.batch == 32 and e.pipeline == "canonicalize,fuse,tile"
    assert [k.line for k in e.kernels][0].startswith("%0 = dense[act=relu, tile=(")
    assert json.loads(e.to_json())["kernels"][0]["fuse_code"] == "fused"


def test_model_explain_without_passes_says_so() -> None:
    e = tfu.compile(residual_graph(), target="reference").explain()
    assert len(e.kernels) == e.ops_before == 9
    assert "no fuse pass" in str(e)


# -- the command line --------------------------------------------------------------------------
def test_cli_explain_prints_the_text(capsys) -> None:
    code, out, err = tilefuse(capsys, "explain", ROOT / "examples/mlp.py")
    assert code == 0, err
    g = cli.to_graph(cli.load_network(str(ROOT / "examples/mlp.py")))
    assert without_locations(out) == without_locations(str(explain.explain_graph(g)))
    assert "compute bound" in out and "fusion: 8 ops -> 3 kernels" in out


def test_cli_explain_json(capsys) -> None:
    code, out, _ = tilefuse(capsys, "explain", ROOT / "examples/mlp.py", "--json", "--batch", 8)
    assert code == 0
    data = json.loads(out)
    assert data["batch"] == 8 and len(data["kernels"]) == 3
    assert data["peak"] == {
        "gflops": 100.0,
        "gbps": 20.0,
        "source": data["peak"]["source"],
        "ridge": 5.0,
    }
    assert {"flops", "bytes", "intensity", "bound", "tile_reasons"} <= set(data["kernels"][0])


PASS_STAGES = [s for s in cli.PASS_STAGES]


@pytest.mark.parametrize("stage", PASS_STAGES)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_show_every_stage_of_every_example(capsys, path, stage) -> None:
    code, out, err = tilefuse(capsys, "show", path, "--emit", stage)
    assert code == 0, err
    stages = run_stages(cli.to_graph(cli.load_network(str(path))))
    assert out.rstrip("\n") == cli.stage_text(stages, stage, None)
    if stage != "loops":
        assert out.startswith("graph ")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_show_source_of_every_example(capsys, path) -> None:
    code, out, err = tilefuse(capsys, "show", path, "--emit", "source")
    assert code == 0, err
    assert "def forward(" in out or 'define i64 @"tilefuse_forward"(' in out  # Numba or native


@pytest.mark.parametrize("stage, marker", [("llvm", "define "), ("asm", "ret")])
def test_show_llvm_and_asm(capsys, stage, marker) -> None:
    code, out, err = tilefuse(capsys, "show", ROOT / "examples/seed_layer.py", "--emit", stage)
    assert code == 0, err
    assert marker in out


def test_show_diff_is_a_unified_diff_per_pass(capsys) -> None:
    code, out, err = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--diff")
    assert code == 0, err
    headers = [line for line in out.splitlines() if line.startswith(("--- ", "+++ "))]
    assert headers == [
        "--- graph",
        "+++ canonical",
        "--- canonical",
        "+++ fused",
        "--- fused",
        "+++ tiled",
        "--- tiled",
        "+++ memory",
    ]
    assert "-  %0 = matmul(%x, %w0) : f32[N,512]" in out
    assert "+  %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]" in out


def test_show_diff_stops_at_the_emitted_stage(capsys) -> None:
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--diff", "--emit", "fused")
    assert code == 0
    assert "+++ fused" in out and "+++ tiled" not in out


def test_show_diff_of_generated_code_is_an_error(capsys) -> None:
    code, _, err = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--diff", "--emit", "asm")
    assert code == 1 and "--diff compares IR stages" in err


def test_run_check_and_json(capsys) -> None:
    code, out, err = tilefuse(
        capsys, "run", ROOT / "examples/mlp.py", "--batch", 4, "--repeat", 1, "--check", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["check"]["ok"] and data["check"]["max_diff_vs_float64"] < 1e-4
    assert data["outputs"][0]["shape"] == [4, 10] and data["gflops"] > 0


def test_run_check_prints_a_verdict(capsys) -> None:
    code, out, _ = tilefuse(capsys, "run", ROOT / "examples/seed_layer.py", "--check")
    assert code == 0
    assert "check    ok: max |diff| vs the float64 reference" in out and "GFLOP/s" in out


def test_run_check_fails_on_a_wrong_model(capsys, monkeypatch) -> None:
    from tilefuse.backends import BACKENDS, ReferenceModel

    class Wrong(ReferenceModel):
        target = "wrong"

        def run(self, inputs):
            return [y + 1 for y in super().run(inputs)]

    monkeypatch.setitem(BACKENDS, "wrong", lambda g, stages, options: Wrong(g, stages, options))
    argv = ("run", ROOT / "examples/seed_layer.py", "--target", "wrong", "--check")
    monkeypatch.setattr("tilefuse.compiler.check_at_compile", lambda model, check: None)
    code, out, _ = tilefuse(capsys, *argv)
    assert code == 1 and "check    FAILED" in out


def test_bench_json_compares_the_targets(capsys) -> None:
    argv = ["bench", ROOT / "examples/mlp.py", "--batch", 16, "--repeat", 1]
    code, out, err = tilefuse(capsys, *argv, "--targets", "reference,numpy", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [t["name"] for t in data["timings"]] == ["reference", "numpy"]
    for t in data["timings"]:
        assert t["within_tolerance"] and t["seconds"] > 0
        assert t["gflops"] == pytest.approx(data["flops"] / t["seconds"] / 1e9)


def test_bench_prints_a_table(capsys) -> None:
    argv = ["bench", ROOT / "examples/seed_layer.py", "--repeat", 1, "--targets", "numpy"]
    code, out, _ = tilefuse(capsys, *argv)
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["target", "what", "compile", "s"]
    assert out.splitlines()[2].startswith("numpy ") and out.rstrip().endswith("ok")


def test_bench_unknown_target(capsys) -> None:
    code, _, err = tilefuse(capsys, "bench", ROOT / "examples/mlp.py", "--targets", "gpu")
    assert code == 1 and "unknown bench target 'gpu'" in err and "numpy" in err


# -- rich output in a terminal -------------------------------------------------------------------
def fake_terminal(monkeypatch) -> io.StringIO:
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, color_system="standard", width=200)
    monkeypatch.setattr(cli, "terminal", lambda: console)
    return screen


def test_explain_on_a_terminal_has_colour_and_a_table(monkeypatch, capsys) -> None:
    screen = fake_terminal(monkeypatch)
    assert cli.main(["explain", str(ROOT / "examples/mlp.py")]) == 0
    shown = screen.getvalue()
    assert capsys.readouterr().out == ""
    assert "\x1b[" in shown and "kernels of mlp" in shown and "│" in shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "compute bound: at most 100 GFLOP/s" in plain and "│ dense[act=relu] " in plain


def test_bench_on_a_terminal_has_a_table_and_progress(monkeypatch, capsys) -> None:
    screen = fake_terminal(monkeypatch)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["bench", str(ROOT / "examples/seed_layer.py"), "--repeat", "1", "--targets", "numpy"]
    assert cli.main(argv) == 0
    assert "numpy" in screen.getvalue() and "│" in screen.getvalue()
    assert "timing numpy" in capsys.readouterr().err
