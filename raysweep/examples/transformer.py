"""A decoder-only transformer on a synthetic language made on the fly: the model and data factories of
``search_spaces/custom_transformer.yaml``.

``build``: token and position embeddings of width ``d = width``, ``depth - 1`` pre-LayerNorm blocks (causal
self-attention with ``heads`` heads of ``d_head = d / heads``, and an MLP ``d -> 4d -> d`` with GELU), a final
LayerNorm and a linear readout ``head`` (``d -> vocab``) divided by ``gamma``. Attention logits are scaled by
``1 / sqrt(d_head)`` under SP and by ``1 / d_head`` under muP (Tensor Programs V, section 5: with a fixed number of
heads, query-key products of correlated vectors grow like ``d_head``). PyTorch's default initialisation, except
that under muP the readout starts at zero (TP5's advice, followed by the mup package's examples: it removes the
initial output's ``1 / sqrt(N)`` term from the readout's change at finite width); ``zero_query: true`` zeroes the
query weights too.

``markov_language``: sequences of a random first-order Markov chain over ``vocab`` tokens (each row of the
transition matrix a softmax of ``N(0, temperature^-2)`` logits, drawn from ``seed``), ``x`` the first
``context`` tokens and ``y`` the next token at every position (next-token prediction, int64 ``[n, context]``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int, scale: float):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        mask = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
        att = logits.masked_fill(mask, float("-inf")).softmax(-1)
        h = h + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return h + self.out(F.gelu(self.fc(self.ln2(h))))


class Transformer(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, blocks: int, heads: int, n_out: int, gamma: float,
                 parametrization: str, zero_query: bool = False):
        super().__init__()
        d_head = d // heads
        scale = 1.0 / d_head if parametrization == "muP" else 1.0 / math.sqrt(d_head)
        self.embed, self.position = nn.Embedding(vocab, d), nn.Parameter(torch.randn(context, d))
        self.blocks = nn.Sequential(*(Block(d, heads, scale) for _ in range(blocks)))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)
        self.gamma = gamma
        if parametrization == "muP":  # TP5's advice for transformers: a zero readout (and, optionally, queries)
            with torch.no_grad():
                self.head.weight.zero_()
                for block in (self.blocks if zero_query else ()):
                    block.qkv.weight[:d].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[: x.shape[-1]]
        return self.head(self.ln(self.blocks(h))) / self.gamma


def build(*, width: int, depth: int, gamma: float, parametrization: str, input_shape, n_out: int, heads: int = 2,
          vocab: int | None = None, zero_query: bool = False) -> nn.Module:
    """The model factory (``experiment.model.factory: raysweep.examples.transformer:build``): ``depth - 1`` blocks
    of width ``width`` (a multiple of ``heads``); the vocabulary is ``n_out`` unless given."""
    if width % heads:
        raise ValueError(f"width {width} must be a multiple of heads {heads}")
    return Transformer(vocab or n_out, int(input_shape[0]), width, max(1, depth - 1), heads, n_out, gamma,
                       parametrization, zero_query)


def markov_language(*, seed: int, vocab: int = 16, context: int = 16, n_train: int = 2048, n_test: int = 512,
                    temperature: float = 0.5) -> dict:
    """The data factory (``experiment.factory: raysweep.examples.transformer:markov_language``); module doc."""
    gen = torch.Generator().manual_seed(int(seed))
    transition = (torch.randn(vocab, vocab, generator=gen, dtype=torch.float64) / temperature).softmax(-1)
    n = n_train + n_test
    seq = torch.empty(n, context + 1, dtype=torch.int64)
    seq[:, 0] = torch.randint(vocab, (n,), generator=gen)
    for t in range(context):
        seq[:, t + 1] = torch.multinomial(transition[seq[:, t]], 1, generator=gen).squeeze(1)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:],
            "n_out": vocab, "dataset": f"markov(V={vocab},T={context})"}
