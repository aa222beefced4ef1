"""Writes the transformer exports tests/test_onnx_transformers.py imports: PyTorch's own
`nn.TransformerEncoder` (also with a boolean padding mask) and a hand-written pre-norm block,
exported the usual way (`torch.onnx.export`, TorchScript exporter, opset 17, the batch
dynamic), small enough to keep in the repository (d_model 32, 4 heads). Needs torch
(`pip install torch==2.13.0`):

    python tests/models/make_torch_exports.py
"""

from __future__ import annotations

import math
import pathlib

import torch
from torch import nn

HERE = pathlib.Path(__file__).parent
D, HEADS, FFN, T = 32, 4, 64, 8


class Encoder(nn.Module):
    """Two nn.TransformerEncoderLayer(d, heads, ffn, activation="gelu", batch_first=True)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, HEADS, FFN, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)


class PreNormBlock(nn.Module):
    """LayerNorm, one QKV Linear, split, heads by reshape/transpose, softmax(q kᵀ/√d) v,
    a GELU FFN, residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.f1, self.f2 = nn.Linear(D, FFN), nn.Linear(FFN, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, HEADS, d // HEADS).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // HEADS), dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.f2(nn.functional.gelu(self.f1(self.ln2(x))))


class TokenEncoder(nn.Module):
    """BERT-style: int64 token ids -> token and position embeddings, LayerNorm, then two
    encoder layers."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.tok, self.pos, self.ln = nn.Embedding(vocab, D), nn.Embedding(T, D), nn.LayerNorm(D)
        layer = nn.TransformerEncoderLayer(D, HEADS, FFN, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.enc(self.ln(self.tok(ids) + self.pos(positions)[None]))


class MaskedBlock(PreNormBlock):
    """PreNormBlock with an additive attention mask [N, 1, 1, T] on the scores."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, HEADS, d // HEADS).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // HEADS) + mask
        a = torch.softmax(scores, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.f2(nn.functional.gelu(self.f1(self.ln2(x))))


class MaskedTokenEncoder(nn.Module):
    """BERT as Hugging Face exports it: int64 token ids and an int64 attention_mask (1: a
    token, 0: padding), the extended mask (1 - mask[:, None, None, :]) * -10000 built at run
    time, embeddings, LayerNorm, two masked blocks."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.tok, self.pos, self.ln = nn.Embedding(vocab, D), nn.Embedding(T, D), nn.LayerNorm(D)
        self.blocks = nn.ModuleList([MaskedBlock(), MaskedBlock()])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        extended = (1.0 - mask[:, None, None, :].to(torch.float32)) * -10000.0
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.ln(self.tok(ids) + self.pos(positions)[None])
        for block in self.blocks:
            h = block(h, extended)
        return h


class PaddedEncoder(nn.Module):
    """Encoder with a boolean `src_key_padding_mask` (True: padding): PyTorch builds the
    additive mask with Where(mask, -inf, 0) at run time."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, HEADS, FFN, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.enc(x, src_key_padding_mask=pad)


def perturbed(module: nn.Module) -> nn.Module:
    """The module in eval mode, no parameter left at its init (LayerNorm's ones and zeros)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def export_as(module: nn.Module, name: str, inputs: dict[str, torch.Tensor],
              dynamic: dict[int, str]) -> None:  # fmt: skip
    """`torch.onnx.export` the usual way (TorchScript exporter, opset 17) to tests/models,
    output `y`, the axes `dynamic` of every input and of the output dynamic."""
    axes = {name: dynamic for name in [*inputs, "y"]}
    torch.onnx.export(
        module, tuple(inputs.values()), HERE / f"{name}.onnx", opset_version=17,
        input_names=list(inputs), output_names=["y"], dynamic_axes=axes, dynamo=False,
    )  # fmt: skip


def export(module: nn.Module, name: str, example: torch.Tensor) -> None:
    export_as(perturbed(module), name, {"x": example}, {0: "batch"})


def export_dynamic_sequence(module: nn.Module, name: str, example: torch.Tensor) -> None:
    """The batch and the sequence length both dynamic."""
    export_as(perturbed(module), name, {"x": example}, {0: "batch", 1: "seq"})


def export_with_mask(module: nn.Module, name: str) -> None:
    """Inputs `ids` and `mask` (both int64 [batch, T]), the batch dynamic."""
    module = perturbed(module)
    ids, mask = torch.randint(0, 50, (2, T)), torch.ones(2, T, dtype=torch.int64)
    export_as(module, name, {"ids": ids, "mask": mask}, {0: "batch"})


def export_with_padding(module: nn.Module, name: str) -> None:
    """Inputs `x` (float32 [batch, T, D]) and `pad` (bool [batch, T]), the batch dynamic."""
    module = perturbed(module)
    x, pad = torch.randn(2, T, D), torch.zeros(2, T, dtype=torch.bool)
    pad[1, 5:] = True
    export_as(module, name, {"x": x, "pad": pad}, {0: "batch"})


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(2, T, D)
    export(Encoder(), "torch_encoder", x)
    torch.manual_seed(1)
    export(PreNormBlock(), "torch_prenorm_block", x)
    torch.manual_seed(2)
    export(TokenEncoder(), "torch_token_encoder", torch.randint(0, 50, (2, T)))
    torch.manual_seed(3)
    export_dynamic_sequence(PreNormBlock(), "torch_prenorm_block_dynamic_seq", x)
    torch.manual_seed(4)
    export_dynamic_sequence(Encoder(), "torch_encoder_dynamic_seq", x)
    torch.manual_seed(5)
    export_with_mask(MaskedTokenEncoder(), "torch_masked_token_encoder")
    torch.manual_seed(6)
    export_with_padding(PaddedEncoder(), "torch_padded_encoder")
