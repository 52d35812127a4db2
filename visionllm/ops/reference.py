"""Pure-PyTorch multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3),
the sampling step of the VisionLLM image tokenizer (sec. 3.2).

The reference every native kernel is tested against, and the fallback where
none is built. Bilinear sampling with ``align_corners=False`` and zero padding,
through ``F.grid_sample``. It materialises every sampled value before the
weighted sum -- (N*M, D, Lq, L*P) -- which is what makes it slow and memory
hungry; it assumes the levels are packed in order (``level_start_index`` is
implied by ``spatial_shapes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,  # (N, S, M, D)
    spatial_shapes: torch.Tensor,  # (L, 2) int64 (H, W)
    level_start_index: torch.Tensor,  # (L,)
    sampling_locations: torch.Tensor,  # (N, Lq, M, L, P, 2), (x, y) in [0, 1]
    attention_weights: torch.Tensor,  # (N, Lq, M, L, P)
) -> torch.Tensor:  # (N, Lq, M * D)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    w = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1)  # (N*M, D, Lq)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()
