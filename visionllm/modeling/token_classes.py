"""Token classes [ours; docs/design.md, "Token classes"]: each image token the tokenizer matched
to an object also learns, directly, which of the instruction's class names is its object's.

The tokenizer's own loss is class-agnostic (METHOD.md §3), so what an object is reaches its
token only through the LLM: the class slots and token naming. On the built-in shapes that left
the shape in the tokens for 0.71 of the objects (a linear probe; colour 0.92) and circles,
hexagons and squares named one for another (docs/results.md, "Where box AP is lost"), while
the specialist's head, a class loss on the same tokens, reaches 0.685 box AP. This loss puts
such a class loss on the tokens, kept open-vocabulary as in grounded detectors: a matched
token's embedding, through a linear map into the LLM's width, is scored against each class
name of the instruction (the mean of its words' LLM input embeddings, each at unit RMS) by
cosine times a learned scale, and the cross-entropy over the K names asks for its object's.
Training only: nothing at inference reads it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TokenClasses(nn.Module):
    def __init__(self, token_dim: int, name_dim: int, scale: float = 10.0, weight: float = 1.0):
        super().__init__()
        self.query = nn.Linear(token_dim, name_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.weight = float(weight)

    @classmethod
    def weighted(cls, weight: float, token_dim: int, name_dim: int) -> TokenClasses | None:
        """The loss at ``weight`` (``model.token_classes``), None at 0; a clear error for a
        weight that is not a finite number >= 0."""
        if not math.isfinite(float(weight)) or weight < 0:
            raise ValueError(f"model.token_classes is a loss weight, >= 0, not {weight}")
        return cls(token_dim, name_dim, weight=weight) if weight > 0 else None

    def forward(self, tokens: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
        """(n, d) token embeddings, (K, H) name embeddings -> (n, K) logits."""
        q = F.normalize(self.query(tokens).float(), dim=-1)
        k = F.normalize(names.float(), dim=-1)
        return self.log_scale.exp() * q @ k.T

    def loss(self, tokens: torch.Tensor, names: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of (n, d) matched tokens against their objects' ``labels`` (n,)
        among the (K, H) names."""
        return F.cross_entropy(self(tokens, names), labels, reduction="sum")

    def matched_loss(self, embeds: torch.Tensor, requests, targets, matched: dict, name_embeddings) -> torch.Tensor:
        """The weighted, summed loss of a batch: ``embeds`` (B, M, d) the image tokens, per row its
        ``requests`` and ``targets``, ``matched`` {row: (tokens, objects)} the tokenizer's matching,
        ``name_embeddings(class_lists, kmax)`` -> (b, Kmax, H). Over the structured rows that name
        two classes or more; an exact zero, every parameter taking part, where none does."""
        rows = [b for b in sorted(matched) if requests[b].structured and len(requests[b].classes) > 1
                and len(matched[b][0])]
        total = sum((p.sum() for p in self.parameters()), embeds.new_zeros(()).float()) * 0.0
        if not rows:
            return total
        names = name_embeddings([requests[b].classes for b in rows], max(len(requests[b].classes) for b in rows))
        for r, b in enumerate(rows):
            tokens, objects = (x.to(embeds.device) for x in matched[b])
            labels = targets[b]["labels"].to(embeds.device)[objects]
            total = total + self.loss(embeds[b, tokens], names[r, : len(requests[b].classes)], labels)
        return self.weight * total


__all__ = ["TokenClasses"]
