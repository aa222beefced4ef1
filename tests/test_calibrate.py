"""Host calibration: the register tile measured fastest per dtype, kept in the cache folder
and used by the tile pass when it plans for this host (never for a preset)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import calibration as C
from tilefuse import cli
from tilefuse.backends import cpu_kernels as ck
from tilefuse.machine import machine
from tilefuse.passes.tile import Problem, choose_micro_tile


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TILEFUSE_MACHINE", raising=False)
    return tmp_path


def default_tile(np_dtype) -> str:
    """This host's default register tile of `np_dtype` as a record names it ("6x16" on AVX2)."""
    mr, nr = ck.micro_tiles(np_dtype)[0]
    return f"{mr}x{nr}"


def write_record(folder, chosen: dict[str, str], slower: float = 0.8) -> None:
    """A record choosing `chosen[dtype]`, the family's other tiles `slower` times as fast."""
    dtypes = {}
    for dtype, tile in chosen.items():
        family = ck.micro_tiles(np.float32 if dtype == "f32" else np.float64)
        rates = {f"{a}x{b}": 1.0 if f"{a}x{b}" == tile else slower for a, b in family}
        dtypes[dtype] = {"chosen": tile, "gflops": rates, "default": tile}
    entry = {"host": C.host_key(), "measured_on": "2026-12-07", "problem": "test", "dtypes": dtypes}
    (folder / C.CALIBRATION_FILE).write_text(json.dumps({C.host_key(): entry}))


def test_calibrate_measures_every_register_tile_and_keeps_the_record(private_cache):
    steps = []
    measure = importlib.import_module("tilefuse.host_calibration")
    record = measure.calibrate(rounds=1, on_step=steps.append)
    for dtype, np_dtype in (("f32", np.float32), ("f64", np.float64)):
        tiles = [f"{mr}x{nr}" for mr, nr in ck.micro_tiles(np_dtype)]
        entry = record.dtypes[dtype]
        assert list(entry.gflops) == tiles and all(rate > 0 for rate in entry.gflops.values())
        assert entry.chosen in tiles and entry.default == tiles[0]
        assert list(entry.kc_gflops) == [f"{share:g}" for share in C.KC_SHARES]
        assert entry.kc_share in C.KC_SHARES
    assert any("building the f32" in s for s in steps) and any("timing" in s for s in steps)
    again = C.recorded()
    assert again is not None and again.dtypes["f32"].chosen == record.dtypes["f32"].chosen
    assert "calibration of" in str(record)


def test_the_tile_pass_starts_from_the_calibrated_tile_on_this_host_only(private_cache):
    other = ck.micro_tiles(np.float32)[1]
    write_record(private_cache, {"f32": f"{other[0]}x{other[1]}"})
    host = machine("host")
    problem = Problem(m=256, n=512, k=784, dtype="f32", itemsize=4, symbolic={})
    mr, nr, why = choose_micro_tile(problem, host)
    assert (mr, nr) == other and "calibrated on this host 2026-12-07" in why
    mr, nr, _ = choose_micro_tile(problem, machine("generic"))  # a preset: host-independent
    assert (mr, nr) == (6, 16)
    f64 = Problem(m=256, n=512, k=784, dtype="f64", itemsize=8, symbolic={})
    assert choose_micro_tile(f64, host)[:2] == ck.micro_tiles(np.float64)[0]  # no f64 record


def test_a_record_naming_a_tile_outside_the_family_is_ignored(private_cache):
    write_record(private_cache, {"f32": "5x40"})
    assert C.preferred("f32", machine("host").vector_bits) is None
    (private_cache / C.CALIBRATION_FILE).write_text("{not json")
    assert C.recorded() is None


