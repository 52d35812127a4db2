"""What the image tokens are called, in a class slot [ours; docs/design.md, "Class slots"].

Token naming teaches the LLM's head to say, at each image token matched to an object, that
object's name ("red circle"), and on the built-in shapes it says the colour right for 94 % of
the tokens (docs/results.md, run 11). The class slot does not read that: it scores a group by
its own state against the name's words, learned through the LLM, and run 31's wrong answers to
the plainest expressions ("the purple square": a purple triangle; "the ellipse": a circle) were
other objects in 17 % of them.

``NameFit`` adds to each name's logit, for each group, how well what the head says at the
group's image token fits the name's words: the mean, over the name's words that token naming
teaches (colours and shapes, plurals as their singular; "the", "leftmost", "above" are none of
them), of the head's log-probability of the word at that token, each word weighed as the class
slot's name pool weighs it where the model has one (so "the star left of the square" can look
for the star). The head's words are read as they are (detached): the term reads the names and
moves neither them nor the pool. A learned gain, zero at the start, scales it: a model without
it and one with it untrained answer alike, and a checkpoint saved without it loads with it.

With ``held`` (``model.name_fit_gain``) the gain is that number from the start and never learns:
on two seeds the learned gain settled near 1.1, where grounding on the trained weights rose
with the gain up to 3 and box AP did not move from 1.1 to 3 (docs/results.md, "Run 34"); held
at 3 over 300 steps from such weights, the model took back most of that (docs/results.md, "A
held gain: pilot"). The held value is the model's setting, not a weight: ``trainer.init_from``
a checkpoint with a learned gain keeps the held one.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class NameFit(nn.Module):
    # optim.param_groups: one scalar, at 20 times the rate (Adam moves it by about its rate a
    # step: 0.01 at the model's 5e-4, so a gain of a few units within a few hundred steps)
    lr_mult = 20.0

    def __init__(self, held: float | None = None):
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(()), requires_grad=held is None)
        if held is not None:
            held = float(held)
            if not math.isfinite(held) or held < 0:
                raise ValueError(f"model.name_fit_gain must be a finite gain >= 0 (or null: learned), not {held!r}")
        self.register_buffer("held", None if held is None else torch.tensor(held), persistent=False)

    def forward(self, named_logp: torch.Tensor, words: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``named_logp`` (b, M, V) the head's log-probabilities at each group's image token;
        ``words`` (b, K, T) each name's word ids (any id where ``weights`` is 0), ``weights``
        (b, K, T) each word's share of its name (summing to 1 over the name's named words, all 0
        for a name with none) -> (b, M, K) the term of each group's logit for each name."""
        b, K, T = words.shape
        said = named_logp.detach().float().gather(2, words.reshape(b, 1, K * T).expand(-1, named_logp.shape[1], -1))
        fit = (said.view(b, -1, K, T) * weights[:, None].float()).sum(-1)  # (b, M, K)
        return (self.gain if self.held is None else self.held) * fit
