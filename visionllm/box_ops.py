"""Box conventions, stated once.

Inside the model every coordinate is normalized to the square input canvas (x right, y down,
both in [0, 1]); boxes are ``cxcywh`` for matching the tokenizer and ``xyxy`` for the LLM's
answers. Outside (results, COCO files) boxes are pixels of the original image: ``xyxy`` for
users, ``xywh`` in COCO files. ``canvas_scale`` is original pixels per canvas unit.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou  # noqa: F401  (re-exported)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return box_convert(b, "cxcywh", "xyxy")


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return box_convert(b, "xyxy", "cxcywh")


def xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return box_convert(b, "xywh", "xyxy")


def xyxy_to_xywh(b: torch.Tensor) -> torch.Tensor:
    return box_convert(b, "xyxy", "xywh")


def canvas_to_pixels(xy: torch.Tensor, canvas_scale: float, width: int, height: int) -> torch.Tensor:
    """Normalized canvas coordinates (..., 2k) of interleaved x, y -> clipped original pixels."""
    out = xy * canvas_scale
    out[..., 0::2] = out[..., 0::2].clamp(0, width)
    out[..., 1::2] = out[..., 1::2].clamp(0, height)
    return out