def test_cache_info_and_the_command_line_show_the_calibration(private_cache, capsys):
    assert cli.main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == {}
    tile = default_tile(np.float32)
    write_record(private_cache, {"f32": tile})
    assert cli.main(["cache", "info", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["calibration"]["f32"]
    assert shown.startswith(f"{tile} ({tile} 1.0")
    assert cli.main(["cache", "info"]) == 0
    assert f"calibration f32 {tile}" in capsys.readouterr().out
    assert cli.main(["calibrate", "--rounds", "0"]) == 2


def test_a_network_compiles_with_the_calibrated_tile(private_cache):
    other = ck.micro_tiles(np.float32)[1]
    write_record(private_cache, {"f32": f"{other[0]}x{other[1]}"})
    net = tfu.Sequential([tfu.Dense(96, activation="relu"), tfu.Dense(48)], input_dim=30,
                         name="calibrated")  # fmt: skip
    model = tfu.compile(net, target="cpu")
    tiles = {(n.attr["tile"].mr, n.attr["tile"].nr) for n in model.final if n.op == "dense"}
    assert tiles == {other}
    x = np.random.default_rng(0).standard_normal((9, 30)).astype(np.float32)
    np.testing.assert_allclose(model(x), tfu.reference.run(net.graph(), x), rtol=1e-5, atol=1e-5)


def test_explain_says_whether_the_host_is_calibrated(private_cache):
    net = tfu.Sequential([tfu.Dense(16)], input_dim=8, name="explained")
    text = str(tfu.compile(net, target="reference", pipeline="canonicalize,fuse,tile").explain())
    assert "this host is not calibrated (tilefuse calibrate)" in text
    f32, f64 = default_tile(np.float32), default_tile(np.float64)
    write_record(private_cache, {"f32": f32, "f64": f64})
    text = str(tfu.compile(net, target="reference", pipeline="canonicalize,fuse,tile").explain())
    assert f"register tiles calibrated on this host 2026-12-07: f32 {f32}, f64 {f64}" in text


@pytest.mark.parametrize(
    "damage",
    [
        {"gflops": {"6x16": "fast"}},
        {"gflops": ["6x16"]},
        {"chosen": 616},
        {"extra": 1},
        {"kc_share": 0.5},
        {"kc_gflops": {"1": None}},
    ],
)
def test_a_damaged_record_is_ignored_and_compiling_still_works(private_cache, damage):
    write_record(private_cache, {"f32": "6x16"})
    path = private_cache / C.CALIBRATION_FILE
    data = json.loads(path.read_text())
    data[C.host_key()]["dtypes"]["f32"].update(damage)
    path.write_text(json.dumps(data))
    assert C.recorded() is None and C.preferred("f32", 256) is None
    net = tfu.Sequential([tfu.Dense(8)], input_dim=4, name="damaged")
    tfu.compile(net, target="reference", pipeline="canonicalize,fuse,tile")


def test_calibrate_refuses_rounds_below_one(private_cache):
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        tfu.calibrate(0)


def test_the_tile_pass_takes_the_calibrated_kc_share_on_this_host_only(private_cache):
    from tilefuse.passes.tile import choose_kc

    problem = Problem(m=256, n=512, k=4096, dtype="f32", itemsize=4, symbolic={})
    host = machine("host")
    quarter, _ = choose_kc(problem, host, 6, 16)
    write_record(private_cache, {"f32": "6x16"})
    path = private_cache / C.CALIBRATION_FILE
    data = json.loads(path.read_text())
    smallest = C.KC_SHARES[-1]
    rates = {f"{share:g}": 100.0 + 10 * i for i, share in enumerate(C.KC_SHARES)}
    data[C.host_key()]["dtypes"]["f32"].update(kc_share=smallest, kc_gflops=rates)
    path.write_text(json.dumps(data))
    kc, why = choose_kc(problem, host, 6, 16)
    assert kc * 4 <= quarter and f"{smallest:g} of the" in why
    assert "calibrated on this host" in why
    assert choose_kc(problem, machine("generic"), 6, 16)[0] == 2048  # a preset: the model's
