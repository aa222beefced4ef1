"""Autotuning (tfu.tune) and the tuning log: the log round-trips, the tile pass uses a matching
entry and falls back to its model on any mismatch or a corrupted log, the search stays within
its budget and stores only verified winners. Budgets are tiny: no speed is asserted."""

from __future__ import annotations

import dataclasses
import importlib
import json
import time

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import machine as machines
from tilefuse import tuning_log
from tilefuse.backends import cpu_kernels as ck
from tilefuse.cli import budget_seconds, main
from tilefuse.explain import explain_graph
from tilefuse.passes import run_pipeline
from tilefuse.passes.tile import choose_tiling, problem_of
from tilefuse.roofline import nominal_peak
from tilefuse.tiling import TYPICAL_BATCH, Tiling

tune_module = importlib.import_module("tilefuse.tune")  # `tilefuse.tune` is the function


@pytest.fixture(autouse=True)
def fresh_log(tmp_path, monkeypatch):
    """Every test gets its own cache directory, so its log is the default one there."""
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(tuning_log.ENV_VAR, raising=False)
    return tmp_path / "cache" / "tuning" / "log.json"


def small_net() -> tfu.Sequential:
    return tfu.Sequential(
        [tfu.Dense(48, activation="relu"), tfu.Dense(10)], input_dim=64, seed=0, name="small"
    )


def first_dense(g: tfu.Graph) -> tfu.Node:
    return next(node for node in g if node.op == "dense")


def tile_decisions(g: tfu.Graph, spec: str = "canonicalize,fuse,tile") -> list:
    tiled = run_pipeline(g, spec)
    return [d for d in tiled.meta["decisions"] if d.pass_name == "tile" and d.code != "machine"]


def tiled_dense(g: tfu.Graph, spec: str = "canonicalize,fuse,tile") -> tfu.Node:
    return first_dense(run_pipeline(g, spec))


def entry_for(status: str = "tuned", batch: int = TYPICAL_BATCH, **key_changes):
    """An entry for the first dense op of small_net() at `batch`, as tune would write it."""
    fused = run_pipeline(small_net().graph(), "canonicalize,fuse")
    node = first_dense(fused)
    heuristic, _ = choose_tiling(node, fused, batch=batch)
    key = tuning_log.op_key(node, batch, 64, 48, machines.machine(), heuristic)
    tiling = heuristic.replace(mc=heuristic.mr, kc=16, parallel="none")
    return tuning_log.Entry(
        key={**key, **key_changes},
        status=status,
        tiling=tiling if status == "tuned" else heuristic,
        heuristic=heuristic,
        speedup=1.18 if status == "tuned" else 1.0,
        noise=0.03,
        seconds=1e-6,
        heuristic_seconds=1.18e-6,
        batch=batch,
        candidates=9,
        measured_on="2025-06-01T12:00:00",
    )


# -- the log ---------------------------------------------------------------------------------
def test_log_round_trips_and_exports(fresh_log, tmp_path):
    entry = entry_for()
    assert tuning_log.write_entries([entry]) == fresh_log
    assert list(tuning_log.read_log().values()) == [entry]
    exported = tmp_path / "exported.json"
    assert tuning_log.export_log(exported) == 1
    other = tmp_path / "other.json"
    assert tuning_log.import_log(exported, other) == 1
    assert tuning_log.read_log(other) == tuning_log.read_log(fresh_log)
    assert json.loads(other.read_text())["format"] == tuning_log.FORMAT


def test_writes_merge_and_replace_by_key():
    tuned, confirmed = entry_for("tuned"), entry_for("confirmed", batch=16)
    tuning_log.write_entries([tuned])
    tuning_log.write_entries([confirmed])
    assert {e.status for e in tuning_log.read_log().values()} == {"tuned", "confirmed"}
    tuning_log.write_entries([dataclasses.replace(tuned, speedup=2.0)])
    assert sorted(e.speedup for e in tuning_log.read_log().values()) == [1.0, 2.0]


