"""The command line: `tilefuse show`, `tilefuse run`, the FILE convention and its errors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tilefuse as tfu
from conftest import ROOT
from tilefuse import cli
from tilefuse.backends import BACKENDS, ReferenceModel
from tilefuse.errors import TilefuseError
from tilefuse.passes import parse_pipeline
from tilefuse.passes.memory import memory_plan_of
from tilefuse.tiling import tiling_from_fields

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def tilefuse(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name: str, source: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_show_graph_prints_the_ir_of_every_example(capsys, path):
    code, out, err = tilefuse(capsys, "show", path, "--emit", "graph")
    assert code == 0, err
    g = tfu.parse_graph(out, constants=const_data(cli.load_network(str(path))))
    assert g == cli.to_graph(cli.load_network(str(path)))


def const_data(net) -> dict[str, np.ndarray]:
    from tilefuse.text import node_names

    g = cli.to_graph(net)
    names = node_names(g)
    return {names[i]: a for i, a in g.constants.items()}


def test_show_defaults_to_the_graph(capsys):
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples/seed_layer.py")
    assert code == 0
    assert out.splitlines()[0] == "graph dense_sigmoid(%x: f64[N,2]) -> f64[N,2] {"
    assert "%2 = sigmoid(%1) : f64[N,2]" in out


def test_run_prints_a_summary(capsys):
    code, out, err = tilefuse(capsys, "run", ROOT / "examples/mlp.py", "--batch", 5, "--repeat", 1)
    assert code == 0, err
    assert "input    %x: f32[5, 784]" in out
    assert "output   float32[5, 10]: [" in out
    assert "ms (best of 1)" in out
    assert "diff" not in out  # the reference is not compared with itself


def test_run_output_values_are_the_reference_answer(capsys):
    code, out, _ = tilefuse(
        capsys, "run", ROOT / "examples/seed_layer.py", "--batch", 1, "--seed", 4
    )
    assert code == 0
    x = np.random.default_rng(4).standard_normal((1, 2))
    y = load_seed_net()(x)
    assert f"{y[0, 0]:.6g}, {y[0, 1]:.6g}]" in out


def load_seed_net():
    return cli.load_network(str(ROOT / "examples/seed_layer.py"))


def shifted_backend(shift: float):
    class Shifted(ReferenceModel):
        target = "shifted"

        def run(self, inputs):
            return [y + shift for y in super().run(inputs)]

    return lambda g, stages, options: Shifted(g, stages, options)


def test_run_on_another_target_reports_the_difference(capsys, monkeypatch):
    monkeypatch.setitem(BACKENDS, "shifted", shifted_backend(2**-40))
    code, out, err = tilefuse(capsys, "run", ROOT / "examples/two_layer.py", "--target", "shifted")
    assert code == 0, err
    assert "target shifted" in out
    assert f"max |diff| vs reference: {2**-40:.3g}" in out


def test_run_a_miscompiled_model_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.setitem(BACKENDS, "shifted", shifted_backend(0.25))
    code, out, err = tilefuse(capsys, "run", ROOT / "examples/two_layer.py", "--target", "shifted")
    assert code == 1 and out == ""
    assert "differs from the reference" in err and err.count("\n") == 1


@pytest.mark.parametrize("option", ["--batch", "--repeat"])
def test_run_needs_a_positive_batch_and_repeat(capsys, option):
    code, _, err = tilefuse(capsys, "run", ROOT / "examples/seed_layer.py", option, 0)
    assert code == 1 and "--batch and --repeat must be positive" in err


def test_run_unknown_target_lists_the_targets(capsys):
    code, _, err = tilefuse(capsys, "run", ROOT / "examples/mlp.py", "--target", "tpu")
    assert code == 1
    assert "unknown target 'tpu'" in err and "reference" in err


# -- the FILE convention --------------------------------------------------------------------
NETWORK_FILES = {
    "net_wins.py": """
        import tilefuse as tfu
        other = tfu.Sequential([tfu.Dense(3)], input_dim=2, name="other")
        net = tfu.Sequential([tfu.Dense(4)], input_dim=2, name="chosen")
    """,
    "single.py": """
        import tilefuse as tfu
        @tfu.function
        def chosen(x: tfu.Input["N", 2]):
            return tfu.relu(x)
        alias = chosen  # the same object twice is still one network
    """,
    "factory.py": """
        import tilefuse as tfu
        def network():
            return tfu.Sequential([tfu.Dense(4)], input_dim=2, name="chosen")
    """,
    "graph.py": """
        import tilefuse as tfu
        net = tfu.parse_graph('''
        graph chosen(%x: f32[N,2]) -> f32[N,2] {
          %0 = tanh(%x) : f32[N,2]
          return %0
        }''')
    """,
    "neighbour.py": """
        from helper_net import made_there as net
    """,
}


@pytest.mark.parametrize("name", NETWORK_FILES)
def test_file_convention_finds_the_network(tmp_path, capsys, name):
    write(tmp_path, "helper_net.py", NETWORK_FILES["net_wins.py"].replace("net =", "made_there ="))
    path = write(tmp_path, name, NETWORK_FILES[name])
    code, out, err = tilefuse(capsys, "show", path)
    assert code == 0, err
    assert out.startswith("graph chosen(")


BAD_FILES = [
    ("missing.py", None, "no such file"),
    ("model.onnx", "", "model.onnx"),  # an empty file: onnx cannot parse it
    ("notes.txt", "hello", "expected a Python file"),
    ("empty.py", "x = 1\n", "defines no network"),
    (
        "two.py",
        """
        import tilefuse as tfu
        first = tfu.Sequential([tfu.Dense(3)], input_dim=2)
        second = tfu.Sequential([tfu.Dense(3)], input_dim=2)
        """,
        "several networks (first, second)",
    ),
    ("notnet.py", "net = 42\n", "`net` is of type int, not a network"),
    ("factory.py", "def network():\n    return 'mlp'\n", "network() is of type str, not a network"),
    (
        "shape.py",
        """
        import numpy as np
        import tilefuse as tfu
        @tfu.function
        def net(x: tfu.Input["N", 3], w=np.ones((4, 2))):
            return x @ w
        net.graph()
        """,
        "shape.py:6: matmul f32[N,3] @ f32[4,2]: inner dims 3 != 4",
    ),
]


@pytest.mark.parametrize("name, source, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line_and_exit_1(tmp_path, capsys, name, source, message):
    path = tmp_path / name if source is None else write(tmp_path, name, source)
    code, out, err = tilefuse(capsys, "show", path)
    assert code == 1
    assert out == ""
    assert message in err
    assert err.startswith("tilefuse: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "COMMAND"),
        (["compile", "x.py"], "invalid choice"),
        (["show"], "FILE"),
        (["show", "x.py", "--emit", "bogus"], "available: graph, canonical, fused, tiled"),
        (["run", "x.py", "--batch", "many"], "invalid int value"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_the_file_convention(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "module-level `net`" in out and "network()" in out and "show" in out and "run" in out


def test_python_dash_m_tilefuse(tmp_path):
    command = [sys.executable, "-m", "tilefuse", "show", "examples/seed_layer.py"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("graph dense_sigmoid(")
    missing = subprocess.run(
        [sys.executable, "-m", "tilefuse", "run", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("nope.py: no such file")
    assert "Traceback" not in missing.stderr


# -- stages of the pipeline (skip until the passes land) -----------------------------------
@pytest.mark.parametrize("stage", ["canonical", "fused", "tiled"])
def test_show_stage_is_the_pipeline_output(capsys, stage):
    code, out, err = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--emit", stage)
    assert code == 0, err
    stages = tfu.passes.run_stages(load_mlp_graph())
    assert out.rstrip("\n") == str(stages[stage])


def load_mlp_graph():
    return cli.to_graph(cli.load_network(str(ROOT / "examples/mlp.py")))


def test_show_fused_has_dense_ops(capsys):
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--emit", "fused")
    assert code == 0
    assert out.count(" = dense") == 3 and " matmul(" not in out


def test_show_memory_prints_the_plan_after_the_ir(capsys):
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--emit", "memory")
    assert code == 0
    g = tfu.passes.run_stages(load_mlp_graph())["memory"]
    assert out.rstrip("\n") == f"{g}\n{memory_plan_of(g)}"


def test_show_loops_prints_a_nest_per_dense_op(capsys):
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples/mlp.py", "--emit", "loops")
    assert code == 0
    assert out.count("produce %") == 3 and out.count("// %") == 3 and "for " in out
    tiled = tfu.passes.run_stages(load_mlp_graph())["tiled"]
    dense_lines = [line.strip() for line in str(tiled).splitlines() if " = dense[" in line]
    assert [f"// {line}" for line in dense_lines] == [
        line for line in out.splitlines() if line.startswith("// %")
    ]


def test_print_after_all_prints_every_pass_to_stderr(capsys):
    code, out, err = tilefuse(
        capsys,
        "show",
        ROOT / "examples/mlp.py",
        "--emit",
        "fused",
        "--pipeline",
        "canonicalize,fuse",
        "--print-after-all",
    )
    assert code == 0
    assert err.count("IR after") == 2 and "IR after canonicalize" in err
    assert out.count(" = dense") == 3


def test_stage_not_in_the_pipeline(capsys):
    code, _, err = tilefuse(
        capsys, "show", ROOT / "examples/mlp.py", "--emit", "tiled", "--pipeline", "fuse"
    )
    assert code == 1
    assert "has no stage 'tiled'" in err and "graph, fused" in err


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no cpu backend")
def test_show_source_prints_the_generated_code(capsys):
    code, out, err = tilefuse(capsys, "show", ROOT / "examples/seed_layer.py", "--emit", "source")
    assert code == 0, err
    assert 'define i64 @"tilefuse_forward"(' in out and "dense[act=sigmoid" in out  # native


def test_show_source_without_the_cpu_backend_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delitem(BACKENDS, "cpu", raising=False)
    code, _, err = tilefuse(capsys, "show", ROOT / "examples/seed_layer.py", "--emit", "asm")
    assert code == 1
    assert "--emit asm needs the cpu backend" in err and "available: graph, canonical" in err


def test_version_and_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"tilefuse {tfu.__version__}"
    assert cli.main(["tune"]) == 2  # no FILE, --import or --export: a usage error, like argparse's
    assert "tune needs FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mistake, hint",
    [
        (lambda: tfu.Dense(4, activation="rellu"), "did you mean 'relu'?"),
        (lambda: parse_pipeline("canonicalise,fuse"), "did you mean 'canonicalize'?"),
        (lambda: parse_pipeline("tile{mrr=4}"), "did you mean 'mr'?"),
        (lambda: tiling_from_fields({"mcc": 8}), "did you mean 'mc'?"),
    ],
)
def test_near_misses_get_a_did_you_mean(mistake, hint):
    with pytest.raises((TilefuseError, TypeError), match=re.escape(hint)):
        mistake()


def test_a_misspelt_stage_gets_a_did_you_mean(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["show", "examples/mlp.py", "--emit", "fusedd"])
    assert done.value.code == 2 and "did you mean 'fused'?" in capsys.readouterr().err


def test_model_ir_loops_is_what_emit_loops_prints(capsys):
    code, out, _ = tilefuse(capsys, "show", ROOT / "examples" / "mlp.py", "--emit", "loops")
    assert code == 0
    net = cli.load_network(str(ROOT / "examples" / "mlp.py"))
    model = tfu.compile(net)
    assert model.ir("loops") == out.rstrip("\n") and "produce %0:" in out
    with pytest.raises(TilefuseError, match="did you mean 'tiled'"):
        model.ir("tiledd")


def test_a_syntax_error_in_file_is_one_line_at_its_place(tmp_path, capsys):
    bad = write(tmp_path, "bad.py", "import tilefuse as tfu\nx = (\n")
    code, out, err = tilefuse(capsys, "show", bad)
    assert code == 1 and err.count("\n") == 1
    assert f"{bad}:2:5: syntax error: '(' was never closed" in err


def test_file_colon_name_picks_one_of_several_networks(tmp_path, capsys):
    two = write(
        tmp_path,
        "two.py",
        """\
        import tilefuse as tfu
        small = tfu.Sequential([tfu.Dense(4, "relu")], input_dim=3, name="small")
        big = tfu.Sequential([tfu.Dense(8, "relu"), tfu.Dense(2)], input_dim=3, name="big")

        def network():
            return big
    """,
    )
    code, out, _ = tilefuse(capsys, "show", two)  # two networks: network() decides
    assert code == 0 and out.startswith("graph big(")
    code, out, _ = tilefuse(capsys, "show", f"{two}:small")
    assert code == 0 and out.startswith("graph small(")
    code, out, _ = tilefuse(capsys, "show", f"{two}:network")
    assert code == 0 and out.startswith("graph big(")
    code, _, err = tilefuse(capsys, "show", f"{two}:smal")
    assert code == 1 and "did you mean 'small'?" in err and "its networks: big, small" in err
