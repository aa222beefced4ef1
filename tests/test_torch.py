"""PyTorch interop: nn.Sequential models through `from_torch`, compiled, against torch."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse as tfu

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
nn = torch.nn


def torch_answer(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


MODULES = {
    "mlp-relu": lambda: nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)),
    "mlp-gelu-softmax": lambda: nn.Sequential(
        nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5), nn.Softmax(dim=-1)
    ),
    "activations": lambda: nn.Sequential(
        nn.Linear(12, 8),
        nn.Sigmoid(),
        nn.Linear(8, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.LeakyReLU(0.1),
        nn.Linear(8, 4, bias=False),
        nn.LogSoftmax(dim=1),
    ),  # fmt: skip
    "layer-norm-dropout": lambda: nn.Sequential(
        nn.Linear(12, 8), nn.GELU(approximate="tanh"), nn.Dropout(0.5), nn.LayerNorm(8)
    ),
    "flatten": lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
}


@pytest.mark.parametrize("name", MODULES)
def test_from_torch_matches_torch_at_every_batch(name):
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    shape = (3, 4) if name == "flatten" else (12,)
    g = tfu.from_torch(module, torch.randn(2, *shape))
    assert g.input_types()[0].shape[0] == "N"
    model = tfu.compile(g, target="cpu")
    for batch in (1, 6):
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        np.testing.assert_allclose(model(x), torch_answer(module, x), rtol=1e-4, atol=1e-5)


def test_linear_gelu_becomes_one_dense_kernel_per_layer():
    module = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5)).eval()
    g = tfu.from_torch(module, torch.randn(1, 12), opset=17)  # GELU is written with erf
    assert "erf" in [n.op for n in g.ops()]
    fused = tfu.assert_fused(g, kernels=2)
    assert "dense[act=gelu]" in str(fused)


def test_float64_modules_import_as_f64():
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).double().eval()
    g = tfu.from_torch(module, torch.randn(2, 4, dtype=torch.float64))
    assert g.dtype == "f64"
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_allclose(tfu.reference.run(g, x), torch_answer(module, x), rtol=1e-12)
