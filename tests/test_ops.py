"""Multi-scale deformable attention (Deformable DETR eq. 3, the VisionLLM image
tokenizer of sec. 3.2): the native kernels against the grid_sample reference and
against an independent loop implementation of the same semantics."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import visionllm.ops as ops
from visionllm.ops import _native, ms_deform_attn_reference, multi_scale_deformable_attention

FWD = torch.ops.visionllm.ms_deform_attn_forward if _native.LOAD_ERROR is None else None
BWD = torch.ops.visionllm.ms_deform_attn_backward if _native.LOAD_ERROR is None else None

needs_cpu = pytest.mark.skipif(
    not _native.available("cpu"),
    reason="native CPU kernel not built (" + _native.unavailable_reason("cpu") + "); "
    "build it with `pip install --no-build-isolation -e .`",
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _native.available("cuda")),
    reason="needs a CUDA GPU and visionllm._C built with its CUDA kernel",
)

# (N, levels as (H, W), M, D, Lq, P)
SHAPES = {
    "one-level": (2, [(6, 6)], 2, 8, 5, 4),
    "four-levels": (1, [(7, 5), (4, 9), (1, 1), (2, 3)], 3, 5, 11, 3),
    "odd-batch": (3, [(3, 4), (2, 2)], 2, 7, 4, 2),
    "single-pixel": (1, [(1, 1)], 1, 3, 2, 1),
    "wide-d": (1, [(5, 8), (3, 4)], 1, 33, 9, 2),
    "many-queries": (2, [(12, 10), (6, 5), (3, 3), (1, 2)], 4, 12, 64, 4),
}


def make_inputs(N, levels, M, D, Lq, P, dtype=torch.float64, seed=0, lo=-0.25, hi=1.25):
    """Locations in [lo, hi] so that some points sit partly or wholly off the map."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    S, L = int(shapes.prod(1).sum()), len(levels)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    loc = lo + (hi - lo) * torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64)
    attn = torch.rand(N, Lq, M, L, P, generator=g, dtype=torch.float64)
    return value.to(dtype), shapes, starts, loc.to(dtype), attn.to(dtype)


def msda_loops(value, shapes, starts, loc, attn):
    """Eq. 3 written out point by point: bilinear weight (1-|x-i|)(1-|y-j|) per
    corner, corners off the map read zero, pixel centres at (i + 0.5) / W."""
    value, loc, attn = (np.asarray(t.detach().double()) for t in (value, loc, attn))
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = np.zeros((N, Lq, M, D))
    for n, q, m, lvl, p in np.ndindex(N, Lq, M, L, P):
        H, W = (int(s) for s in shapes[lvl])
        x = loc[n, q, m, lvl, p, 0] * W - 0.5
        y = loc[n, q, m, lvl, p, 1] * H - 0.5
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        x0, y0 = math.floor(x), math.floor(y)
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                if 0 <= xx < W and 0 <= yy < H:
                    w = (1 - abs(x - xx)) * (1 - abs(y - yy))
                    row = int(starts[lvl]) + yy * W + xx
                    out[n, q, m] += attn[n, q, m, lvl, p] * w * value[n, row, m]
    return torch.from_numpy(out.reshape(N, Lq, M * D))


def _backends():
    return ["reference"] + (["cpu"] if _native.available("cpu") else [])


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", ["one-level", "four-levels", "odd-batch", "single-pixel"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_matches_independent_loops(name, backend):
    if backend == "cpu" and not _native.available("cpu"):
        pytest.skip("native CPU kernel not built")
    args = make_inputs(*SHAPES[name])
    out = multi_scale_deformable_attention(*args, backend=backend)
    torch.testing.assert_close(out, msda_loops(*args), rtol=0, atol=1e-10)


@needs_cpu
def test_far_and_nan_locations_read_zero():
    value, shapes, starts, loc, attn = make_inputs(*SHAPES["four-levels"])
    loc[0, 0, 0, 0, 0] = torch.tensor([1e30, -1e30], dtype=loc.dtype)
    loc[0, 1, 1, 1, 1] = torch.tensor([-3.0, 0.5], dtype=loc.dtype)
    loc[0, 2, 2, 2, 0] = float("nan")
    out = FWD(value, shapes, starts, loc, attn)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out, msda_loops(value, shapes, starts, loc, attn), rtol=0, atol=1e-10
    )


@needs_cpu
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_forward_matches_reference(name, dtype, tol):
    args = make_inputs(*SHAPES[name], dtype=dtype, seed=1)
    ref = ms_deform_attn_reference(*args)
    out = multi_scale_deformable_attention(*args, backend="cpu")
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)


