"""Where a name says its object lies [ours; docs/design.md, "Class slots"].

A class slot's logit says how well a group's object fits a name, read from the LLM's state.
"The leftmost circle", "the largest star" and "the star left of the square" also say where the
object is among the others that fit: the comparison that run 22's wrong answers lost (75 % of
the wrong extremes and 67 % of the wrong superlatives were another object the head noun fits,
docs/results.md). ``NameLocation`` adds to the logit of each name, for each group, a score of the
group's own box: a linear map of the name's words (the mean of their input embeddings, each at
unit RMS) gives a weight for each of eight box features (centre, corners, log width and height),
in the manner of MAttNet's location module (Yu et al. 2018, a 5-d box vector scored against
the expression). A bag of words is enough here: "leftmost", "left of", "furthest to the left"
all ask for a small x; "largest" for a large log area; and a relation's referent is, on the
built-in scenes, the one object of its kind on that side of the anchor, so the furthest that way.
Among the groups whose name score is high, the box term then ranks the one the words point to.

The box is the group's own expected answer (the location slots' expected offsets from its
image token), and the words are read as they are: both detached, so the term reads the boxes
and the names and moves neither. The map starts at zero, so a model without it and one with it
untrained answer alike, and a checkpoint saved without it loads with it (``trainer.init_from``).

With ``relative`` (``model.name_location_relative``) the features are instead each group's
place among the others that fit the name: per feature, the mean over the other groups j,
weighted by how well each fits (sigmoid of its class-slot logit against "none", detached), of
tanh((f_j - f_i) / T). The leftmost of three circles has +1 on the x features whatever the
circles' x, the middle one 0, the rightmost -1; the absolute features can tell the leftmost of
two circles at 0.30 and 0.35 of the canvas only with a weight large enough for the gap
(docs/design.md, "Class slots").

Its inputs are kept near unit size (the words' mean at norm at most 1, the features within a
few units) and it learns at ``lr_mult`` times the rate: its gradient then stays small beside the
rest of the model's, where the global gradient clip would otherwise shrink every other update
(docs/results.md, "Run 23"), while its weights still move as far as the pilots needed.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_FEATURES = 8
RELATIVE_SCALE = 0.05  # T: centres 2.5 % of the canvas apart are tanh(1) apart, 5 % tanh(2) = 0.96


def box_features(points: torch.Tensor) -> torch.Tensor:
    """(..., N, 2) canvas-normalized points (a box's two corners or a polygon) -> (..., 8): the
    centre and the two corners of their bounding box, each at 2 (c - 0.5), in [-1, 1] on the
    canvas, then half the log of the width and of the height (each at least 1 % of the canvas)."""
    lo, hi = points.amin(-2), points.amax(-2)
    centre = (lo + hi) / 2
    size = (hi - lo).clamp(min=0.01)
    return torch.cat([2 * (centre - 0.5), 2 * (lo - 0.5), 2 * (hi - 0.5), size.log() / 2], -1)


def relative_features(feats: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """(b, M, F) features of M groups, (b, M, K) their fit to K names (logits against "none") ->
    (b, M, K, F): for group i and name k, sum_{j != i} w_jk tanh((f_j - f_i) / T) / sum_{j != i}
    w_jk, w = sigmoid(fit): +1 where every other group that fits the name lies above it on
    that feature, -1 where every one lies below."""
    w = torch.sigmoid(fit)  # (b, M, K)
    ahead = torch.tanh((feats[:, None, :, :] - feats[:, :, None, :]) / RELATIVE_SCALE)  # (b, i, j, F): f_j - f_i
    total = torch.einsum("bjk,bijf->bikf", w, ahead)  # j = i adds tanh(0) = 0
    others = (w.sum(1, keepdim=True) - w).clamp_min(1e-6)  # (b, M, K)
    return total / others[..., None]


class NameLocation(nn.Module):
    # optim.param_groups: this module learns at 100 times the rate (and decays at 1/100 of the
    # weight decay, so their product stays): Adam moves a weight by about its rate a step, and
    # at the model's rate, 500 steps from zero took the weight of "leftmost" on the box's x to a
    # tenth of a logit between two circles 0.1 apart (docs/results.md, "Where a name points")
    lr_mult = 100.0

    def __init__(self, hidden: int, start: float = 0.0, relative: bool = False):
        """``start``: the fraction of the run before which the map stays at zero (its rate is 0,
        ``optim.build_optimizer``), so that it learns on trained boxes and names only;
        ``relative``: the features are each group's place among the groups that fit the name."""
        super().__init__()
        if not 0.0 <= start < 1.0:
            raise ValueError(f"model.name_location_from must be a fraction of the run in [0, 1), not {start!r}")
        self.lr_from = float(start)
        self.relative = bool(relative)
        self.proj = nn.Linear(hidden, NUM_FEATURES, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, words: torch.Tensor, points: torch.Tensor, fit: torch.Tensor | None = None) -> torch.Tensor:
        """``words`` (b, K, H) each name's mean word embedding, its words at unit RMS; ``points``
        (b, M, N, 2) each group's answer; ``fit`` (b, M, K) how well each group fits each name,
        as a logit against "none" (needed with ``relative``) -> (b, M, K) the box term of each
        group's logit for each name."""
        weights = self.proj(words.detach() * words.shape[-1] ** -0.5)  # (b, K, F), words at norm <= 1
        feats = box_features(points.detach().to(weights.dtype))  # (b, M, F)
        if not self.relative:
            return torch.einsum("bmf,bkf->bmk", feats, weights)
        if fit is None:
            raise ValueError("name_location, relative: the place among the groups that fit a name needs their fit")
        return torch.einsum("bmkf,bkf->bmk", relative_features(feats, fit.detach().to(weights.dtype)), weights)
