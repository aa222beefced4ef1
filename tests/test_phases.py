"""Compile phases (tilefuse.phases): exclusive times, kept on the model, printed with
TILEFUSE_DEBUG=1 and shown by explain."""

from __future__ import annotations

import time

import tilefuse as tfu
from tilefuse import phases


def test_a_nested_phase_is_charged_to_itself_only():
    with phases.recording() as record:
        with phases.phase("outer"):
            time.sleep(0.02)
            with phases.phase("inner"):
                time.sleep(0.03)
        phases.move("inner", "inner part", 0.01)
    assert 0.015 < record["outer"] < 0.03
    assert 0.015 < record["inner"] < 0.03 and record["inner part"] == 0.01
    assert phases.describe(record).startswith(f"{sum(record.values()):.2f} s: ")


def test_phases_outside_a_recording_are_dropped():
    with phases.phase("nobody listens"):
        pass
    phases.move("a", "b", 1.0)
    with phases.recording() as record:
        pass
    assert record == {}


def test_a_compile_keeps_its_phases_and_debug_prints_them(monkeypatch, capsys):
    monkeypatch.setenv("TILEFUSE_DEBUG", "1")
    net = tfu.Sequential([tfu.Dense(8, "relu"), tfu.Dense(3)], input_dim=5, seed=11)
    model = tfu.compile(net)
    record = model.compile_phases
    assert {"trace", "passes", "render", "forward: native", "self-check"} <= set(record)
    assert all(seconds >= 0 for seconds in record.values())
    err = capsys.readouterr().err
    assert f"tilefuse: compiled {model.final.name} for cpu in " in err
    assert "compiled in " in str(model.explain())


def test_tilefuse_dump_writes_every_stage_and_what_explains_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TILEFUSE_DUMP", str(tmp_path))
    net = tfu.Sequential([tfu.Dense(8, "relu"), tfu.Dense(3)], input_dim=5, seed=12)
    model = tfu.compile(net)
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith(f"{model.graph.name}-")
    names = {p.name for p in folder.iterdir()}
    stages = [f"{k:02d}-{s}" for k, s in enumerate(model.stages)]
    assert {f"{s}.tf" for s in stages} | {f"{s}.npz" for s in stages} <= names
    assert {"source.ll", "explain.txt", "loops.txt", "phases.txt", "check.txt"} <= names
    assert tfu.load_graph(folder / f"{stages[-1]}.tf") == model.final
    assert (folder / "source.ll").read_text() == model.source()  # the native forward
    assert f"tilefuse: wrote {folder}" in capsys.readouterr().err
