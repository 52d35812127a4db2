"""Multi-scale backbone (METHOD.md §3): a ``timm`` model with ``features_only`` gives strides
8, 16, 32; one extra stride-2 conv on the last gives stride 64. Each scale is projected to the
deformable transformer's width, as in Deformable DETR's input projections.

``frozen_bn``: batch norms become frozen ones (fixed statistics and affine), as DETR and
Deformable DETR do with their pretrained ResNet-50: at one image per GPU, batch statistics are
noise, and a frozen norm makes a sample's features independent of the rest of its batch (so N
processes and one process see the same numbers). A ``frozen`` backbone always freezes them too:
its statistics must not drift while its weights stand still.

``color_skip`` [ours]: the image itself, average-pooled to each level's grid (3 channels), is
concatenated to that level's features before its projection. A random backbone trained by box
and class losses learns to ignore colour (shape is what those losses ask for); on the shapes
data, a linear probe on the image tokens of such a model read the shape of an object (0.77
accuracy) but not its colour (R² 0.04), which left colour questions, coloured referring
expressions and colour words in captions out of reach. A pretrained backbone keeps colour by
itself, so the R50 preset leaves this off.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 8) or 1, channels)


class Backbone(nn.Module):
    def __init__(
        self,
        *,
        name: str,
        d_model: int,
        num_levels: int = 4,
        checkpoint: str | None = None,
        frozen: bool = False,
        frozen_bn: bool = False,
        color_skip: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        if num_levels not in (3, 4):
            raise ValueError("num_levels must be 3 (strides 8-32) or 4 (plus an extra stride 64)")
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-3, -2, -1))
        if checkpoint:
            self.load_checkpoint(checkpoint)
        self.color_skip = color_skip
        self.channels_last = channels_last
        channels = [c + 3 * color_skip for c in self.body.feature_info.channels()]
        self.strides = list(self.body.feature_info.reduction())
        proj = [nn.Sequential(nn.Conv2d(c, d_model, 1), _group_norm(d_model)) for c in channels]
        if num_levels == 4:
            proj.append(nn.Sequential(nn.Conv2d(channels[-1], d_model, 3, stride=2, padding=1), _group_norm(d_model)))
            self.strides.append(self.strides[-1] * 2)
        self.input_proj = nn.ModuleList(proj)
        self.d_model = d_model
        self.num_levels = num_levels
        if frozen or frozen_bn:
            # after the checkpoint: the frozen norms take its running statistics
            self.body = timm.layers.freeze_batch_norm_2d(self.body)
        if frozen:
            self.body.requires_grad_(False)

    def load_checkpoint(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"backbone checkpoint not found: {p}")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        loaded = len(self.body.state_dict()) - len(missing)
        if loaded == 0:
            raise ValueError(f"{p} holds no weights of this backbone (unexpected keys: {unexpected[:5]})")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) normalized -> list of num_levels maps (B, d_model, H_l, W_l)."""
        # the body reads the image in channels-last order: oneDNN's and cuDNN's convolutions run
        # faster on it, and each convolution passes the order on. Its maps come back in the usual
        # order for the projections (the colour skip's concat and the group norms were slower on
        # channels-last). The weights keep their layout, so checkpoints, DDP buckets and FSDP's
        # flat parameters see no change; the values are the same.
        if self.channels_last:
            feats = [f.contiguous() for f in self.body(images.contiguous(memory_format=torch.channels_last))]
        else:
            feats = self.body(images)
        if self.color_skip:
            feats = [torch.cat([f, F.adaptive_avg_pool2d(images, f.shape[-2:])], 1) for f in feats]
        outs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        if self.num_levels == 4:
            outs.append(self.input_proj[3](feats[-1]))
        return outs
