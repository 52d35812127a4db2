"""The token space of VisionLLM (METHOD.md §4), in one place.

Map of the tokens added on top of the LLM's own text vocabulary (ids follow the base
vocabulary in this order, so every range is contiguous):

    <image>                      placeholder spliced with the M image tokens
    <none>                       no-object answer of a group's class slot        [ours]
    <bos>                        query slot that starts a text answer
    <cls> <x1> <y1> ... <x64> <y64>   structural slot queries of output formats
    <c0> ... <c511>              class tokens; meaning only what the instruction maps
    <p-512> ... <p0> ... <p512>  location tokens; <pk> = offset k/512 from the image
                                 token's location (x in widths, y in heights)

Quantization: an offset d in [-1, 1] maps to k = round(d * 512) clamped to [-512, 512];
``dequantize(k) = k / 512``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_CLASS_TOKENS = 512
LOC_HALF = 512  # <p-512> .. <p512>: 1025 bins, the paper's best
MAX_POINTS = 64  # polygons up to 64 vertices

IMAGE = "<image>"
NONE = "<none>"
BOS = "<bos>"
CLS = "<cls>"


def structural_tokens() -> list[str]:
    toks = [CLS]
    for i in range(1, MAX_POINTS + 1):
        toks += [f"<x{i}>", f"<y{i}>"]
    return toks


def class_token(k: int) -> str:
    return f"<c{k}>"


def loc_token(k: int) -> str:
    return f"<p{k}>"


def added_tokens() -> list[str]:
    """Every token VisionLLM adds, in id order (see the module map)."""
    return (
        [IMAGE, NONE, BOS]
        + structural_tokens()
        + [class_token(k) for k in range(NUM_CLASS_TOKENS)]
        + [loc_token(k) for k in range(-LOC_HALF, LOC_HALF + 1)]
    )


def quantize(offset: torch.Tensor) -> torch.Tensor:
    """Offsets in [-1, 1] (any shape) -> integer bins in [-512, 512]."""
    return torch.round(offset * LOC_HALF).clamp(-LOC_HALF, LOC_HALF).long()


def dequantize(k: torch.Tensor) -> torch.Tensor:
    return k.float() / LOC_HALF


@dataclass(frozen=True)
class Vocab:
    """Ids of the added tokens inside one concrete tokenizer."""

    image: int
    none: int
    bos: int
    cls: int
    class0: int  # id of <c0>
    loc0: int  # id of <p-512>
    xy0: int  # id of <x1>; <yi> = xy0 + 2(i-1) + 1
    size: int  # full vocabulary size, base + added

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocab:
        ids = tokenizer.convert_tokens_to_ids(added_tokens())
        unk = tokenizer.unk_token_id
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ValueError("tokenizer lacks the VisionLLM tokens; call add_visionllm_tokens first")
        first = ids[0]
        if ids != list(range(first, first + len(ids))):
            raise ValueError("VisionLLM tokens must be contiguous in the tokenizer, in added_tokens() order")
        n_struct = 1 + 2 * MAX_POINTS
        return cls(
            image=first,
            none=first + 1,
            bos=first + 2,
            cls=first + 3,
            xy0=first + 4,
            class0=first + 3 + n_struct,
            loc0=first + 3 + n_struct + NUM_CLASS_TOKENS,
            size=len(tokenizer),
        )

    def class_id(self, k: int) -> int:
        if not 0 <= k < NUM_CLASS_TOKENS:
            raise ValueError(f"class index {k} outside 0..{NUM_CLASS_TOKENS - 1}")
        return self.class0 + k

    def loc_id(self, k: torch.Tensor | int):
        return self.loc0 + LOC_HALF + k

    def slot_ids(self, num_points: int) -> list[int]:
        """Slots of the format (c, x1, y1, ..., xN, yN): [<cls>, <x1>, <y1>, ...]."""
        if not 1 <= num_points <= MAX_POINTS:
            raise ValueError(f"number of points {num_points} outside 1..{MAX_POINTS}")
        return [self.cls] + list(range(self.xy0, self.xy0 + 2 * num_points))


def add_visionllm_tokens(tokenizer) -> Vocab:
    """Add the VisionLLM tokens to a Hugging Face tokenizer (idempotent) and return their ids."""
    toks = added_tokens()
    missing = [t for t in toks if t not in tokenizer.get_vocab()]
    if missing and len(missing) != len(toks):
        raise ValueError("tokenizer holds only part of the VisionLLM tokens")
    if missing:
        tokenizer.add_tokens(toks, special_tokens=True)
    return Vocab.from_tokenizer(tokenizer)