def test_a_noisier_retune_does_not_replace_a_quiet_measurement():
    quiet = entry_for("tuned")  # noise 0.03
    tuning_log.write_entries([quiet])
    noisy = dataclasses.replace(entry_for("confirmed"), noise=0.40)
    tuning_log.write_entries([noisy])
    assert list(tuning_log.read_log().values()) == [quiet]
    as_quiet = dataclasses.replace(entry_for("confirmed"), noise=0.05)
    tuning_log.write_entries([as_quiet])
    assert list(tuning_log.read_log().values()) == [as_quiet]


def test_a_search_on_a_machine_too_noisy_to_judge_is_inconclusive():
    from tilefuse.tune import MAX_NOISE, Candidate, OpTuning, decide

    heuristic = Candidate(Tiling(), role="heuristic")
    heuristic.final = [1.0, 1.0, 3.0, 5.0, 9.0, 1.0, 2.0]  # strays far more than MAX_NOISE
    challenger = Candidate(Tiling(kc=64))
    challenger.ratios = [3.0] * 8  # "3x faster": inside such noise it means nothing
    op = OpTuning("%0", "line", 256, Tiling(), [heuristic, challenger], 2)
    decide(op, bench=None)
    assert op.status == "inconclusive" and op.noise > MAX_NOISE and "nothing stored" in op.note
    assert op.chosen == Tiling()


def test_batch_bucket():
    assert [tuning_log.batch_bucket(m) for m in (1, 2, 3, 16, 17, 256, 4096)] == [
        1, 2, 4, 16, 32, 256, 4096,
    ]  # fmt: skip


# -- the tile pass's side --------------------------------------------------------------------
def test_tile_pass_uses_a_matching_entry_and_says_so():
    entry = entry_for()
    tuning_log.write_entries([entry])
    assert dict(tiled_dense(small_net().graph()).attrs)["tile"] == entry.tiling
    decision = tile_decisions(small_net().graph())[0]
    assert decision.code == "tuned"
    assert decision.detail.startswith(f"tuned: {entry.tiling.mr}×{entry.tiling.nr}, mc=")
    assert "1.18× faster than the heuristic choice" in decision.detail
    assert "measured on 2025-06-01" in decision.detail
    spec = "canonicalize,fuse,tile,plan_memory"
    explained = str(explain_graph(small_net().graph(), spec, peak=nominal_peak()))
    assert "[tuned]" in explained and "1.18× faster than the heuristic choice" in explained


def test_confirmed_entry_keeps_the_model_and_says_it_was_checked():
    entry = entry_for("confirmed")
    tuning_log.write_entries([entry])
    decision = tile_decisions(small_net().graph())[0]
    assert decision.code == "confirmed"
    assert decision.detail.startswith("confirmed by tuning: none of 9 candidates")
    assert dict(tiled_dense(small_net().graph()).attrs)["tile"] == entry.heuristic


@pytest.mark.parametrize(
    "change",
    [{"tilefuse": "0.0.0"}, {"cpu": "another CPU"}, {"isa": "128-bit vectors"},
     {"kernels": "0" * 16}, {"act": "sigmoid"}, {"dtype": "f64"}, {"cores": 999}],
    ids=lambda c: next(iter(c)),
)  # fmt: skip
def test_key_mismatch_falls_back_to_the_model(change):
    heuristic = dict(tiled_dense(small_net().graph()).attrs)["tile"]
    tuning_log.write_entries([entry_for(**change)])
    assert dict(tiled_dense(small_net().graph()).attrs)["tile"] == heuristic
    assert tile_decisions(small_net().graph())[0].code == "model"


def test_other_batches_and_spec_options_ignore_the_entry():
    tuning_log.write_entries([entry_for(batch=TYPICAL_BATCH)])
    assert tile_decisions(small_net().graph(), "canonicalize,fuse,tile{batch=16}")[0].code == (
        "model"
    )
    given = tile_decisions(small_net().graph(), "canonicalize,fuse,tile{k=32}")[0]
    assert given.code == "user_spec"


