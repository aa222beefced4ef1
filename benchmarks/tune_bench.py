"""Heuristic vs tuned: does `tfu.tune` beat the tile pass's cost model, and never lose to it?

For each network (the standard workloads of workloads.py, plus small and odd shapes where a
cache model has little to go on), `tfu.tune` searches once for all of the network's batches
within --budget seconds (the search time is reported; mlp-small's 784-512-512-10 at four
batches must stay under 60 s). Then, for each case, the network is compiled twice with the
same pipeline `canonicalize,fuse,tile{batch=B},plan_memory`: once with the tuning log off (the
heuristic) and once with it on (tuned), and the two models are timed round-robin with medians
(run.round_robin, the harness of `make bench`).

    python benchmarks/tune_bench.py                            # every case, 30 s per network
    python benchmarks/tune_bench.py --cases mlp-small --quick  # one workload, short timings
    python benchmarks/tune_bench.py --budget 10 --json out.json

"tuned/heur." is the heuristic's median time over the tuned model's: above 1 the tuned model
is faster. A ratio within the load noise of 1 is a tie; tuning stores a choice only when it
beat the heuristic by more than the noise it measured, so the goal is >= 1.0 within noise.
The log is a temporary file (TILEFUSE_TUNING_LOG): a run neither reads nor changes yours.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as harness  # noqa: E402
import workloads as wl  # noqa: E402

import tilefuse as tfu  # noqa: E402
from tilefuse import tuning_log  # noqa: E402

# shapes off the beaten path: not multiples of the register tile, thin layers, tiny layers
ODD_CASES = [
    *wl.mlp_cases("mlp-odd", (100, 300, 7), ("relu", "identity"), (1, 13, 97)),
    *wl.mlp_cases("bottleneck", (1000, 23, 1000), ("tanh", "sigmoid"), (5, 333)),
    *wl.mlp_cases("tiny", (13, 20, 7), ("relu", "identity"), (1, 5)),
]
CASES = [*wl.CASES, *ODD_CASES]
TIMING = harness.Budget(seconds=3.0, min_reps=5, max_reps=200)
QUICK_TIMING = harness.Budget(seconds=0.5, min_reps=5, max_reps=40)


def pipeline(batch: int) -> str:
    return f"canonicalize,fuse,tile{{batch={batch}}},plan_memory"


def compile_with_log(net: tfu.Sequential, batch: int, log: str) -> Any:
    """The network compiled for `batch` with TILEFUSE_TUNING_LOG=log ("off": the heuristic)."""
    os.environ[tuning_log.ENV_VAR] = log
    return tfu.compile(net, target="cpu", pipeline=pipeline(batch), check=False)


def tile_codes(model: Any) -> Counter:
    decisions = model.final.meta.get("decisions", [])
    return Counter(d.code for d in decisions if d.pass_name == "tile" and d.code != "machine")


def tune_network(net: tfu.Sequential, cases: list[wl.Case], budget: float) -> dict[str, Any]:
    start = time.perf_counter()
    report = tfu.tune(net, batches=[c.batch for c in cases], budget=budget)
    statuses = Counter(op.status for op in report.ops)
    return {"seconds": time.perf_counter() - start, "statuses": dict(statuses), "report": report}


def time_case(case: wl.Case, net: tfu.Sequential, log: str, timing: harness.Budget) -> dict:
    """Both models of `case`, timed round-robin; one model alone when tuning changed nothing
    (the same tilings generate the same code: any difference would be noise)."""
    heuristic = compile_with_log(net, case.batch, "off")
    tuned = compile_with_log(net, case.batch, log)
    x = wl.make_input(case)
    expected = heuristic(x)
    scale = float(np.abs(expected).max())
    same = np.allclose(tuned(x), expected, rtol=2e-3, atol=2e-3 * scale)
    models = {"heuristic": heuristic}
    if tilings(tuned) != tilings(heuristic):
        models["tuned"] = tuned
    before = harness.cpu_counters()
    calls = {name: (lambda model=model: model(x)) for name, model in models.items()}
    timings = harness.round_robin(calls, timing)
    load = harness.load_between(before, harness.cpu_counters())
    medians = {name: t.stats()["median_s"] for name, t in timings.items()}
    medians.setdefault("tuned", medians["heuristic"])
    return {
        "case": case.name,
        "heuristic_s": medians["heuristic"],
        "tuned_s": medians["tuned"],
        "ratio": medians["heuristic"] / medians["tuned"],
        "same_code": "tuned" not in models,
        "noise": max(_spread(t.samples) for t in timings.values()),
        "tile": dict(tile_codes(tuned)),
        "outputs_match": bool(same),
        "load_others": load["others"],
    }


def tilings(model: Any) -> list:
    return [dict(node.attrs).get("tile") for node in model.final if node.op == "dense"]


def _spread(samples: list[float]) -> float:
    q1, q2, q3 = np.percentile(samples, [25, 50, 75])
    return float((q3 - q1) / 2 / q2)


def networks(cases: list[wl.Case]) -> list[list[wl.Case]]:
    """Cases grouped by the network they run, in order."""
    groups: dict[Any, list[wl.Case]] = {}
    for case in cases:
        groups.setdefault(case.network, []).append(case)
    return list(groups.values())


def benchmark(cases: list[wl.Case], budget: float, timing: harness.Budget, log: str) -> dict:
    rows, searches = [], []
    for group in networks(cases):
        net = wl.build_net(group[0])
        os.environ[tuning_log.ENV_VAR] = log
        search = tune_network(net, group, budget)
        name = f"{group[0].workload} {'-'.join(map(str, group[0].dims))}"
        searches.append({"network": name, "batches": [c.batch for c in group],
                         "seconds": search["seconds"], "statuses": search["statuses"]})  # fmt: skip
        print(f"tuned {name} at batches {searches[-1]['batches']} in "
              f"{search['seconds']:.1f} s: {search['statuses']}", flush=True)  # fmt: skip
        for case in group:
            rows.append(time_case(case, net, log, timing))
            print(row_text(rows[-1]), flush=True)
    return {"budget": budget, "searches": searches, "cases": rows}


def row_text(row: dict[str, Any]) -> str:
    tile = ", ".join(f"{n} {code}" for code, n in sorted(row["tile"].items()))
    check = "" if row["outputs_match"] else "  OUTPUTS DIFFER"
    check += "  (same tilings: timed once)" if row["same_code"] else ""
    return (f"  {row['case']:<22} heuristic {row['heuristic_s'] * 1e6:10.1f} µs  tuned "
            f"{row['tuned_s'] * 1e6:10.1f} µs  tuned/heur. {row['ratio']:5.2f} "
            f"(noise ±{row['noise']:.0%}, others' load {row['load_others']:.0%})  "
            f"[{tile}]{check}")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = ["| network | batches | search s | results |", "|---|---|---:|---|"]
    for s in result["searches"]:
        lines.append(f"| {s['network']} | {s['batches']} | {s['seconds']:.1f} | {s['statuses']} |")
    lines += ["", "| case | heuristic µs | tuned µs | tuned/heur. | noise | tile decisions |",
              "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in result["cases"]:
        tile = ", ".join(f"{n} {code}" for code, n in sorted(r["tile"].items()))
        tile += " (same tilings)" if r["same_code"] else ""
        lines.append(f"| {r['case']} | {r['heuristic_s'] * 1e6:.1f} | {r['tuned_s'] * 1e6:.1f} "
                     f"| {r['ratio']:.2f} | ±{r['noise']:.0%} | {tile} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ", ".join(sorted({c.workload for c in CASES}))
    parser.add_argument("--cases", help=f"cases or workloads ({names}); default: all")
    parser.add_argument("--budget", type=float, default=30.0, help="tuning seconds per network")
    parser.add_argument("--quick", action="store_true", help="short timings (0.5 s per case)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cases = wl.select_cases(args.cases, CASES)
    timing = QUICK_TIMING if args.quick else TIMING
    previous = os.environ.get(tuning_log.ENV_VAR)
    with tempfile.TemporaryDirectory(prefix="tilefuse-tune-bench-") as scratch:
        try:
            result = benchmark(cases, args.budget, timing, str(pathlib.Path(scratch) / "log.json"))
        finally:
            os.environ.pop(tuning_log.ENV_VAR, None)
            if previous is not None:
                os.environ[tuning_log.ENV_VAR] = previous
    print()
    print(markdown(result), end="")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
