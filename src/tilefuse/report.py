"""The HTML report: everything tilefuse knows about one network, in one self-contained file.

    tilefuse report examples/mlp.py -o mlp.html

Sections: the pipeline's stages side by side and as diffs, a Graphviz picture per stage, the
fusion and tiling decisions, explain's kernel table, the generated kernel source and loop
nests, the roofline plot, and a timing table against the reference and NumPy. Pictures are
inline SVG data URIs, CSS and script are inline, and a Content-Security-Policy forbids any
fetch: the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import difflib
import html
from collections.abc import Callable
from typing import Any

from . import pictures
from .bench import Timing, benchmark
from .explain import COLUMNS, Explanation, explain_stages, kernel_lines, summary_rows
from .ir import Graph
from .profile import Profile, format_time, short_line

SECTIONS = {  # timing first: where the time goes is what a reader opens the report for
    "overview": "Overview",
    "timing": "Timing",
    "roofline": "Roofline plot",
    "kernels": "Kernels on the roofline",
    "decisions": "Fusion and tiling decisions",
    "source": "Generated kernel source",
    "stages": "Pipeline stages",
    "diffs": "What each pass changed",
    "graphs": "Graph pictures",
}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
header { background: #3b3f8f; color: white; padding: 14px 24px; }
header h1 { margin: 0; font-size: 22px; }
nav { padding: 6px 24px; background: #e8e8f4; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #3b3f8f; text-decoration: none; font-size: 14px; }
section { padding: 6px 24px 18px; border-bottom: 1px solid #ddd; }
h2 { font-size: 18px; color: #3b3f8f; }
pre { background: white; border: 1px solid #ddd; padding: 8px; overflow: auto; font-size: 12px;
      max-height: 480px; }
.side { display: grid; grid-auto-flow: column; grid-auto-columns: minmax(420px, 1fr);
        gap: 10px; overflow-x: auto; }
.side h3 { font-size: 14px; margin: 4px 0; }
table { border-collapse: collapse; font-size: 13px; background: white; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.add { color: #176f2c; background: #e6ffec; } .del { color: #a40e26; background: #ffebe9; }
.hunk { color: #6f42c1; } .memory { color: #a40e26; } .compute { color: #176f2c; }
.bad { color: #a40e26; font-weight: bold; } .ok { color: #176f2c; }
img.picture { max-width: 100%; background: white; border: 1px solid #ddd; }
.pictures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.pictures figure { margin: 0; }
button.toggle { font-size: 12px; margin-bottom: 6px; }
"""

# one stage at a time or all side by side; the page works the same without it
SCRIPT = """
document.querySelectorAll('button.toggle').forEach(function (button) {
  button.addEventListener('click', function () {
    var box = document.getElementById(button.dataset.target);
    box.classList.toggle('side');
    button.textContent = box.classList.contains('side') ? 'one below the other' : 'side by side';
  });
});
"""


def build_report(
    g: Graph,
    *,
    source_file: str = "",
    pipeline: str | None = None,
    batch: int = 256,
    targets: tuple[str, ...] = ("cpu", "reference", "numpy"),
    repeat: int = 3,
    on_step: Callable[[str], None] | None = None,
) -> str:
    """The report on network `g` as one HTML page; `targets` are timed (none: no timing);
    `on_step(description)` hears of each of the `report_steps(targets)` steps as it starts."""
    from .passes import DEFAULT_PIPELINE, run_stages

    step = on_step or (lambda _: None)
    spec = DEFAULT_PIPELINE if pipeline is None else pipeline
    step("running the passes")
    stages = run_stages(g, spec) if spec else {"graph": g}
    explanation = explain_stages(stages, spec, batch=batch)
    timings = (
        benchmark(g, batch, targets=targets, repeat=repeat, on_step=on_step) if targets else []
    )
    profiled: Profile | str | None = None
    if "cpu" in targets:
        step("profiling the cpu kernels")
        profiled = profile_cpu(g, spec, batch, max(repeat, 5))
    step("generating kernel source")
    source = kernel_source(g, spec, stages)
    step("drawing the graphs")
    graphs = graph_pictures(stages)
    step("plotting the roofline")
    measured = profiled if isinstance(profiled, Profile) else None
    bodies = {
        "overview": overview(g, source_file, explanation),
        "timing": timing_section(timings, explanation, profiled),
        "roofline": roofline_section(explanation, measured, "cpu" in targets),
        "kernels": kernels_section(explanation),
        "decisions": decisions_table(stages),
        "source": source,
        "stages": stages_side_by_side(stages),
        "diffs": stage_diffs(stages),
        "graphs": graphs,
    }
    return page(f"tilefuse report: {g.name}", bodies)


def report_steps(targets: tuple[str, ...]) -> int:
    """How many times build_report calls on_step."""
    return 4 + 2 * len(targets) + ("cpu" in targets)


