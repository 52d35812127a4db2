"""Deformable transformer layers (Deformable DETR, Zhu et al. 2021, §4.1) with the
language fusion of METHOD.md §3 [ours]: inside each encoder layer the image tokens
cross-attend to the BERT tokens (residual add), in the spirit of GLIP / UNINEXT.

The multi-scale deformable attention itself is ``visionllm.ops.multi_scale_deformable_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionllm.ops import multi_scale_deformable_attention


class MSDeformAttn(nn.Module):
    """Each query samples ``n_points`` locations per head and level around its reference point."""

    def __init__(self, *, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} not divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Start with each head looking in its own direction, points at growing distance.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,  # (B, Lq, C)
        reference_points: torch.Tensor,  # (B, Lq, 2) normalized (x, y)
        value: torch.Tensor,  # (B, S, C)
        spatial_shapes: torch.Tensor,  # (L, 2) (H, W)
        level_start_index: torch.Tensor,  # (L,)
        padding_mask: torch.Tensor | None = None,  # (B, S) True where padded
    ) -> torch.Tensor:  # (B, Lq, C)
        B, Lq, C = query.shape
        H, L, P = self.n_heads, self.n_levels, self.n_points
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, -1, H, C // H)
        offsets = self.sampling_offsets(query).view(B, Lq, H, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, H, L * P).softmax(-1).view(B, Lq, H, L, P)
        normalizer = spatial_shapes.flip(-1).to(query.dtype)  # (L, 2) as (W, H)
        locs = reference_points[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = multi_scale_deformable_attention(v, spatial_shapes, level_start_index, locs, weights)
        return self.output_proj(out)


class FFN(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ffn, d_model)
        )
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.net(x)))


class EncoderLayer(nn.Module):
    """Deformable self-attention over all scales, then image->text cross-attention, then FFN."""

    def __init__(self, *, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.text_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask, text, text_mask):
        x = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.drop(x))
        x, _ = self.text_attn(src + pos, text, text, key_padding_mask=text_mask, need_weights=False)
        src = self.norm2(src + self.drop(x))
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Query self-attention, then (``text_attn``) cross-attention to the BERT tokens, then
    deformable cross-attention into the encoder memory, then FFN.

    The text step follows Grounding DINO's decoder [ours for VisionLLM]: each query reads the
    instruction itself, not only through the fused memory, so a referring expression can
    raise or lower a query whose own features match it, and the queries' self-attention in
    the next layer can compare candidates ("the leftmost circle")."""

    def __init__(self, *, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float,
                 text_attn: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        if text_attn:
            self.text_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
            self.norm_text = nn.LayerNorm(d_model)
        else:
            self.text_attn = None
        self.cross_attn = MSDeformAttn(d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask,
                text=None, text_mask=None):
        q = tgt + query_pos
        x, _ = self.self_attn(q, q, tgt, need_weights=False)
        tgt = self.norm1(tgt + self.drop(x))
        if self.text_attn is not None:
            x, _ = self.text_attn(tgt + query_pos, text, text, key_padding_mask=text_mask, need_weights=False)
            tgt = self.norm_text(tgt + self.drop(x))
        x = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, padding_mask)
        tgt = self.norm2(tgt + self.drop(x))
        return self.ffn(tgt)


def sine_embed(xy: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Normalized points (..., 2) -> sine/cosine features (..., 2 * num_feats), DETR style."""
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=xy.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = xy.float()[..., None] * scale / dim_t  # (..., 2, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2)
    return pos.flatten(-2).to(xy.dtype)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, num_layers: int):
        super().__init__()
        dims = [d_in] + [d_hidden] * (num_layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x
