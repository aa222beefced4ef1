"""The seed examples give the numbers of the material they come from, and every example runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import tilefuse as tfu
from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def load_example(name: str):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_seed_layer_gives_z_and_a():
    seed = load_example("seed_layer")
    values = seed.values_by_op(seed.X)
    np.testing.assert_allclose(values["add"], [[2.9, 2.8]], rtol=1e-15)
    np.testing.assert_allclose(values["sigmoid"], sigmoid(np.array([[2.9, 2.8]])), rtol=1e-15)
    np.testing.assert_allclose(seed.net(seed.X), [[0.947846437, 0.942675824]], rtol=1e-9)
    np.testing.assert_allclose(seed.per_neuron(seed.X), seed.net(seed.X), rtol=1e-15)


def test_seed_layer_graph_is_matmul_add_sigmoid():
    g = load_example("seed_layer").net.graph()
    assert [n.op for n in g.ops()] == ["matmul", "add", "sigmoid"]
    assert g.input_types() == [tfu.TensorType("f64", ("N", 2))]


@pytest.mark.parametrize("m", [1, 5, 33])
def test_two_layer_loop_equals_vectorized_in_both_conventions(m):
    results = load_example("two_layer").compare(m=m, seed=m)
    reference = results.pop("numpy, per example")
    assert reference.shape == (1, m)
    for what, value in results.items():
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-14, err_msg=what)


def test_two_layer_conventions_are_transposes():
    two = load_example("two_layer")
    rows, cols = two.two_layer_rows.graph(), two.two_layer_columns.graph()
    assert [n.op for n in rows.ops()] == [n.op for n in cols.ops()]
    assert rows.input_types()[0].shape == ("N", 3) and cols.input_types()[0].shape == (3, "N")
    assert rows.output_types()[0].shape == ("N", 1) and cols.output_types()[0].shape == (1, "N")


def test_mlp_is_784_512_512_10():
    g = load_example("mlp").net.graph()
    matmuls = [n for n in g.ops() if n.op == "matmul"]
    assert [g[n.inputs[1]].type.shape for n in matmuls] == [(784, 512), (512, 512), (512, 10)]
    assert [n.op for n in g.ops()].count("relu") == 2
    assert g.output_types() == [tfu.TensorType("f32", ("N", 10))]


def test_mlp_per_example_loop_matches_the_graph():
    mlp = load_example("mlp")
    x = np.random.default_rng(3).standard_normal((7, 784)).astype(np.float32)
    np.testing.assert_allclose(mlp.net(x), mlp.per_example(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path):
    result = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "graph " in result.stdout


def test_every_example_is_listed_in_the_examples_readme():
    readme = (ROOT / "examples" / "README.md").read_text()
    missing = [p.name for p in EXAMPLES if p.name not in readme]
    assert not missing, f"examples/README.md does not mention {missing}"


def test_readme_example_prints_what_the_readme_shows(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A first network", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = section.split("```text\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == shown


def test_encoder_example_matches_numpy_and_fuses():
    """The DSL encoder: against the example's own NumPy network; each projection a dense over
    all tokens (x [N, 16, 64] @ W), the residual in the output projection's epilogue, and
    attention one op per layer."""
    example = load_example("encoder")
    model = tfu.compile(example.encoder, target="cpu")
    x = np.random.default_rng(2).standard_normal((2, example.T, example.D)).astype(np.float32)
    np.testing.assert_allclose(model(x), example.numpy_encoder(x), rtol=1e-4, atol=1e-4)
    fused = model.ir("fused")
    assert fused.count("= attention[") == example.LAYERS
    assert fused.count("dense[post=(add)]") == 2 * example.LAYERS
    assert "batch_matmul" not in fused and "softmax" not in fused
