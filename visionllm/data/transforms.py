"""Image preparation [ours]: every image is resized so its longer side is ``size`` and padded
bottom/right onto a square ``size x size`` canvas, with a mask of the padding. All model
coordinates are normalized to that canvas, so one batch needs no per-image valid ratios;
``canvas_scale = max(width, height)`` turns canvas units back into original pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def letterbox(image: Image.Image, size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PIL RGB image -> normalized canvas (3, size, size), padding mask (size, size), canvas_scale."""
    w, h = image.size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    x = F.interpolate(x[None].float() / 255.0, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    x = (x - MEAN) / STD
    canvas = torch.zeros(3, size, size)
    canvas[:, :nh, :nw] = x
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[:nh, :nw] = False
    return canvas, mask, float(max(w, h))


def hflip_objects(objects: list[dict], width: int) -> list[dict]:
    """Mirror COCO-style objects (bbox xywh pixels, polygon segmentation) about the vertical axis."""
    out = []
    for o in objects:
        x, y, w, h = o["bbox"]
        o = dict(o, bbox=[width - x - w, y, w, h])
        if isinstance(o.get("segmentation"), list):
            segs = []
            for poly in o["segmentation"]:
                p = list(poly)
                p[0::2] = [width - v for v in p[0::2]]
                segs.append(p)
            o["segmentation"] = segs
        out.append(o)
    return out


def collate(samples: list[dict]) -> dict:
    """Stack images and masks; keep per-sample text, requests, targets and meta as lists."""
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "pixel_mask": torch.stack([s["pixel_mask"] for s in samples]),
        "instructions": [s["instruction"] for s in samples],
        "requests": [s["request"] for s in samples],
        "targets": [s.get("target") for s in samples],
        "meta": [s["meta"] for s in samples],
    }
