"""The HTML report: every section there, everything inline (no network), and the content of
each section taken from the pipeline it describes. The browser test is test_browser.py."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT
from tilefuse import cli, pictures, report, roofline
from tilefuse.backends import BACKENDS
from tilefuse.passes import run_stages

SEED = ROOT / "examples/seed_layer.py"
ENV = {"TILEFUSE_MACHINE": "generic", roofline.GFLOPS_ENV: "100", roofline.GBPS_ENV: "20"}


def require_dot() -> None:
    if shutil.which("dot"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Graphviz's dot is missing on CI (make test installs it)")
    pytest.skip("Graphviz's dot is not installed")


@pytest.fixture(autouse=True)
def deterministic(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def seed_report() -> str:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        g = cli.to_graph(cli.load_network(str(SEED)))
        return report.build_report(
            g, source_file="seed_layer.py", batch=8, targets=("reference", "numpy"), repeat=1
        )


def seed_stages():
    return run_stages(cli.to_graph(cli.load_network(str(SEED))))


def section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {key}"
    return match.group(1)


def test_every_section_is_there_in_order(seed_report) -> None:
    ids = re.findall(r'<section id="(\w+)"><h2>([^<]+)</h2>', seed_report)
    assert ids == [(key, html.escape(name)) for key, name in report.SECTIONS.items()]
    links = re.findall(r'<a href="#(\w+)">', seed_report)
    assert links == list(report.SECTIONS)


def test_the_page_is_self_contained(seed_report) -> None:
    assert "Content-Security-Policy" in seed_report and "default-src 'none'" in seed_report
    assert not re.search(r"(src|href)=\"(?!data:|#)", seed_report)
    assert "<link" not in seed_report and "<script src" not in seed_report
    assert not re.search(r"https?://(?!www\.w3\.org/)", strip_images(seed_report))


def strip_images(page: str) -> str:
    return re.sub(r'src="data:[^"]*"', 'src=""', page)


def test_images_are_inline_svg(seed_report) -> None:
    require_dot()
    image = r'<img class="picture" alt="([^"]+)" src="data:image/svg\+xml;base64,([^"]+)"'
    uris = re.findall(image, seed_report)
    alts = [alt for alt, _ in uris]
    assert alts == ["roofline plot", "graph graph", "canonical graph", "fused graph", "tiled graph"]
    for _, data in uris:
        assert ET.fromstring(base64.b64decode(data)).tag.endswith("svg")


def test_stages_side_by_side_hold_each_stage_ir(seed_report) -> None:
    body = section(seed_report, "stages")
    for name, g in seed_stages().items():
        assert f"<h3>{name}</h3><pre>{html.escape(str(g))}</pre>" in body


def test_diffs_mark_removed_and_added_lines(seed_report) -> None:
    body = section(seed_report, "diffs")
    assert "<h3>canonical &rarr; fused</h3>" in body
    assert '<span class="del">-  %0 = matmul(%x, %w) : f64[N,2]</span>' in body
    assert re.search(r'<span class="add">\+  %0 = dense\[act=sigmoid\]', body)


def test_decisions_and_kernels(seed_report) -> None:
    decisions = seed_stages()["memory"].meta["decisions"]
    body = section(seed_report, "decisions")
    assert body.count("<tr>") == len(decisions) + 1
    for d in decisions:
        assert f"<code>{html.escape(d.code)}</code>" in body
    kernels = section(seed_report, "kernels")
    assert '<span class="memory">memory</span>' in kernels and "Every candidate fused." in kernels


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no cpu backend")
def test_source_section_has_the_generated_code_and_loops(seed_report) -> None:
    body = section(seed_report, "source")
    assert "native forward (LLVM IR" in body and "produce %0:" in body
    assert "define i64 @&quot;tilefuse_forward&quot;(" in body or 'tilefuse_forward"(' in body


def test_timing_table_has_a_row_per_target(seed_report) -> None:
    body = section(seed_report, "timing")
    rows = re.findall(r"<tr><td>(\w+)</td>", body)
    assert rows == ["reference", "numpy"]
    assert body.count('<span class="ok">ok</span>') == 2


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no cpu backend")
def test_with_the_cpu_target_the_timing_has_a_profile_and_the_roofline_measured_points():
    g = cli.to_graph(cli.load_network(str(ROOT / "examples/mlp.py")))
    steps = []
    page = report.build_report(g, batch=64, targets=("cpu",), repeat=2, on_step=steps.append)
    assert len(steps) == report.report_steps(("cpu",))
    assert list(re.findall(r'<section id="(\w+)">', page))[:3] == ["overview", "timing", "roofline"]
    timing = section(page, "timing")
    assert "kernel by kernel (tilefuse profile)" in timing
    kernels = re.findall(r"<td><code>(%\d+ = dense[^<]*)</code></td>", timing)
    assert len(kernels) == 3  # one row per dense op of the MLP, with its measured rate
    assert re.search(r"Kernels [\d.]+ \S+ of a call's [\d.]+", timing)
    plot = section(page, "roofline")
    assert "Hollow points joined to them" in plot
    uri = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', plot).group(1)
    svg = base64.b64decode(uri).decode()
    assert "measured (profile)" in svg and "% of roof" in svg


def test_without_dot_the_graphs_are_dot_text(monkeypatch) -> None:
    monkeypatch.setattr(pictures.shutil, "which", lambda name: None)
    g = cli.to_graph(cli.load_network(str(SEED)))
    page = report.build_report(g, pipeline="canonicalize,fuse", targets=())
    body = section(page, "graphs")
    assert "apt-get install graphviz" in body and "digraph" in body
    assert "Not timed" in section(page, "timing")


def test_cli_report_writes_the_file(tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    argv = ["report", str(SEED), "-o", str(out), "--no-bench", "--pipeline", "canonicalize,fuse"]
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "tilefuse report: dense_sigmoid" in page
    assert "Not timed" in page
