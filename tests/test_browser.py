"""The HTML report in a real headless browser (Debian's chromium, driven by Playwright): it
loads with no console errors and no request leaving the file, every section is visible, the
pictures decode, and a screenshot is not blank. Skips without chromium or Playwright, except
on CI (CI=true), where the Makefile's test target installs chromium."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import tempfile

import pytest

from conftest import ROOT
from tilefuse import cli, report, roofline

CHROMIUM = "/usr/bin/chromium"
# as root in a container: no sandbox; and nothing that would reach the network by itself
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENV = {"TILEFUSE_MACHINE": "generic", roofline.GFLOPS_ENV: "100", roofline.GBPS_ENV: "20"}


def browser_or_skip() -> str:
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    missing = [
        what
        for what, there in (
            ("chromium", executable),
            ("playwright", _importable("playwright")),
            ("dot", shutil.which("dot")),
        )
        if not there
    ]
    if not missing:
        return executable
    if os.environ.get("CI") == "true":
        pytest.fail(f"missing on CI: {', '.join(missing)} (make test installs them)")
    pytest.skip(f"not installed: {', '.join(missing)}")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> pathlib.Path:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        g = cli.to_graph(cli.load_network(str(ROOT / "examples/two_layer.py")))
        page = report.build_report(g, batch=16, targets=("reference", "numpy"), repeat=1)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def loaded(report_file):
    """(page facts, console messages, requests) after loading the report in chromium."""
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    messages, requests = [], []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=executable, args=FLAGS, viewport={"width": 1280, "height": 900}
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: messages.append(("pageerror", str(e))))
            page.on("requestfailed", lambda r: messages.append(("requestfailed", r.url)))
            context.route("**/*", lambda route: record_request(route, requests))
            page.goto(report_file.as_uri(), wait_until="load")
            facts = page_facts(page)
            facts["screenshot"] = page.screenshot(full_page=False)
            page.click("button.toggle")
            facts["side_after_click"] = page.eval_on_selector(
                "#stage-columns", "e => e.classList.contains('side')"
            )
        finally:
            context.close()
    return facts, messages, requests


def record_request(route, requests: list) -> None:
    """The report's own file is served; anything else is recorded and refused."""
    url = route.request.url
    if url.startswith("file://"):
        route.continue_()
        return
    requests.append(url)
    route.abort()


def page_facts(page) -> dict:
    return {
        "title": page.title(),
        "sections": page.eval_on_selector_all(
            "section", "all => all.map(s => [s.id, s.querySelector('h2').innerText])"
        ),
        "visible": [page.is_visible(f"#{key} h2") for key in report.SECTIONS],
        "images": page.eval_on_selector_all(
            "img", "all => all.map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        ),
    }


def test_the_report_loads_without_console_errors(loaded) -> None:
    facts, messages, _ = loaded
    errors = [m for m in messages if m[0] in ("error", "pageerror", "requestfailed", "warning")]
    assert errors == []
    assert facts["title"] == "tilefuse report: two_layer_rows"


def test_no_request_leaves_the_file(loaded) -> None:
    _, _, requests = loaded
    assert requests == []


def test_every_section_is_present_and_visible(loaded) -> None:
    facts, _, _ = loaded
    assert facts["sections"] == [[key, name] for key, name in report.SECTIONS.items()]
    assert all(facts["visible"])


def test_every_picture_decodes(loaded) -> None:
    facts, _, _ = loaded
    assert [alt for alt, _ in facts["images"]][0] == "roofline plot"  # the plot comes first
    assert len(facts["images"]) >= 3
    assert all(ok for _, ok in facts["images"]), facts["images"]


def test_the_script_runs(loaded) -> None:
    facts, _, _ = loaded
    assert facts["side_after_click"] is False  # the toggle took the columns out of side by side


def test_the_screenshot_is_not_blank(loaded) -> None:
    from PIL import Image, ImageStat

    facts, _, _ = loaded
    image = Image.open(io.BytesIO(facts["screenshot"])).convert("L")
    assert image.size == (1280, 900)
    stats = ImageStat.Stat(image)
    assert stats.stddev[0] > 20  # text, tables and the header band, not one flat colour
    colours = image.getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 16
