"""Text readout [ours, docs/design.md "Text readout"]: a direct path from a text answer's
position to the image tokens, for an LLM that has not learnt to look an object up by itself.

Each position of a caption or an answer scores every image token against what it asks for
(its own LLM state plus the mean word embedding of the question, both RMS-normalized, as the
class slot's pointer does) and adds a gated sum of the tokens to its state before the head.
What it reads of token i is the token v_i plus what the pixels under it look like (the finest
backbone level sampled at l_i, projected), both RMS-normalized: the deformable layers, trained
by boxes and classes, keep an object's shape in its token and drop most of its colour
(docs/design.md, "Where colour is lost"), and a question may ask for either.

    g_ti = sigmoid(q_t . k_i / sqrt(d) + b)      r_t = sum_i g_ti * val_i      h'_t = h_t + W_o r_t

The gate is a sigmoid, not a softmax over tokens, so the sum grows with the number of tokens
that match ("how many yellow ellipses") and is zero where none does ("is there a star").
``W_o`` starts at zero: a model with the readout starts as one without it, and an earlier
run's weights load into it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each vector to unit root mean square (norm sqrt(H)), as an RMSNorm without a gain."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class TextReadout(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int = 4, gate_bias: float = -2.0, pixel_dim: int | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"text readout: hidden size {hidden_size} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.o.weight)
        self.pixels = nn.Linear(pixel_dim, hidden_size) if pixel_dim else None
        self.gate_bias = nn.Parameter(torch.full((num_heads,), gate_bias))

    def source(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, H) what is read of each token: v_i, plus its pixels where there are some."""
        src = rms(tokens.float())
        if self.pixels is not None and pixels is not None:
            src = src + rms(self.pixels(pixels.float()))
        return src

    def gates(self, hidden: torch.Tensor, question: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, M) gates of ``hidden`` (B, T, H) over the tokens ``src`` (B, M, H, from
        ``source``), given the question's mean word embedding: (B, H), or (B, T, H) where
        positions answer different questions (the turns of a conversation)."""
        B, T, H = hidden.shape
        nh, dh = self.num_heads, H // self.num_heads
        if question.dim() == 2:
            question = question[:, None]
        q = self.q(rms(hidden.float()) + rms(question.float())).view(B, T, nh, dh).transpose(1, 2)
        k = self.k(src).view(B, -1, nh, dh).transpose(1, 2)
        return torch.sigmoid(q @ k.transpose(-1, -2) / dh**0.5 + self.gate_bias[:, None, None])

    def forward(self, hidden: torch.Tensor, question: torch.Tensor, tokens: torch.Tensor,
                pixels: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden`` (B, T, H) with the gated image tokens (B, M, H) added; ``pixels`` (B, M, C)."""
        B, T, H = hidden.shape
        nh, dh = self.num_heads, H // self.num_heads
        src = self.source(tokens, pixels)
        val = self.v(src).view(B, -1, nh, dh).transpose(1, 2)  # (B, nh, M, dh)
        r = (self.gates(hidden, question, src) @ val).transpose(1, 2).reshape(B, T, H)
        return hidden + self.o(r).to(hidden.dtype)
