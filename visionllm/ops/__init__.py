"""Multi-scale deformable attention (Deformable DETR eq. 3; VisionLLM sec. 3.2).

:func:`multi_scale_deformable_attention` is the one entry point the image
tokenizer calls. It dispatches to the native kernels of ``visionllm._C`` (C++
on CPU, CUDA on GPUs; see ``ops/`` and :mod:`visionllm.ops._native`) or to the
pure-PyTorch reference in :mod:`visionllm.ops.reference`.
"""

from __future__ import annotations

import logging

import torch

from visionllm.ops import _native
from visionllm.ops.reference import ms_deform_attn_reference

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "cpu", "cuda")
_fallbacks_logged: set[str] = set()


def native_available(device_type: str) -> bool:
    """Whether ``backend=device_type`` can run here ("cpu" or "cuda")."""
    return _native.available(device_type)


def _log_fallback_once(device_type: str, why: str) -> None:
    # Logging inside a torch.compile trace would break the graph; the eager
    # call that precedes any real use logs it instead.
    if torch.compiler.is_compiling() or device_type in _fallbacks_logged:
        return
    _fallbacks_logged.add(device_type)
    logger.warning(
        "multi_scale_deformable_attention: using the pure-PyTorch reference on %s because %s",
        device_type,
        why,
    )


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Deformable attention over a multi-scale feature pyramid.

    Args:
        value: (N, S, M, D) per-head values of all levels, flattened row-major
            level after level (S = sum of H * W).
        spatial_shapes: (L, 2) int64, (H, W) of each level.
        level_start_index: (L,) int64, offset of each level along S.
        sampling_locations: (N, Lq, M, L, P, 2), (x, y) normalised to [0, 1];
            values outside are allowed and read zeros beyond the map.
        attention_weights: (N, Lq, M, L, P); used as given (not normalised).
        backend: "auto" (native kernel for the tensors' device if built, else
            the reference, logged once), "reference", "cpu" or "cuda".

    Returns:
        (N, Lq, M * D). Bilinear sampling with ``align_corners=False`` and zero
        padding.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # Mixed precision (e.g. bf16 values, fp32 offsets) runs in the wider type.
    dtype = value.dtype
    if sampling_locations.dtype != dtype or attention_weights.dtype != dtype:
        dtype = torch.promote_types(
            torch.promote_types(dtype, sampling_locations.dtype), attention_weights.dtype
        )
        value = value.to(dtype)
        sampling_locations = sampling_locations.to(dtype)
        attention_weights = attention_weights.to(dtype)
    if backend == "reference":
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    device_type = value.device.type
    if backend == "auto":
        if not _native.available(device_type):
            _log_fallback_once(device_type, _native.unavailable_reason(device_type))
            return ms_deform_attn_reference(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
        if dtype not in _native.DTYPES[device_type]:
            _log_fallback_once(
                f"{device_type}/{dtype}", f"the native kernel does not support {dtype}"
            )
            return ms_deform_attn_reference(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights
            )
    else:
        if device_type != backend:
            raise ValueError(f"backend={backend!r} but the tensors are on {value.device}")
        if not _native.available(backend):
            raise RuntimeError(
                f"backend={backend!r} requested but {_native.unavailable_reason(backend)}; "
                "rebuild with `pip install --no-build-isolation -e .` or use backend='auto'"
            )
    return torch.ops.visionllm.ms_deform_attn_forward(
        value,
        spatial_shapes.to(device=value.device, dtype=torch.long),
        level_start_index.to(device=value.device, dtype=torch.long),
        sampling_locations,
        attention_weights,
    )


__all__ = [
    "BACKENDS",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "native_available",
]
