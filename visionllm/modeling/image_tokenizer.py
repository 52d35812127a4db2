"""Language-guided image tokenizer (METHOD.md §3).

backbone (4 scales) + BERT -> deformable encoder with text fusion -> deformable decoder with
M learnable queries and iterative reference-point refinement -> M image tokens, each an
embedding e_i and a location l_i (the refined reference centre, normalized to the canvas).
Every decoder layer also predicts a class-agnostic objectness logit for the tokenizer loss.

``point_features`` [ours]: each token's embedding also gets the finest backbone level's features
bilinearly sampled at its location l_i, through a linear layer. The deformable layers, trained
mostly by box and class losses, carry an object's shape into its token and drop its colour: on
the shapes data, a linear probe read an object's colour name from the projected backbone
features at its centre with 0.90 accuracy, from the encoder's output with 0.52 and from the
image token with 0.21 (chance 0.21), docs/design.md "Where colour is lost". Sampling puts what
the pixels under the token look like back into it, whatever the deformable layers kept (0.66
after run 3 of docs/results.md; off by default: there box AP fell and the LLM still did not
read the colour).

The same samples are returned as ``pixels`` whatever ``point_features`` says: the text readout
reads them (docs/design.md, "Text readout").

``checkpointing``: in training, each encoder and decoder layer keeps only its inputs and
recomputes its activations in the backward pass (``torch.utils.checkpoint``, non-reentrant),
trading one more forward for the memory of every layer's attention and FFN activations.

``decoder_text``: each decoder layer also cross-attends to the BERT tokens (Grounding DINO's
decoder), so the queries read the instruction directly (docs/design.md, "Referring").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionllm.modeling.backbone import Backbone
from visionllm.modeling.deformable import (
    MLP,
    DecoderLayer,
    EncoderLayer,
    inverse_sigmoid,
    sine_embed,
)
from visionllm.modeling.text_encoder import TextEncoder


@dataclass
class ImageTokens:
    embeds: torch.Tensor  # (B, M, C) e_i
    points: torch.Tensor  # (B, M, 2) l_i, (x, y) in [0, 1]
    layer_logits: torch.Tensor  # (D, B, M) objectness per decoder layer
    layer_points: torch.Tensor  # (D, B, M, 2) refined centres per decoder layer
    pixels: torch.Tensor | None = None  # (B, M, C) the finest backbone level sampled at l_i
    scene: torch.Tensor | None = None  # (B, L*C) each level's encoder memory averaged over the image


def level_means(memory: torch.Tensor, pad: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(B, sum HW, C) encoder memory, (B, sum HW) True where padded, each level's H*W ->
    (B, L*C): each level's mean over the image's own pixels (the letterbox's padding left out),
    the levels side by side: what the whole image looks like at each scale, the background
    included, which no object query is asked to keep (docs/design.md, "The scene")."""
    keep = (~pad).to(memory.dtype)[..., None]  # (B, sum HW, 1)
    means = [(m * k).sum(1) / k.sum(1).clamp(min=1.0) for m, k in zip(memory.split(sizes, 1), keep.split(sizes, 1))]
    return torch.cat(means, -1)