def profile_cpu(g: Graph, spec: str, batch: int, repeats: int) -> Profile | str:
    """The cpu backend's profile of `g` at `batch` (`model.profile`), or why there is none."""
    from .check import random_inputs
    from .compiler import compile

    try:
        model = compile(g, target="cpu", pipeline=spec, check=False)
        return model.profile(*random_inputs(model.final, batch), repeats=repeats)
    except Exception as err:  # the report still shows everything else
        return f"the cpu backend could not profile this network: {err}"


def page(title: str, bodies: dict[str, str]) -> str:
    links = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name in SECTIONS.items())
    sections = "\n".join(
        f'<section id="{key}"><h2>{html.escape(SECTIONS[key])}</h2>\n{body}</section>'
        for key, body in bodies.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>{html.escape(title)}</h1></header>
<nav>{links}</nav>
{sections}
<script>{SCRIPT}</script>
</body>
</html>
"""


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def table(columns: tuple[str, ...], rows: list[tuple], numeric_from: int = 99) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if k >= numeric_from else ''}>{cell}</td>"
            for k, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# -- sections -----------------------------------------------------------------------------------
def overview(g: Graph, source_file: str, e: Explanation) -> str:
    rows = [
        ("network", html.escape(g.name)),
        ("file", html.escape(source_file or "(given as a graph)")),
        ("pipeline", html.escape(e.pipeline or "(none)")),
        ("dtype", e.dtype),
        ("costs at", html.escape(", ".join(f"{s}={e.batch}" for s in e.symbols) or "-")),
        ("machine", html.escape(e.machine)),
        ("roofline", html.escape(str(e.peak))),
        ("kernels", f"{e.ops_before} ops became {len(e.kernels)} kernels"),
    ]
    return table(("", ""), rows)


def stages_side_by_side(stages: dict[str, Graph]) -> str:
    columns = "".join(
        f"<div><h3>{html.escape(name)}</h3>{pre(str(g))}</div>" for name, g in stages.items()
    )
    button = '<button class="toggle" data-target="stage-columns">one below the other</button>'
    return f'{button}<div id="stage-columns" class="side">{columns}</div>'


def stage_diffs(stages: dict[str, Graph]) -> str:
    names = list(stages)
    parts = []
    for before, after in zip(names, names[1:]):
        lines = difflib.unified_diff(
            str(stages[before]).splitlines(),
            str(stages[after]).splitlines(),
            fromfile=before,
            tofile=after,
            lineterm="",
        )
        body = "\n".join(diff_line(line) for line in lines) or "(no change)"
        parts.append(f"<h3>{html.escape(before)} &rarr; {html.escape(after)}</h3><pre>{body}</pre>")
    return "\n".join(parts) or "<p>The pipeline is empty: no pass ran.</p>"


def diff_line(line: str) -> str:
    text = html.escape(line)
    if line.startswith("@@"):
        return f'<span class="hunk">{text}</span>'
    if line.startswith("+") and not line.startswith("+++"):
        return f'<span class="add">{text}</span>'
    if line.startswith("-") and not line.startswith("---"):
        return f'<span class="del">{text}</span>'
    return text


def graph_pictures(stages: dict[str, Graph]) -> str:
    if not pictures.have_dot():
        return (
            "<p>Graphviz's <code>dot</code> is not installed (Debian: apt-get install "
            "graphviz), so the graphs are shown as DOT text.</p>"
            + "".join(pre(pictures.graph_dot(g, name)) for name, g in stages.items())
        )
    shown = {
        name: g for name, g in stages.items() if name in ("graph", "canonical", "fused", "tiled")
    }
    figures = "".join(
        f'<figure><figcaption>{html.escape(name)}</figcaption><img class="picture" '
        f'alt="{html.escape(name)} graph" src="{picture_uri(g, name)}"></figure>'
        for name, g in shown.items()
    )
    return f'<div class="pictures">{figures}</div>'


def picture_uri(g: Graph, name: str) -> str:
    return data_uri(pictures.draw_graph(g, "svg", title=f"{g.name}: {name}"), "image/svg+xml")


def decisions_table(stages: dict[str, Graph]) -> str:
    final = list(stages.values())[-1]
    decisions = final.meta.get("decisions", [])
    if not decisions:
        return "<p>No pass recorded a decision.</p>"
    rows = [
        (
            html.escape(d.pass_name),
            html.escape(d.outcome),
            f"<code>{html.escape(d.code)}</code>",
            f"<code>{html.escape(d.subject)}</code>",
            html.escape(d.detail),
        )
        for d in decisions
    ]
    return table(("pass", "outcome", "code", "subject", "why"), rows)


def kernels_section(e: Explanation) -> str:
    rows = [tuple(html.escape(str(v)) for v in row) for row in summary_rows(e)]
    rows = [(*row[:-1], f'<span class="{row[-1]}">{row[-1]}</span>') for row in rows]
    details = "".join(
        f"<details><summary><code>{html.escape(k.line)}</code></summary>"
        f"{pre(chr(10).join(kernel_lines(e, k)))}</details>"
        for k in e.kernels
    )
    missed = "".join(
        f"<li><code>{html.escape(m.subject)}</code>: <b>{html.escape(m.code)}</b>: "
        f"{html.escape(m.detail)}<br><i>change:</i> {html.escape(m.advice)}</li>"
        for m in e.missed
    )
    missed_html = (
        f"<h3>Not fused</h3><ul>{missed}</ul>" if missed else "<p>Every candidate fused.</p>"
    )
    return table(COLUMNS, rows, numeric_from=2) + details + missed_html


def kernel_source(g: Graph, spec: str, stages: dict[str, Graph]) -> str:
    """The cpu backend's generated source, and the loop nest of every dense op."""
    from .backends import BACKENDS
    from .loops import loop_nest

    final = list(stages.values())[-1]
    nests = [loop_nest(n, graph=final) for n in final if dict(n.attrs).get("tile") is not None]
    parts = [f"<h3>Loop nests</h3>{pre(chr(10).join(nests))}"] if nests else []
    if "cpu" not in BACKENDS:
        return "".join(parts) + "<p>This build has no cpu backend: no generated source.</p>"
    from .compiler import compile

    kind = "Python source (Numba)"
    try:
        model = compile(g, target="cpu", pipeline=spec, check=False)
        source = model.source()
        if getattr(model, "native", None) is not None:
            kind = "native forward (LLVM IR, driver calls only)"
    except Exception as err:  # the report still shows everything else
        source = f"// the cpu backend could not compile this network: {err}"
    return f"<h3>cpu backend: {kind}</h3>{pre(source)}" + "".join(parts)


def roofline_section(e: Explanation, measured: Profile | None = None, timed: bool = False) -> str:
    try:
        image = pictures.roofline_image(e, "svg", measured)
    except ImportError:
        return "<p>The roofline plot needs matplotlib (pip install tilefuse[report]).</p>"
    uri = data_uri(image, "image/svg+xml")
    note = (
        "<p>Filled points: the roof's bound for each kernel at its intensity (the model). "
        "Hollow points joined to them: the kernel as measured by the profiler (the call of "
        "median time) at the same intensity.</p>"
        if measured
        else "<p>Each point is the roof's bound for the kernel at its intensity ("
        + (
            "the cpu target could not be profiled: see Timing"
            if timed
            else "not timed: the report was written without the cpu target"
        )
        + ").</p>"
    )
    return f'{note}<img class="picture" alt="roofline plot" src="{uri}">'


def timing_section(
    timings: list[Timing], e: Explanation, profiled: Profile | str | None = None
) -> str:
    if not timings:
        return "<p>Not timed (the report was written with --no-bench).</p>"
    columns = ("target", "what", "compile s", "time ms", "GFLOP/s", "max |diff|", "check")
    rows = [timing_row(t) for t in timings]
    flops = e.cost_before.flops
    parts = [f"<p>{flops:,} flops per call at batch {e.batch}.</p>", table(columns, rows, 2)]
    if isinstance(profiled, Profile):
        parts += ["<h3>cpu, kernel by kernel (tilefuse profile)</h3>", profile_table(profiled)]
    elif profiled:
        parts.append(f"<p>{html.escape(profiled)}</p>")
    return "".join(parts)


def profile_table(p: Profile) -> str:
    columns = ("kernel", "time", "share", "GFLOP/s", "GB/s", "% of roof", "bound")
    rows = [
        (f"<code>{html.escape(short_line(k.line))}</code>", html.escape(format_time(k.seconds)),
         f"{100 * k.share:.0f} %", f"{k.gflops:.1f}", f"{k.gbps:.1f}", f"{k.pct_of_roof:.0f} %",
         f'<span class="{k.bound}">{k.bound}</span>')
        for k in sorted(p.kernels, key=lambda k: -k.seconds)
    ]  # fmt: skip
    total = (
        f"<p>Kernels {html.escape(format_time(p.kernel_seconds))} of a call's "
        f"{html.escape(format_time(p.call_seconds))} (the call of median time among "
        f"{p.repeats}); roof: {html.escape(p.peak)}.</p>"
    )
    return table(columns, rows, numeric_from=1) + total


def timing_row(t: Timing) -> tuple[Any, ...]:
    verdict = (
        '<span class="ok">ok</span>' if t.within_tolerance else '<span class="bad">FAILED</span>'
    )
    return (
        html.escape(t.name),
        html.escape(t.note),
        f"{t.compile_s:.2f}",
        f"{t.seconds * 1e3:.3f}",
        f"{t.gflops:.3g}",
        f"{t.max_diff:.2g}",
        verdict,
    )