@needs_cpu
def test_non_contiguous_and_empty_inputs():
    value, shapes, starts, loc, attn = make_inputs(*SHAPES["four-levels"])
    expected = FWD(value, shapes, starts, loc, attn)
    strided = (
        value.transpose(0, 1).contiguous().transpose(0, 1),
        loc.transpose(1, 2).contiguous().transpose(1, 2),
        attn.transpose(0, 4).contiguous().transpose(0, 4),
    )
    assert not all(t.is_contiguous() for t in strided)
    out = FWD(strided[0], shapes, starts, strided[1], strided[2])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out = FWD(value, shapes, starts, loc[:, :0], attn[:, :0])
    assert out.shape == (1, 0, 3 * 5)
    # D = 0: nothing to sample, so every gradient is zero (not uninitialised).
    grads = BWD(value[..., :0], shapes, starts, loc, attn, torch.empty(1, 11, 0, dtype=value.dtype))
    assert grads[0].shape == (1, value.shape[1], 3, 0)
    assert not grads[1].any() and not grads[2].any()


@needs_cpu
def test_bad_arguments_raise():
    value, shapes, starts, loc, attn = make_inputs(*SHAPES["four-levels"])
    with pytest.raises(RuntimeError, match="does not fit"):
        FWD(value, shapes, starts + 1000, loc, attn)
    with pytest.raises(RuntimeError, match="attention_weights"):
        FWD(value, shapes, starts, loc, attn[..., :1])
    with pytest.raises(RuntimeError, match="float32 and float64"):
        FWD(value.half(), shapes, starts, loc.half(), attn.half())
    with pytest.raises(RuntimeError, match="share a dtype"):
        FWD(value, shapes, starts, loc.float(), attn)


# ---------------------------------------------------------------- backward


def _grads(backend, args, grad_out):
    value, shapes, starts, loc, attn = (t.detach().clone() for t in args)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    out = multi_scale_deformable_attention(value, shapes, starts, loc, attn, backend=backend)
    return torch.autograd.grad(out, leaves, grad_out)


@needs_cpu
@pytest.mark.parametrize("name", ["four-levels", "odd-batch", "wide-d", "many-queries"])
@pytest.mark.parametrize("threads", [1, 3])
def test_backward_matches_reference(name, threads):
    # With 3 threads "wide-d" (N * M = 1) takes the split two-pass backward,
    # the others the fused sweep.
    args = make_inputs(*SHAPES[name], seed=2)
    grad_out = torch.randn(
        args[0].shape[0], args[3].shape[1], args[0].shape[2] * args[0].shape[3], dtype=torch.float64
    )
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _grads("cpu", args, grad_out)
    finally:
        torch.set_num_threads(prev)
    for g, r in zip(got, _grads("reference", args, grad_out)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@needs_cpu
def test_backward_is_bitwise_deterministic_across_thread_counts():
    args = make_inputs(*SHAPES["wide-d"], dtype=torch.float32, seed=3)
    grad_out = torch.randn(1, 9, 33)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            results += [BWD(*args, grad_out) for _ in range(2)]
    finally:
        torch.set_num_threads(prev)
    for res in results[1:]:
        for a, b in zip(res, results[0]):
            assert torch.equal(a, b)


@needs_cpu
@pytest.mark.parametrize("name", ["four-levels", "odd-batch"])
def test_gradcheck(name):
    N, levels, M, D, _, P = SHAPES[name]
    value, shapes, starts, loc, attn = make_inputs(N, levels, M, min(D, 4), 3, P, seed=4)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]

    def fn(v, sl, aw):
        return multi_scale_deformable_attention(v, shapes, starts, sl, aw, backend="cpu")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- torch.library integration


@needs_cpu
def test_opcheck():
    args = make_inputs(*SHAPES["four-levels"], seed=5)
    for t in (args[0], args[3], args[4]):
        t.requires_grad_()
    torch.library.opcheck(FWD.default, args)
    plain = [t.detach() for t in args]
    grad_out = torch.randn(1, 11, 15, dtype=torch.float64)
    torch.library.opcheck(BWD.default, (*plain, grad_out))


