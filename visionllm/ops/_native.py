"""Native multi-scale deformable attention: loading, fake kernels and autograd.

Deformable DETR (Zhu et al. 2021) eq. 3, as used by the VisionLLM image
tokenizer (sec. 3.2). The C++ library ``visionllm._C`` (built by setup.py from
``ops/``) defines ``torch.ops.visionllm.ms_deform_attn_forward`` and
``ms_deform_attn_backward`` with ``TORCH_LIBRARY`` and implements them for CPU
and, when compiled in, CUDA. This module adds what the tracing stack needs so
that ``torch.compile(fullgraph=True)`` sees one opaque op with its backward:
a fake (meta) kernel for each op and an autograd formula for the forward.

Importing never fails: without the library, :data:`LOAD_ERROR` says why and
:func:`available` is False for every device.
"""

from __future__ import annotations

import importlib

import torch

FORWARD = "visionllm::ms_deform_attn_forward"
BACKWARD = "visionllm::ms_deform_attn_backward"

LOAD_ERROR: str | None = None
try:
    importlib.import_module("visionllm._C")
except (ImportError, OSError) as exc:  # absent, stale or ABI-incompatible build
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def _has_kernel(dispatch_key: str) -> bool:
    if LOAD_ERROR is not None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD, dispatch_key))
    except (RuntimeError, AttributeError):  # private API; the CPU kernel is always compiled in
        return dispatch_key == "CPU"


# Resolved once at import: plain Python bools are free for torch.compile to
# read, whereas querying the dispatcher inside a traced function is not.
AVAILABLE: dict[str, bool] = {"cpu": _has_kernel("CPU"), "cuda": _has_kernel("CUDA")}
DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def available(device_type: str) -> bool:
    """Whether the native kernel for ``device_type`` ("cpu" / "cuda") is built."""
    return AVAILABLE.get(device_type, False)


def unavailable_reason(device_type: str) -> str:
    if LOAD_ERROR is not None:
        return f"visionllm._C could not be loaded ({LOAD_ERROR})"
    if device_type not in AVAILABLE:
        return f"there is no native kernel for device type {device_type!r}"
    return f"visionllm._C was built without the {device_type} kernel"


def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    torch._check(value.dim() == 4, lambda: "value must be (N, S, M, D)")
    torch._check(sampling_locations.dim() == 6, lambda: "sampling_locations must be 6-D")
    torch._check(attention_weights.dim() == 5, lambda: "attention_weights must be 5-D")
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


def _backward_fake(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
):
    # The kernels return contiguous tensors whatever the input strides.
    return (
        value.new_empty(value.shape),
        sampling_locations.new_empty(sampling_locations.shape),
        attention_weights.new_empty(attention_weights.shape),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    grad_value, grad_loc, grad_attn = torch.ops.visionllm.ms_deform_attn_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
    )
    need = ctx.needs_input_grad
    return (
        grad_value if need[0] else None,
        None,
        None,
        grad_loc if need[3] else None,
        grad_attn if need[4] else None,
    )


if LOAD_ERROR is None:
    torch.library.register_fake(FORWARD)(_forward_fake)
    torch.library.register_fake(BACKWARD)(_backward_fake)
    torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context)
