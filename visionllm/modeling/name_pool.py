"""Which words of a class name the class slot looks for [ours; docs/design.md, "Class slots"].

A class slot is scored against the LLM's state at its ``<ck>`` plus one vector for the name's
words. The plain vector is their mean input embedding, which weighs every word alike: for "the
star left of the square" the square counts as much as the star, and on the built-in shapes 62 %
of the wrong answers to such relations were the square (docs/results.md, "Run 18"). ``NamePool``
weighs the words instead, each by a score read off the word and the two before it (a causal
convolution over the input embeddings, each at unit RMS), so "square" after "left of the" can
learn to count for little and "star" at the head for much, and "the leftmost blue circle" can
keep its last word. The score's last layer starts at zero, so an untrained pool is exactly the
mean.
"""

from __future__ import annotations

import torch
from torch import nn

from visionllm.modeling.readout import rms


class NamePool(nn.Module):
    def __init__(self, hidden: int, width: int = 64, context: int = 3):
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(hidden, width, context)
        self.score = nn.Linear(width, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def weights(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(U, T, H) input embeddings, (U, T) 1 on a word, 0 on padding -> (U, T) weights that sum
        to 1 over each text's words (0 on padding)."""
        # the words at unit RMS: input embeddings start near 0.02, where every word's score
        # would be the conv's bias alone and the pool could not tell words apart to learn
        x = (rms(emb) * mask[..., None]).transpose(1, 2)  # padding reads as nothing
        x = nn.functional.pad(x, (self.context - 1, 0))  # a word sees itself and the words before it
        s = self.score(nn.functional.gelu(self.conv(x)).transpose(1, 2)).squeeze(-1)  # (U, T)
        s = s.masked_fill(mask <= 0, float("-inf"))
        w = torch.softmax(s, dim=1)
        return torch.nan_to_num(w, nan=0.0)  # a text of no words (all padding) weighs nothing

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> (U, H) the weighted sum of each text's word embeddings."""
        return (self.weights(emb, mask)[..., None] * emb).sum(1)
