"""Transformer cases of `make bench`: PyTorch's own encoders exported to ONNX and run by every
system in one interleaved run (float32, 2 threads unless --threads).

- bert-mini: `nn.TransformerEncoder` of 4 `nn.TransformerEncoderLayer(256, 4, 1024,
  activation="gelu", batch_first=True)`, sequence 128, batch 1 and 16;
- bert-base-layer: one `nn.TransformerEncoderLayer(768, 12, 3072, ...)`, sequence 128,
  batch 1.

Systems: tilefuse (`from_onnx` of the export, `target="cpu"`), ONNX Runtime (default graph
optimizations, and with its transformer fusions where they apply: the session's
`ORT_ENABLE_ALL` level, which includes attention fusion for the exported pattern), PyTorch
eager and torch.compile. Every output is checked against PyTorch eager (max |diff| shown)
before it is timed; medians of interleaved rounds (run.py's `round_robin`), ratios against
the best peer of the same run. Writes `benchmarks/results/<host>-transformers.md` and `.json`.

    .venv/bin/python benchmarks/transformers.py [--threads 2] [--quick] [--cases bert-mini/b1]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402 (benchmarks/run.py: the timing loop, the host description)

import tilefuse as tfu  # noqa: E402

SEQ = 128
CASES = {
    "bert-mini": dict(d=256, heads=4, ffn=1024, layers=4, batches=(1, 16)),
    "bert-base-layer": dict(d=768, heads=12, ffn=3072, layers=1, batches=(1,)),
}


def torch_encoder(d: int, heads: int, ffn: int, layers: int) -> Any:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, heads, ffn, activation="gelu", batch_first=True)
    module = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    with torch.no_grad():  # no parameter left at its init (zero biases, unit norms)
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module


def export(module: Any, d: int, path: pathlib.Path) -> None:
    import torch

    torch.onnx.export(
        module, (torch.randn(2, SEQ, d),), str(path), opset_version=17, input_names=["x"],
        output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
    )  # fmt: skip


def systems(module: Any, path: pathlib.Path, threads: int) -> dict[str, Any]:
    """name -> (label, callable(x) -> y); a system that fails to build is left out, said so."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    made: dict[str, Any] = {}
    start = time.perf_counter()
    model = tfu.compile(tfu.from_onnx(path), target="cpu")
    model.set_threads(threads)
    print(f"  tilefuse compiled in {time.perf_counter() - start:.1f} s", flush=True)
    made["tilefuse"] = ("tilefuse", model)
    levels = ort.GraphOptimizationLevel
    for name, level in (("onnxruntime", levels.ORT_ENABLE_EXTENDED),
                        ("onnxruntime-all", levels.ORT_ENABLE_ALL)):  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        made[name] = (
            f"ONNX Runtime ({'all' if name.endswith('all') else 'default'} optimizations)",
            lambda x, s=session: s.run(None, {"x": x})[0],
        )

    def eager(x: np.ndarray, m: Any = module) -> np.ndarray:
        with torch.inference_mode():
            return m(torch.from_numpy(x)).numpy()

    made["torch"] = ("PyTorch eager", eager)
    try:
        compiled = torch.compile(module)

        def run_compiled(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return compiled(torch.from_numpy(x)).numpy()

        made["torch-compile"] = ("torch.compile", run_compiled)
    except Exception as err:  # noqa: BLE001 - a peer that cannot build is reported, not fatal
        print(f"  torch.compile: {err}")
    return made


def run_case(name: str, batch: int, spec: dict, threads: int, budget: Any, folder: pathlib.Path):
    module = torch_encoder(spec["d"], spec["heads"], spec["ffn"], spec["layers"])
    path = folder / f"{name}.onnx"
    if not path.exists():
        export(module, spec["d"], path)
    x = np.random.default_rng(batch).standard_normal((batch, SEQ, spec["d"])).astype(np.float32)
    made = systems(module, path, threads)
    want = made["torch"][1](x)
    fns, rows = {}, []
    for key, (label, fn) in made.items():
        try:
            error = float(np.abs(fn(x) - want).max())
        except Exception as err:  # noqa: BLE001
            rows.append({"system": key, "label": label, "error": str(err)})
            continue
        rows.append({"system": key, "label": label, "max_abs_diff": error})
        fns[key] = lambda fn=fn: fn(x)
    timings = bench.round_robin(fns, budget)
    for row in rows:
        timing = timings.get(row["system"])
        if timing is not None and timing.samples:
            row.update(timing.stats())
        elif timing is not None:
            row["error"] = timing.error
    peers = [r["median_s"] for r in rows if r["system"] != "tilefuse" and "median_s" in r]
    ours = next((r.get("median_s") for r in rows if r["system"] == "tilefuse"), None)
    best = min(peers) if peers else None
    return {
        "case": f"{name}/b{batch}",
        "rows": rows,
        "best_peer_s": best,
        "ratio": best / ours if best and ours else None,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# tilefuse transformer benchmark",
        "",
        f"{m['cpu']} ({m['cores']} cores, {', '.join(m['isa'])}), {report['threads']} threads, "
        f"float32, sequence {SEQ}; {m['date']}, tilefuse {m['git'].get('commit', '?')[:10]}.",
        "Ratio: the best peer's median time over tilefuse's (above 1: tilefuse is faster).",
        "",
        "| case | system | median | p10-p90 | max abs diff vs torch | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for row in case["rows"]:
            if "median_s" not in row:
                lines.append(
                    f"| {case['case']} | {row['label']} | error: {row.get('error')} | | | |"
                )
                continue
            spread = f"{bench.format_time(row['p10_s'])}-{bench.format_time(row['p90_s'])}"
            ratio = f"{case['ratio']:.2f}" if row["system"] == "tilefuse" and case["ratio"] else ""
            lines.append(
                f"| {case['case']} | {row['label']} | {bench.format_time(row['median_s'])} | "
                f"{spread} | {row['max_abs_diff']:.1e} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke test)")
    parser.add_argument("--cases", default="", help="e.g. bert-mini/b1,bert-base-layer/b1")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    budget = bench.for_threads(bench.QUICK if args.quick else bench.FULL, args.threads)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    report: dict[str, Any] = {"machine": bench.describe_machine(), "threads": args.threads}
    report["cases"] = []
    with tempfile.TemporaryDirectory() as folder:
        for name, spec in CASES.items():
            for batch in spec["batches"]:
                if chosen and f"{name}/b{batch}" not in chosen and name not in chosen:
                    continue
                print(f"{name}/b{batch}", flush=True)
                case = run_case(name, batch, spec, args.threads, budget, pathlib.Path(folder))
                report["cases"].append(case)
                ours = next(r for r in case["rows"] if r["system"] == "tilefuse")
                median = bench.format_time(ours.get("median_s", float("nan")))
                ratio = case["ratio"] or float("nan")
                print(f"  tilefuse {median}, ratio to the best peer {ratio:.2f}", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = bench.host_stem(report["machine"]) + "-transformers"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {out / stem}.md")
    return report


if __name__ == "__main__":
    main()
