"""Pictures: the DOT text of every stage, Graphviz's rendering of it, `tilefuse graph`, and the
roofline plot. Tests that need `dot` skip without it, except on CI (CI=true), where the
Makefile's test target installs it."""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tilefuse as tfu
from conftest import ROOT
from tilefuse import cli, explain, pictures, roofline
from tilefuse.passes import run_stages

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
W0 = np.array([[0.5, -0.25], [0.75, 0.5], [-0.5, 0.25], [1.0, -0.75]])
B0 = np.array([0.1, -0.2])


def require_dot() -> None:
    if shutil.which("dot"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Graphviz's dot is missing on CI (make test installs it)")
    pytest.skip("Graphviz's dot is not installed")


@pytest.fixture(autouse=True)
def deterministic(monkeypatch):
    monkeypatch.setenv("TILEFUSE_MACHINE", "generic")
    monkeypatch.setenv(roofline.GFLOPS_ENV, "100")
    monkeypatch.setenv(roofline.GBPS_ENV, "20")


def block_stages() -> dict[str, tfu.Graph]:
    @tfu.function
    def block(x: tfu.Input["N", 4], w=W0, b=B0):
        h = tfu.leaky_relu(x @ w + b, alpha=0.2)
        return tfu.softmax(h * h)

    return run_stages(block.graph())


def mlp_stages() -> dict[str, tfu.Graph]:
    return run_stages(cli.to_graph(cli.load_network(str(ROOT / "examples/mlp.py"))))


# -- DOT text ----------------------------------------------------------------------------------
def test_dense_nodes_list_the_ops_they_fused_and_their_tiling() -> None:
    dot = pictures.graph_dot(mlp_stages()["tiled"])
    first = next(line for line in dot.splitlines() if "%0 = dense" in line)
    for row in ("matmul %x @ %w0", "+ bias %b0", "relu", "tile mc=36 nc=512 kc=784", "f32[N,512]"):
        assert row in first
    assert dot.count("= dense</b>") == 3 and "matmul(" not in dot


def test_every_node_and_edge_is_drawn() -> None:
    g = mlp_stages()["graph"]
    dot = pictures.graph_dot(g)
    nodes = set(re.findall(r"^  n(\d+) \[", dot, re.MULTILINE))
    edges = re.findall(r"^  n(\d+) -> n(\d+);", dot, re.MULTILINE)
    assert nodes == {str(n.id) for n in g}
    assert sorted(edges) == sorted((str(i), str(n.id)) for n in g for i in n.inputs)


def test_colours_follow_the_op_kind() -> None:
    dot = pictures.graph_dot(mlp_stages()["graph"])
    relu = next(line for line in dot.splitlines() if "= relu" in line)
    matmul = next(line for line in dot.splitlines() if "= matmul" in line)
    assert '"#fcbba1"' in relu and '"#9ecae1"' in matmul


def test_activation_attributes_and_post_steps_are_shown() -> None:
    fused = block_stages()["fused"]
    dot = pictures.graph_dot(fused)
    assert "leaky_relu[alpha=0.2]" in dot
    assert "softmax[axis=-1]" not in dot and "= softmax" in dot


# -- rendering -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["graph", "canonical", "fused", "tiled", "memory"])
def test_every_stage_renders_to_svg(stage) -> None:
    require_dot()
    svg = pictures.draw_graph(mlp_stages()[stage], "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = "".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert ("dense" in texts) == (stage not in ("graph", "canonical"))


def test_cli_graph_writes_svg_png_and_dot(tmp_path, capsys) -> None:
    require_dot()
    for name in ("g.svg", "g.png", "g.dot"):
        out = tmp_path / name
        code = cli.main(["graph", str(ROOT / "examples/mlp.py"), "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        assert f"wrote {out} (fused stage of mlp" in capsys.readouterr().out
    assert (tmp_path / "g.png").read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()
    assert (tmp_path / "g.dot").read_text() == pictures.graph_dot(
        mlp_stages()["fused"], "mlp: fused"
    )


def test_cli_graph_stage_option(tmp_path, capsys) -> None:
    out = tmp_path / "graph.dot"
    code = cli.main(["graph", str(ROOT / "examples/mlp.py"), "-o", str(out), "--stage", "graph"])
    assert code == 0
    assert "= matmul" in out.read_text() and "= dense" not in out.read_text()


def test_cli_graph_unknown_format_or_stage(tmp_path, capsys) -> None:
    code = cli.main(["graph", str(ROOT / "examples/mlp.py"), "-o", str(tmp_path / "g.jpg")])
    assert code == 1 and "name the file .svg, .png, .dot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["graph", str(ROOT / "examples/mlp.py"), "-o", "g.svg", "--stage", "loops"])
    assert "available: graph, canonical, fused, tiled, memory" in capsys.readouterr().err


def test_without_dot_the_error_says_how_to_install_it(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(pictures.shutil, "which", lambda name: None)
    code = cli.main(["graph", str(ROOT / "examples/mlp.py"), "-o", str(tmp_path / "g.svg")])
    err = capsys.readouterr().err
    assert code == 1 and "apt-get install graphviz" in err and err.count("\n") == 1


# -- the roofline plot ---------------------------------------------------------------------------
def test_roofline_plot_has_a_point_per_kernel() -> None:
    e = explain.explain_graph(cli.to_graph(cli.load_network(str(ROOT / "examples/mlp.py"))))
    figure = pictures.roofline_figure(e)
    axis = figure.axes[0]
    points = [tuple(c.get_offsets()[0]) for c in axis.collections]
    assert points == [(k.intensity, k.attainable_gflops) for k in e.kernels]
    roof = axis.lines[0]
    assert max(roof.get_ydata()) == 100.0  # the compute ceiling is the peak
    assert {t.get_text().split()[0] for t in axis.texts} == {k.name for k in e.kernels}


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", PNG_MAGIC)])
def test_roofline_image_formats(fmt, magic) -> None:
    e = explain.explain_graph(block_stages()["graph"])
    assert pictures.roofline_image(e, fmt).startswith(magic)
