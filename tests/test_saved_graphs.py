"""Graph.save / tfu.load_graph: the IR text with its constants beside it, read back into an
equal graph, for every example network, at every stage; the CLI takes the saved file."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tfu
from conftest import ROOT
from tilefuse import cli
from tilefuse.passes import run_stages

# every example that defines a network (demo.py runs the others), mnist_onnx's through ONNX
EXAMPLES = [p for p in sorted((ROOT / "examples").glob("*.py")) if p.stem != "demo"]


@pytest.mark.parametrize("path", [pytest.param(str(p), id=p.stem) for p in EXAMPLES])
def test_every_example_round_trips_at_every_stage(path, tmp_path):
    net = cli.load_network(path)
    graph = net if isinstance(net, tfu.Graph) else net.graph()
    for stage, g in run_stages(graph, "canonicalize,fuse,tile,plan_memory").items():
        text_path, data_path = g.save(tmp_path / f"{stage}.tf")
        assert text_path.exists() and data_path == tmp_path / f"{stage}.npz"
        back = tfu.load_graph(text_path)
        assert back == g, stage  # same text, same constants' data
        assert str(back) == str(g)


def test_a_saved_graph_compiles_and_runs_like_the_original(tmp_path, capsys):
    net = tfu.Sequential([tfu.Dense(16, "relu"), tfu.Dense(4)], input_dim=20, seed=5)
    path = tmp_path / "small.tf"
    net.graph().save(path)
    x = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    model = tfu.compile(tfu.load_graph(path))
    np.testing.assert_allclose(model(x), net(x), rtol=1e-5, atol=1e-5)
    assert cli.main(["show", str(path), "--emit", "fused"]) == 0
    assert "dense[act=relu" in capsys.readouterr().out


def test_missing_or_foreign_data_is_a_clear_error(tmp_path):
    net = tfu.Sequential([tfu.Dense(300)], input_dim=20, seed=1)  # too big to print inline
    text_path, data_path = net.graph().save(tmp_path / "big.tf")
    data_path.unlink()
    with pytest.raises(tfu.ParseError, match="has no inline value"):
        tfu.load_graph(text_path)
    data_path.write_bytes(b"not an npz")
    with pytest.raises(tfu.TilefuseError, match="not the constants of a saved graph"):
        tfu.load_graph(text_path)
    other = tfu.Sequential([tfu.Dense(300)], input_dim=20, seed=2)
    other.graph().save(tmp_path / "other.tf")
    data_path.write_bytes((tmp_path / "other.npz").read_bytes())
    with pytest.raises(tfu.ParseError, match="does not match its sha"):
        tfu.load_graph(text_path)
    with pytest.raises(tfu.TilefuseError, match="NAME.tf"):
        net.graph().save(tmp_path / "x.npz")