class ImageTokenizer(nn.Module):
    def __init__(
        self,
        *,
        backbone: Backbone,
        text_encoder: TextEncoder,
        num_queries: int = 100,
        enc_layers: int = 6,
        dec_layers: int = 6,
        n_heads: int = 8,
        n_points: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        checkpointing: bool = False,
        point_features: bool = False,
        decoder_text: bool = False,
    ):
        super().__init__()
        self.checkpointing = checkpointing
        self.backbone = backbone
        self.text_encoder = text_encoder
        d = backbone.d_model  # sizes come from the built modules
        L = backbone.num_levels
        self.d_model, self.num_queries = d, num_queries
        self.text_proj = nn.Linear(text_encoder.hidden_size, d)
        self.level_embed = nn.Parameter(torch.randn(L, d) * 0.02)
        kw = dict(d_model=d, d_ffn=d_ffn, n_levels=L, n_heads=n_heads, n_points=n_points, dropout=dropout)
        self.encoder = nn.ModuleList(EncoderLayer(**kw) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**kw, text_attn=decoder_text) for _ in range(dec_layers))
        self.query_embed = nn.Embedding(num_queries, 2 * d)  # (query_pos | tgt), Deformable DETR
        self.ref_point = nn.Linear(d, 2)
        point_head = MLP(d, d, 2, 3)
        nn.init.zeros_(point_head.layers[-1].weight)
        nn.init.zeros_(point_head.layers[-1].bias)
        self.point_heads = nn.ModuleList(copy.deepcopy(point_head) for _ in range(dec_layers))
        obj_head = nn.Linear(d, 1)
        nn.init.constant_(obj_head.bias, -math.log((1 - 0.01) / 0.01))  # focal-loss prior
        self.obj_heads = nn.ModuleList(copy.deepcopy(obj_head) for _ in range(dec_layers))
        self.point_proj = nn.Linear(d, d) if point_features else None

    def _flatten(self, feats: list[torch.Tensor], pixel_mask: torch.Tensor):
        srcs, masks, poss, refs, shapes = [], [], [], [], []
        for lvl, f in enumerate(feats):
            B, C, H, W = f.shape
            m = F.interpolate(pixel_mask[None].float(), size=(H, W))[0].bool()  # (B, H, W)
            ys = (torch.arange(H, device=f.device, dtype=f.dtype) + 0.5) / H
            xs = (torch.arange(W, device=f.device, dtype=f.dtype) + 0.5) / W
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(1, H * W, 2)
            pos = sine_embed(grid, C // 2) + self.level_embed[lvl]  # (1, HW, C)
            srcs.append(f.flatten(2).transpose(1, 2))
            masks.append(m.flatten(1))
            poss.append(pos.expand(B, -1, -1))
            refs.append(grid.expand(B, -1, -1))
            shapes.append((H, W))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=feats[0].device)
        start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        cat = lambda xs: torch.cat(xs, 1)
        return cat(srcs), cat(masks), cat(poss), cat(refs), spatial_shapes, start

    def _run(self, layer: nn.Module, *args):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(
        self,
        images: torch.Tensor,  # (B, 3, S, S) normalized
        pixel_mask: torch.Tensor,  # (B, S, S) True where padded
        texts: list[str],  # B instructions
    ) -> ImageTokens:
        text, text_pad = self.text_encoder(texts)
        text = self.text_proj(text)  # (B, T, C)
        # Encoder queries sit at their own pixel centres: all levels share the square canvas.
        levels = self.backbone(images)
        src, pad, pos, enc_ref, shapes, start = self._flatten(levels, pixel_mask)
        for layer in self.encoder:
            src = self._run(layer, src, pos, enc_ref, shapes, start, pad, text, text_pad)
        memory = src

        B = images.shape[0]
        query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)
        query_pos = query_pos[None].expand(B, -1, -1)
        tgt = tgt[None].expand(B, -1, -1)
        ref = self.ref_point(query_pos).sigmoid()  # (B, M, 2)
        logits, points = [], []
        for layer, point_head, obj_head in zip(self.decoder, self.point_heads, self.obj_heads):
            tgt = self._run(layer, tgt, query_pos, ref, memory, shapes, start, pad, text, text_pad)
            new_ref = (inverse_sigmoid(ref) + point_head(tgt)).sigmoid()
            logits.append(obj_head(tgt).squeeze(-1))
            points.append(new_ref)
            ref = new_ref.detach()  # Deformable DETR: no gradient through the next layer's reference
        embeds = tgt
        grid = 2 * ref[:, :, None, :] - 1  # (B, M, 1, 2) in grid_sample's [-1, 1], canvas-normalized
        pixels = F.grid_sample(levels[0], grid, mode="bilinear", align_corners=False)[..., 0].transpose(1, 2)
        if self.point_proj is not None:
            embeds = tgt + self.point_proj(pixels)
        return ImageTokens(
            embeds=embeds, points=points[-1], layer_logits=torch.stack(logits), layer_points=torch.stack(points),
            pixels=pixels, scene=level_means(memory, pad, [f.shape[2] * f.shape[3] for f in levels]),
        )