def test_log_can_be_turned_off(monkeypatch):
    tuning_log.write_entries([entry_for()])
    monkeypatch.setenv(tuning_log.ENV_VAR, "off")
    assert tile_decisions(small_net().graph())[0].code == "model"


def test_corrupted_log_is_ignored_with_a_warning(fresh_log):
    heuristic = dict(tiled_dense(small_net().graph()).attrs)["tile"]
    fresh_log.parent.mkdir(parents=True)
    fresh_log.write_text('{"format": 1, "entries": {"x": ')
    with pytest.warns(tuning_log.TuningLogWarning, match="unreadable"):
        node = tiled_dense(small_net().graph())
    assert dict(node.attrs)["tile"] == heuristic


def test_a_bad_entry_is_skipped_with_a_warning(fresh_log):
    good = entry_for()
    tuning_log.write_entries([good])
    data = json.loads(fresh_log.read_text())
    data["entries"]["broken"] = {"status": "tuned", "tiling": {"mc": -1}}
    fresh_log.write_text(json.dumps(data))
    with pytest.warns(tuning_log.TuningLogWarning, match="skipping an entry"):
        entries = tuning_log.read_log()
    assert list(entries.values()) == [good]


# -- the search ------------------------------------------------------------------------------
def test_search_respects_its_budget_and_stores_what_it_measured(fresh_log):
    tune_module.load_kernels({"f32"})  # the kernel's first load is not the search's time
    start = time.perf_counter()
    report = tfu.tune(small_net(), batches=[1, 64], budget=0.6, progress=False)
    elapsed = time.perf_counter() - start
    # the budget bounds the search; the slack is for a host the other test workers load
    assert elapsed < 0.6 + 2.5, f"took {elapsed:.2f} s on a 0.6 s budget"
    assert [(op.name, op.batch) for op in report.ops] == [("%0", 1), ("%0", 64), ("%1", 1),
                                                          ("%1", 64)]  # fmt: skip
    for op in report.ops:
        assert op.candidates[0].tiling == op.heuristic and op.candidates[0].role == "heuristic"
        assert op.status in ("tuned", "confirmed", "skipped", "inconclusive")
    stored = [op for op in report.ops if op.status in ("tuned", "confirmed")]
    too_noisy = all(op.status == "inconclusive" for op in report.ops if op.status != "skipped")
    assert stored or too_noisy, "a 0.6 s budget measures at least one small op"
    assert len(tuning_log.read_log(fresh_log)) == len(stored)
    assert "candidates tried for small" in str(report)


def test_a_budget_spent_elsewhere_skips_the_rest():
    report = tfu.tune(small_net(), batches=[4], budget=1e-9, progress=False, store=False)
    assert {op.status for op in report.ops} == {"skipped"}
    assert report.log is None


def test_after_tuning_the_tile_pass_uses_every_entry():
    tfu.tune(small_net(), batches=[TYPICAL_BATCH], budget=1.0, progress=False)
    codes = [d.code for d in tile_decisions(small_net().graph())]
    assert len(codes) == 2
    assert set(codes) <= {"tuned", "confirmed", "model"}  # model: an op the budget skipped
    assert set(codes) & {"tuned", "confirmed"}


def test_a_winner_is_verified_before_it_is_stored(monkeypatch, fresh_log):
    monkeypatch.setattr(tune_module, "beats", lambda candidate, noise: True)
    tfu.compile(small_net(), target="cpu", check=False)  # the kernels' first compile: not timed
    report = tfu.tune(small_net(), batches=[16], budget=3.0, progress=False)  # a loaded host
    tuned = [op for op in report.ops if op.status == "tuned"]
    assert tuned, "with every challenger winning, a measured op is tuned"
    for op in tuned:
        assert op.chosen != op.heuristic and op.error <= 1.0
        assert op.entry in tuning_log.read_log(fresh_log).values()


