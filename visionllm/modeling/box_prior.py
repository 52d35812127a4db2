"""A box per image token, and answers as offsets from it [ours, docs/design.md "Box prior"].

METHOD.md §5 reads each coordinate slot as an offset from the token's centre l_i, so a group has
to learn an object's extent from nothing: its corners sit far from l_i, and the LLM's box and
polygon answers learn slowly (an ``experiment=shapes`` second stage reaches box AP 0.39 after
1,000 of its 3,000 steps, when the first stage's specialist head already boxes the same tokens
at 0.70). With a box prior each token also regresses a box, as Deformable DETR's head does (the
specialist's ``box_head``: an offset of the centre in logit space, then the size), and each
slot's offset is measured from that box's own point for the slot: its corners for a box, for an
N-point polygon N points on the ellipse inside it, clockwise from the top as the polygon
targets run (``tasks/polygons.py``). The head takes the first stage's weights where the
generalist starts from the specialist, and goes on learning from the objects the tokenizer
matches each token to (L1 and GIoU, the specialist's losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from visionllm.box_ops import cxcywh_to_xyxy, generalized_box_iou
from visionllm.modeling.deformable import MLP, inverse_sigmoid


def box_head(d_model: int) -> MLP:
    """The head: (dx, dy) on the token's centre in logit space, then (w, h), both through a
    sigmoid. The specialist's ``box_head`` is this module, so its weights carry over."""
    return MLP(d_model, d_model, 4, 3)


def prior_boxes(head: MLP, embeds: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, M, d) token embeddings, (B, M, 2) their centres -> (B, M, 4) boxes, x1y1x2y2 on the canvas."""
    delta = head(embeds)
    centre = (inverse_sigmoid(points) + delta[..., :2]).sigmoid()
    return cxcywh_to_xyxy(torch.cat([centre, delta[..., 2:].sigmoid()], -1))


def slot_anchors(boxes: torch.Tensor, num_points: int) -> torch.Tensor:
    """(..., 4) x1y1x2y2 boxes -> (..., 2N) the point each coordinate slot is an offset from,
    interleaved x, y: the two corners for N = 2; for N >= 3, N points on the box's inscribed
    ellipse at equal angles, clockwise as displayed (y down) from the top."""
    if num_points < 2:
        raise ValueError(f"an answer has at least 2 points (a box), not {num_points}")
    if num_points == 2:
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    angle = -math.pi / 2 + 2 * math.pi * torch.arange(num_points, device=boxes.device, dtype=boxes.dtype) / num_points
    xs = cx[..., None] + rx[..., None] * angle.cos()
    ys = cy[..., None] + ry[..., None] * angle.sin()
    return torch.stack([xs, ys], -1).flatten(-2)


def answer_anchors(centres: torch.Tensor, boxes: torch.Tensor | None, num_points: int) -> torch.Tensor:
    """(..., 2) token centres and (..., 4) prior boxes or None -> (..., 2N) what each coordinate
    slot is an offset from: the centre l_i (METHOD.md §5), or the prior box's point for it
    (detached: the answer's losses move the LLM, not the prior)."""
    if boxes is None:
        return centres.repeat(*([1] * (centres.dim() - 1)), num_points)
    return slot_anchors(boxes.detach(), num_points)


def target_box(coords: torch.Tensor) -> torch.Tensor:
    """(n, 2N) an answer's targets -> (n, 4) their boxes: a box as it is, a polygon's extent."""
    if coords.shape[-1] == 4:
        return coords
    xy = coords.view(coords.shape[0], -1, 2)
    return torch.cat([xy.amin(1), xy.amax(1)], -1)


def matched_prior_loss(boxes: torch.Tensor, targets: list[dict], matched: dict, rows: list[int],
                       num: float) -> dict[str, torch.Tensor]:
    """:func:`prior_loss` over the tokens the tokenizer matched (``matched``: row -> (tokens,
    objects)) in ``rows``, against their objects' boxes; without rows, an exact zero that still
    reaches every prior weight (FSDP reduces the same gradients on every rank)."""
    pairs = [(b, matched[b][0], target_box(targets[b]["coords"].to(boxes.device))[matched[b][1]]) for b in rows]
    out = prior_loss(boxes, pairs, num)
    if not rows:
        out["loss_prior_l1"] = out["loss_prior_l1"] + 0.0 * boxes.sum()
    return out


def prior_loss(boxes: torch.Tensor, pairs: list[tuple[int, torch.Tensor, torch.Tensor]], num: float,
               *, w_l1: float = 5.0, w_giou: float = 2.0) -> dict[str, torch.Tensor]:
    """L1 and GIoU of the prior boxes of matched tokens. ``boxes`` (B, M, 4); ``pairs`` per image
    (row b, tokens (k,), their objects' boxes (k, 4)); ``num`` the normalizer."""
    l1 = giou = boxes.new_zeros(())
    for b, i, target in pairs:
        if len(i):
            pred = boxes[b, i]
            l1 = l1 + F.l1_loss(pred, target, reduction="sum")
            giou = giou + (1 - generalized_box_iou(pred, target).diagonal()).sum()
    num = max(num, 1.0)
    return {"loss_prior_l1": w_l1 * l1 / num, "loss_prior_giou": w_giou * giou / num}
