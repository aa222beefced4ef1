"""Pictures of a network: the graph at any stage drawn by Graphviz, and the roofline plot.

    tilefuse graph examples/mlp.py -o mlp.svg --stage fused

`graph_dot(g)`: a fused `dense` node lists the ops it computes
(matmul, bias add, activation, epilogue steps) and its tiling; constants are small notes.
`render_dot` runs the `dot` binary (Debian's `graphviz`); `roofline_svg` draws an
Explanation's kernels on the roofline with matplotlib.
"""

from __future__ import annotations

import html
import io
import math
import shutil
import subprocess

from .errors import TilefuseError
from .ir import Graph, Node, format_value, node_names
from .ops import ACTIVATIONS, BINARY_OPS, OPS, attrs_of

FORMATS = ("svg", "png", "dot")
KIND_COLORS = {
    "source": "#e8e8e8",
    "matmul": "#9ecae1",
    "layout": "#fdd0a2",
    "binary": "#c7e9c0",
    "activation": "#fcbba1",
    "fused": "#bcbddc",
}
DOT_TIMEOUT_S = 60


# -- the graph ------------------------------------------------------------------------------
def graph_dot(g: Graph, title: str | None = None) -> str:
    """Graphviz DOT for `g`: fused ops listed inside their dense node, colours by op kind."""
    names = node_names(g)
    caption = html.escape(title or g.name)
    lines = [
        f'digraph "{g.name}" {{',
        f'  graph [rankdir=TB, label="{caption}", labelloc=t, fontname="Helvetica"];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [color="#555555", arrowsize=0.7];',
    ]
    lines += [f"  n{node.id} [{node_style(g, node, names)}];" for node in g]
    lines += [f"  n{i} -> n{node.id};" for node in g for i in node.inputs]
    for k, o in enumerate(g.outputs):
        lines.append(f'  out{k} [label="output {k}", shape=plaintext, style=""];')
        lines.append(f"  n{o} -> out{k};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def node_style(g: Graph, node: Node, names: dict[int, str]) -> str:
    color = KIND_COLORS.get(OPS[node.op].kind, "#ffffff")
    name = f"%{names[node.id]}"
    if node.op == "input":
        return f'label="{name}\\n{node.type}", shape=ellipse, fillcolor="#deebf7"'
    if node.op == "const":
        return f'label="{name}\\n{node.type}", shape=note, fillcolor="{color}", fontsize=9'
    if node.op == "dense":
        return f'label=<{dense_label(g, node, names)}>, fillcolor="{color}", shape=box'
    attrs = ", ".join(f"{k}={format_value(v)}" for k, v in node.attrs)
    head = f"{name} = {node.op}" + (f"[{attrs}]" if attrs else "")
    return f'label="{escape_dot(head)}\\n{node.type}", fillcolor="{color}"'


def escape_dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dense_steps(g: Graph, node: Node, names: dict[int, str]) -> list[str]:
    """The ops a dense node computes, in order: matmul, bias add, activation, post steps."""
    attrs = attrs_of(node)
    x, w, *rest = (f"%{names[i]}" for i in node.inputs)
    steps = [f"matmul {x} @ {w}"]
    if attrs["bias"]:
        steps.append(f"+ bias {rest.pop(0)}")
    if attrs["act"] != "identity":
        params = [f"{k}={format_value(attrs[k])}" for k in ACTIVATIONS[attrs["act"]].attrs]
        steps.append(attrs["act"] + (f"[{', '.join(params)}]" if params else ""))
    for step in attrs["post"]:
        binary = BINARY_OPS.get(step)
        if step == "layer_norm":
            steps.append(f"layer_norm {rest.pop(0)}, {rest.pop(0)}")
        else:
            steps.append(f"{binary.symbol} {rest.pop(0)}" if binary else step)
    return steps


def dense_label(g: Graph, node: Node, names: dict[int, str]) -> str:
    """An HTML-like Graphviz label: a header, one row per fused step, the tiling, the type."""
    rows = [f"<b>%{names[node.id]} = dense</b>"]
    rows += [html.escape(step) for step in dense_steps(g, node, names)]
    tiling = attrs_of(node)["tile"]
    if tiling is not None:
        blocks = f"mc={tiling.mc} nc={tiling.nc} kc={tiling.kc} mr={tiling.mr} nr={tiling.nr}"
        how = f"parallel={tiling.parallel} pack={str(tiling.pack).lower()}"
        rows += [f'<font point-size="9">{text}</font>' for text in (f"tile {blocks}", how)]
    rows.append(html.escape(str(node.type)))
    cells = "".join(f'<tr><td align="left">{row}</td></tr>' for row in rows)
    return f'<table border="0" cellborder="0" cellspacing="1">{cells}</table>'


def have_dot() -> bool:
    return shutil.which("dot") is not None


def render_dot(dot: str, fmt: str = "svg") -> bytes:
    """Run Graphviz's `dot` on DOT text; `fmt` svg, png (or dot: the text itself)."""
    if fmt not in FORMATS:
        raise TilefuseError(f"unknown picture format {fmt!r}; available: {', '.join(FORMATS)}")
    if fmt == "dot":
        return dot.encode()
    if not have_dot():
        raise TilefuseError(
            "drawing the graph needs Graphviz's `dot` on PATH "
            "(Debian/Ubuntu: apt-get install graphviz); -o FILE.dot writes the DOT text"
        )
    result = subprocess.run(
        ["dot", f"-T{fmt}"], input=dot.encode(), capture_output=True, timeout=DOT_TIMEOUT_S
    )
    if result.returncode != 0:
        raise TilefuseError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def draw_graph(g: Graph, fmt: str = "svg", title: str | None = None) -> bytes:
    return render_dot(graph_dot(g, title), fmt)


# -- the roofline -----------------------------------------------------------------------------
def roofline_figure(explanation, measured=None):
    """A matplotlib Figure: the roof (memory slope, compute ceiling), a filled point per kernel
    at (arithmetic intensity, the roof's bound there), and, given a `profile.Profile`, a hollow
    point per kernel at the GFLOP/s it was measured at, joined to its bound."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    peak = explanation.peak
    kernels = [k for k in explanation.kernels if math.isfinite(k.intensity) and k.intensity > 0]
    timed = [k for k in (measured.kernels if measured else []) if k.gflops > 0 and k.intensity > 0]
    intensities = [k.intensity for k in kernels + timed] + [peak.ridge]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.add_subplot()
    xs = [lo, peak.ridge, hi]
    ax.plot(xs, [peak.attainable(x) for x in xs], color="#333333", linewidth=2, label="roof")
    ax.axvline(peak.ridge, color="#999999", linestyle=":", linewidth=1)
    for i, k in enumerate(kernels):  # labels staggered: kernels of one intensity stay legible
        color = "#d95f02" if k.bound == "memory" else "#1b9e77"
        ax.scatter([k.intensity], [k.attainable_gflops], color=color, zorder=3)
        ax.annotate(
            f"{k.name} {k.label}",
            (k.intensity, k.attainable_gflops),
            fontsize=8,
            xytext=(4, -10 - 10 * (i % 3)),
            textcoords="offset points",
        )
    for i, k in enumerate(timed):
        color = "#d95f02" if k.bound == "memory" else "#1b9e77"
        roof = peak.attainable(k.intensity)
        ax.plot([k.intensity, k.intensity], [k.gflops, roof], color=color, linestyle="--",
                linewidth=1, zorder=2)  # fmt: skip
        ax.scatter([k.intensity], [k.gflops], facecolors="white", edgecolors=color, zorder=4,
                   label="measured (profile)" if i == 0 else None)  # fmt: skip
        name = k.line.split(" =")[0]
        label = f"{name}: {k.pct_of_roof:.0f} % of roof"
        offset = (5, -3 + 10 * (i % 3))
        ax.annotate(label, (k.intensity, k.gflops), fontsize=8, xytext=offset,
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flops/byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(
        f"{explanation.graph}: peak {peak.gflops:.4g} GFLOP/s, {peak.gbps:.4g} GB/s, "
        f"batch {explanation.batch}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    if timed:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def roofline_image(explanation, fmt: str = "svg", measured=None) -> bytes:
    """The roofline plot as SVG or PNG bytes (with measured points given a Profile)."""
    buffer = io.BytesIO()
    roofline_figure(explanation, measured).savefig(buffer, format=fmt)
    return buffer.getvalue()