def test_a_wrong_winner_is_rejected_and_not_stored(monkeypatch, fresh_log):
    monkeypatch.setattr(tune_module, "beats", lambda candidate, noise: True)
    original = tune_module.Bench.call

    def wrong_output(bench, tiling):
        run = original(bench, tiling)
        return lambda: (run(), bench.out.__iadd__(1.0))

    monkeypatch.setattr(tune_module.Bench, "call", wrong_output)
    tfu.compile(small_net(), target="cpu", check=False)  # the kernels' first compile: not timed
    with pytest.warns(tune_module.TuneWarning, match="wrong by"):
        report = tfu.tune(small_net(), batches=[16], budget=3.0, progress=False)
    statuses = {op.status for op in report.ops}
    assert "rejected" in statuses and "tuned" not in statuses
    assert tuning_log.read_log(fresh_log) == {}


def test_candidates_start_with_the_heuristic_and_run_differently():
    fused = tune_module.fused_graph(small_net())
    node = first_dense(fused)
    for batch in (1, 64):
        heuristic, _ = choose_tiling(node, fused, batch=batch)
        bench = tune_module.Bench(node, batch, 64, 48, seed=0)
        problem = problem_of(node, ("N", 64), (64, 48), batch)
        tilings = tune_module.candidate_tilings(problem, machines.machine(), heuristic, bench)
        assert tilings[0] == heuristic
        assert len(tilings) <= tune_module.MAX_CANDIDATES
        assert len({bench.behaviour(t) for t in tilings}) == len(tilings)
        assert all(bench.error(t) <= 1.0 for t in tilings)  # each on its own register tile
        family = ck.micro_tiles(np.float32)
        assert {(t.mr, t.nr) for t in tilings} == set(family)  # every register tile is tried
        assert {(t.mr, t.nr) for t in tilings[1 : len(family)]} == set(family) - {
            (heuristic.mr, heuristic.nr)
        }


def test_tune_takes_a_compiled_model_and_shows_progress():
    model = tfu.compile(small_net(), target="reference")
    report = tfu.tune(model, batches=3, budget=0.3, progress=True, store=False)
    assert [(op.name, op.batch) for op in report.ops] == [("%0", 3), ("%1", 3)]
    assert report.log is None and tuning_log.read_log() == {}


def test_tune_rejects_bad_arguments():
    with pytest.raises(ValueError, match="budget"):
        tfu.tune(small_net(), budget=0)
    with pytest.raises(ValueError, match="batches"):
        tfu.tune(small_net(), batches=[0], budget=1)


# -- the command line ------------------------------------------------------------------------
NET_FILE = """
import tilefuse as tfu
net = tfu.Sequential([tfu.Dense(24, activation="sigmoid"), tfu.Dense(5)], input_dim=16, seed=0)
"""


def test_cli_tunes_exports_and_imports(tmp_path, capsys, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    exported = tmp_path / "exported.json"
    argv = ["tune", str(net_file), "--budget", "600ms", "--batch", "3", "40"]
    assert main([*argv, "--export", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "candidates tried" in out and "heuristic" in out and "exported" in out
    count = len(tuning_log.read_log(exported))
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert main(["tune", "--import", str(exported)]) == 0
    assert f"imported {count} entries" in capsys.readouterr().out
    assert len(tuning_log.read_log()) == count


def test_cli_tune_needs_something_to_do(capsys):
    assert main(["tune"]) == 2  # a usage error, as argparse gives
    assert "tune needs FILE" in capsys.readouterr().err
    assert main(["tune", "--import", "/nonexistent/log.json"]) == 1


@pytest.mark.parametrize(
    "text, seconds", [("30s", 30.0), ("30", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1min", 60.0)]
)
def test_budget_parsing(text, seconds):
    assert budget_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "-1s", "0", "3h"])
def test_bad_budgets(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        budget_seconds(text)
