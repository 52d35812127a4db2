"""Losses (METHOD.md §3, §5).

- Tokenizer: Hungarian-matched, class-agnostic sigmoid focal loss (objectness) + L1 on the
  centre point, on every decoder layer.
- Answers: cross-entropy of each matched group's class slot (no-object, down-weighted, for the
  rest) and of its location slots. [ours] The location target is "two-hot": the continuous bin
  k* split between its two neighbouring bins, so neighbouring bins are not punished as hard as
  far ones (Distribution Focal Loss, Li et al. 2020); plus L1 (and GIoU for boxes) on the
  expected coordinates, which is also what the matcher ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from visionllm.box_ops import cxcywh_to_xyxy, generalized_box_iou
from visionllm.modeling.matcher import focal_cost, hungarian
from visionllm.vocab import LOC_HALF


def global_counts(counts: list[int], device) -> list[float]:
    """Per-process means of counts over all processes, in one all-reduce (DETR's normalizer
    under DDP): with them, the averaged gradient of N processes equals one process's gradient
    over the whole batch."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [float(n) for n in counts]
    t = torch.tensor([float(n) for n in counts], device=device)
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()


def tokenizer_loss(
    layer_logits: torch.Tensor,  # (D, B, M)
    layer_points: torch.Tensor,  # (D, B, M, 2)
    centers: list[torch.Tensor],  # B x (n_b, 2) object centres, canvas-normalized
    *,
    w_obj: float = 2.0,
    w_point: float = 5.0,
    num: float | None = None,
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Returns the losses and, per image, the last layer's (token, object) assignment.
    ``num`` normalizes (default: the objects here; under DDP the caller passes the global mean)."""
    D, B, _ = layer_logits.shape
    num = max(num if num is not None else sum(len(c) for c in centers), 1.0)
    obj = point = layer_logits.new_zeros(())
    empty = torch.zeros(0, dtype=torch.long, device=layer_logits.device)
    assignment = [(empty, empty)] * B
    for d in range(D):
        target = torch.zeros_like(layer_logits[d])
        for b in range(B):
            if len(centers[b]) == 0:
                continue
            cost = w_obj * focal_cost(layer_logits[d, b])[:, None] + w_point * torch.cdist(
                layer_points[d, b], centers[b], p=1
            )
            i, j = hungarian(cost)
            if d == D - 1:
                assignment[b] = (i, j)
            target[b, i] = 1.0
            point = point + F.l1_loss(layer_points[d, b, i], centers[b][j], reduction="sum")
        obj = obj + sigmoid_focal_loss(layer_logits[d], target, reduction="sum")
    return {"loss_tok_obj": w_obj * obj / num / D, "loss_tok_point": w_point * point / num / D}, assignment


def two_hot(target_bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continuous bins in [-512, 512] -> (lower index, upper index, weight of upper); indices 0..1024."""
    t = target_bins.clamp(-LOC_HALF, LOC_HALF) + LOC_HALF
    lo = t.floor().clamp(max=2 * LOC_HALF - 1)
    w_hi = t - lo
    return lo.long(), lo.long() + 1, w_hi


def location_ce(logits: torch.Tensor, target_offsets: torch.Tensor) -> torch.Tensor:
    """logits (n, C, 1025) over location tokens; target offsets (n, C) in [-1, 1] -> summed loss."""
    logp = logits.log_softmax(-1)
    lo, hi, w_hi = two_hot(target_offsets * LOC_HALF)
    nll = -(1 - w_hi) * logp.gather(-1, lo[..., None]).squeeze(-1) - w_hi * logp.gather(-1, hi[..., None]).squeeze(-1)
    return nll.sum()


def expected_offsets(loc_logits: torch.Tensor) -> torch.Tensor:
    """(..., 1025) logits -> (...) expected offset in [-1, 1]."""
    bins = torch.arange(-LOC_HALF, LOC_HALF + 1, device=loc_logits.device, dtype=loc_logits.dtype) / LOC_HALF
    return loc_logits.softmax(-1) @ bins


def read_offsets(loc_logits: torch.Tensor, window: int = 0) -> torch.Tensor:
    """(..., 1025) logits -> (...) offset in [-1, 1] that a location slot answers: the likeliest
    bin (window 0, METHOD.md §5), or the expected offset over the bins within ``window`` of it,
    their probabilities renormalized. The slots are trained on a two-hot target and on the
    expected offset (L1, GIoU), so the mass next to the likeliest bin says where between bins the
    answer lies; a window keeps a second mode (a polygon point unsure which corner it is) out of
    the mean."""
    if window < 0:
        raise ValueError(f"the location window is a number of bins, at least 0, not {window}")
    top = loc_logits.argmax(-1, keepdim=True)
    if window == 0:
        return (top[..., 0] - LOC_HALF).float() / LOC_HALF
    bins = torch.arange(2 * LOC_HALF + 1, device=loc_logits.device)
    near = (bins - top).abs() <= window
    p = loc_logits.float().masked_fill(~near, float("-inf")).softmax(-1)
    return (p @ (bins.float() - LOC_HALF)) / LOC_HALF


def answer_loss(
    cls_logits: torch.Tensor,  # (M, K+1): K instruction classes, then no-object
    loc_logits: torch.Tensor,  # (M, 2N, 1025)
    anchors: torch.Tensor,  # (M, 2) l_i, or (M, 2N) each slot's own point (a box prior's)
    labels: torch.Tensor,  # (n,) class index in 0..K-1
    coords: torch.Tensor,  # (n, 2N) canvas-normalized, interleaved x, y
    *,
    is_box: bool,
    assignment: tuple[torch.Tensor, torch.Tensor] | None = None,
    none_weight: float = 0.1,
    w_referent: float = 0.0,
    referring: bool = False,
    w_cls: float = 2.0,
    w_ce: float = 1.0,
    w_l1: float = 5.0,
    w_giou: float = 2.0,
    free_start: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """One image's answer loss, summed over objects (the caller normalizes by the object count).

    ``assignment`` (group, object) pairs, when given, replace the Hungarian matching of groups.

    ``w_referent`` > 0, for an answer of one object under one class (a referring expression):
    the groups' log-odds of that class, as a distribution over the groups, are taught
    to peak at its group (``loss_referent``), since the answer is the top group. The class
    cross-entropy teaches each group alone, where a look-alike's group is one no-object group
    of many at ``none_weight``; this loss weighs the groups by how much they compete.
    ``referring``: the answer's classes are referring expressions, one object each (a grounding
    sample of several expressions, ``task.grounding.expressions``): the loss for each of them.
    ``free_start`` (polygons): each target ring is learned from whichever of its own points, in
    its own direction, brings it closest to the group's answer (``nearest_start``), not from its
    top-most point alone (docs/design.md, "Where a polygon starts").
    """
    M, K1 = cls_logits.shape
    n_coord = loc_logits.shape[1]
    base = anchors if anchors.shape[-1] == n_coord else anchors.repeat(1, n_coord // 2)  # (M, 2N)
    pred = base + expected_offsets(loc_logits)
    free_start = free_start and not is_box  # a box's two corners are not a ring
    cls_logp = cls_logits.log_softmax(-1)
    weights = torch.full((K1,), 1.0, device=cls_logits.device)
    weights[-1] = none_weight
    target = torch.full((M,), K1 - 1, dtype=torch.long, device=cls_logits.device)
    out = {}
    if len(labels):
        if assignment is not None:
            i, j = assignment
        else:
            cost = -w_cls * cls_logp[:, labels].exp() + w_l1 * _point_l1(pred, coords, free_start)
            if is_box:
                cost = cost - w_giou * generalized_box_iou(_safe_box(pred), coords)
            i, j = hungarian(cost)
        target[i] = labels[j]
        goal = nearest_start(pred[i].detach(), coords[j]) if free_start else coords[j]
        offsets = goal - base[i]
        per_coord = 4 / n_coord  # an N-point polygon weighs like a box: losses per 4 coordinates
        out["loss_loc_ce"] = w_ce * per_coord * location_ce(loc_logits[i], offsets)
        out["loss_loc_l1"] = w_l1 * per_coord * F.l1_loss(pred[i], goal, reduction="sum")
        if is_box:
            giou = generalized_box_iou(_safe_box(pred[i]), goal).diagonal()
            out["loss_loc_giou"] = w_giou * (1 - giou).sum()
        if w_referent > 0 and (referring or (K1 == 2 and len(labels) == 1)):
            if len(set(labels.tolist())) < len(labels):
                raise ValueError(f"a referring answer has one object per expression; got classes {labels.tolist()}")
            # log-odds against no object: the order of the answer's scores, and unlike the
            # log-probability not flat for a look-alike that is already sure
            odds = cls_logp[:, labels[j]] - cls_logp[:, -1:]  # (M, n): each object's class
            out["loss_referent"] = -w_referent * odds.log_softmax(0).gather(0, i[None]).sum()
    # Class CE summed, scaled so the no-object groups weigh like DETR's eos_coef.
    ce = F.nll_loss(cls_logp, target, weight=weights, reduction="sum") / weights[target].sum().clamp(min=1)
    out["loss_cls"] = w_cls * ce * max(len(labels), 1)
    return out, len(labels)


def polygon_starts(coords: torch.Tensor) -> torch.Tensor:
    """(n, 2N) rings, interleaved x, y -> (n, N, 2N): each ring started at each of its N points
    in turn (start s: points s, s + 1, ..., s - 1), the same points in the same direction."""
    n, c = coords.shape
    k = c // 2
    order = (torch.arange(k, device=coords.device)[:, None] + torch.arange(k, device=coords.device)) % k
    return coords.view(n, k, 2)[:, order].reshape(n, k, c)


def nearest_start(pred: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(n, 2N) answers and (n, 2N) their target rings -> each ring started at the point that
    brings it closest (L1) to its answer."""
    starts = polygon_starts(coords)  # (n, N, 2N)
    best = (starts - pred[:, None]).abs().sum(-1).argmin(-1)  # (n,)
    return starts[torch.arange(len(coords), device=coords.device), best]


def _point_l1(pred: torch.Tensor, coords: torch.Tensor, free_start: bool) -> torch.Tensor:
    """(M, n) L1 between M answers and n targets, (M, 2N) and (n, 2N); with ``free_start`` the
    least over each target ring's starts."""
    if not free_start:
        return torch.cdist(pred, coords, p=1)
    n, c = coords.shape
    every = torch.cdist(pred, polygon_starts(coords).reshape(n * (c // 2), c), p=1)
    return every.view(len(pred), n, c // 2).amin(-1)


def _safe_box(b: torch.Tensor) -> torch.Tensor:
    """x1y1x2y2 that may be inverted while untrained -> a valid box for GIoU."""
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)], -1)


def centers_of(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    return (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2


__all__ = ["answer_loss", "centers_of", "cxcywh_to_xyxy", "expected_offsets", "nearest_start", "polygon_starts",
           "tokenizer_loss"]