@needs_cpu
def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    args = make_inputs(*SHAPES["odd-batch"], dtype=torch.float32, seed=6)

    def step(value, shapes, starts, loc, attn):
        out = multi_scale_deformable_attention(value, shapes, starts, loc, attn)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        value, shapes, starts, loc, attn = (t.clone() for t in args)
        leaves = [t.requires_grad_() for t in (value, loc, attn)]
        loss = fn(value, shapes, starts, loc, attn)
        results.append((loss.detach(), *torch.autograd.grad(loss, leaves)))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # Dynamo sees the native op as one opaque call (no decomposition into
    # grid_sample, no graph break).
    seen = []

    def record(gm, example_inputs):
        seen.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(step, backend=record, fullgraph=True)(*args)
    assert FWD in seen or FWD.default in seen, seen
    assert torch.ops.aten.grid_sampler_2d.default not in seen


# ---------------------------------------------------------------- backend selection


@needs_cpu
def test_auto_uses_native_kernel_on_cpu():
    args = make_inputs(*SHAPES["four-levels"], seed=7)
    auto = multi_scale_deformable_attention(*args)
    assert torch.equal(auto, FWD(*args))


def test_auto_falls_back_to_reference_and_logs_once(monkeypatch, caplog):
    monkeypatch.setitem(_native.AVAILABLE, "cpu", False)
    monkeypatch.setattr(ops, "_fallbacks_logged", set())
    args = make_inputs(*SHAPES["four-levels"], seed=8)
    with caplog.at_level(logging.WARNING, logger="visionllm.ops"):
        for _ in range(2):
            out = multi_scale_deformable_attention(*args)
            assert torch.equal(out, ms_deform_attn_reference(*args))
    fallbacks = [r for r in caplog.records if "pure-PyTorch reference" in r.getMessage()]
    assert len(fallbacks) == 1
    with pytest.raises(RuntimeError, match="requested but"):
        multi_scale_deformable_attention(*args, backend="cpu")


def test_backend_argument_is_validated():
    args = make_inputs(*SHAPES["single-pixel"])
    with pytest.raises(ValueError, match="backend must be one of"):
        multi_scale_deformable_attention(*args, backend="triton")
    with pytest.raises(ValueError, match="tensors are on cpu"):
        multi_scale_deformable_attention(*args, backend="cuda")


def test_mixed_dtypes_are_promoted():
    value, shapes, starts, loc, attn = make_inputs(*SHAPES["odd-batch"])
    out = multi_scale_deformable_attention(value.float(), shapes, starts, loc, attn.float())
    assert out.dtype == torch.float64


def test_import_and_fallback_without_the_extension():
    # A fresh interpreter in which `import visionllm._C` fails, as after a
    # failed or skipped native build.
    code = (
        "import sys, torch; sys.modules['visionllm._C'] = None\n"
        "import visionllm.ops as o\n"
        "assert not o.native_available('cpu') and o._native.LOAD_ERROR\n"
        "v = torch.randn(1, 4, 1, 2); s = torch.tensor([[2, 2]]); i = torch.tensor([0])\n"
        "out = o.multi_scale_deformable_attention(v, s, i, torch.rand(1, 3, 1, 1, 1, 2),"
        " torch.rand(1, 3, 1, 1, 1))\n"
        "assert out.shape == (1, 3, 2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", list(SHAPES))
def test_cuda_matches_reference(name):
    args = [t.cuda() for t in make_inputs(*SHAPES[name], seed=9)]
    grad_out = torch.randn(
        args[0].shape[0],
        args[3].shape[1],
        args[0].shape[2] * args[0].shape[3],
        dtype=torch.float64,
        device="cuda",
    )
    torch.testing.assert_close(
        multi_scale_deformable_attention(*args, backend="cuda"),
        ms_deform_attn_reference(*args),
        rtol=0,
        atol=1e-10,
    )
    for g, r in zip(_grads("cuda", args, grad_out), _grads("reference", args, grad_out)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-9)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)]
)
def test_cuda_low_precision(dtype, tol):
    args = make_inputs(*SHAPES["many-queries"], seed=10)
    want = msda_loops(*args).float()
    lowp = [t.cuda() for t in args]
    for i in (0, 3, 4):
        lowp[i] = lowp[i].to(dtype)
    out = multi_scale_deformable_attention(*lowp, backend="cuda")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), want, rtol=tol, atol=tol)
    grads = _grads("cuda", lowp, torch.ones_like(out))
    assert all(g.dtype == dtype and torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.cuda
@needs_cuda
def test_cuda_errors_are_exceptions():
    args = make_inputs(*SHAPES["four-levels"])
    cuda_args = [t.cuda() for t in args]
    with pytest.raises(RuntimeError, match="must be on"):
        FWD(cuda_args[0], cuda_args[1], cuda_args[2], args[3], cuda_args[4])
    torch.library.opcheck(FWD.default, cuda_args)
