"""Benchmark of multi-scale deformable attention (VisionLLM sec. 3.2 tokenizer,
Deformable DETR eq. 3): pure-PyTorch reference vs the native kernel.

Shape: the R50 preset's encoder at 512 px -- batch 2, levels 64x64, 32x32,
16x16, 8x8 (S = 5440), 8 heads, D = 32, 4 points, one query per pixel
(Lq = S). Times forward and forward+backward (median of a few repetitions) and
the peak memory of one call, and prints ``speedup: N.Nx`` for forward+backward.

Every measurement runs in a fresh subprocess so that no variant inherits
another's allocator state. CPU memory is the growth of the resident set
(VmHWM - VmRSS, the peak reset through /proc/self/clear_refs) during one call
over a baseline that already holds the inputs; glibc is told to mmap every
block above 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the RSS
and the peak counts live bytes only. On CUDA it is max_memory_allocated over
memory_allocated before the call.

    python tools/bench_msda.py [--device cuda] [--reps 5] [--locations uniform]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

LEVELS = [(64, 64), (32, 32), (16, 16), (8, 8)]
BATCH, HEADS, DIM, POINTS = 2, 8, 32, 4
MMAP_THRESHOLD = "65536"


def _inputs(device, dtype, backward, locations="encoder"):
    import torch

    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor(LEVELS, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    S = int(shapes.prod(1).sum())
    L = len(LEVELS)
    value = torch.randn(BATCH, S, HEADS, DIM, generator=g, dtype=dtype)
    if locations == "uniform":
        loc = torch.rand(BATCH, S, HEADS, L, POINTS, 2, generator=g, dtype=dtype)
    else:
        loc = _encoder_locations(shapes, g).to(dtype)
    attn = torch.rand(BATCH, S, HEADS, L, POINTS, generator=g, dtype=dtype).softmax(-1)
    grad = torch.randn(BATCH, S, HEADS * DIM, generator=g, dtype=dtype)
    tensors = [t.to(device) for t in (value, shapes, starts, loc, attn, grad)]
    for i in (0, 3, 4):
        tensors[i].requires_grad_(backward)
    return tensors


def _encoder_locations(shapes, g):
    """Sampling locations as the encoder produces them: each query's own pixel
    centre (the reference point, shared by all levels) plus, per head and
    point, Deformable DETR's initial offset pattern -- head m looks along angle
    2 pi m / M, point p at (p + 1) pixels -- jittered by a pixel. Uniformly
    random locations would instead measure cache misses, not the op."""
    import torch

    refs = []
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        refs.append(torch.stack([xs.flatten() / w, ys.flatten() / h], -1))
    ref = torch.cat(refs)  # (S, 2)
    angle = torch.arange(HEADS) * (2 * torch.pi / HEADS)
    direction = torch.stack([angle.cos(), angle.sin()], -1)  # (M, 2)
    steps = torch.arange(1, POINTS + 1, dtype=torch.float32)
    pixels = direction[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
    S, L = ref.shape[0], shapes.shape[0]
    jitter = torch.randn(BATCH, S, HEADS, L, POINTS, 2, generator=g)
    size = shapes.flip(-1).float()  # (L, 2) as (W, H)
    offsets = (pixels + jitter) / size[None, None, None, :, None, :]
    return ref[None, :, None, None, None, :] + offsets


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _cpu_peak(fn):
    """Bytes of resident-set growth during fn() over the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) * 1024, "VmHWM-VmRSS"
    except OSError:  # no procfs write access: lifetime peak, less exact
        import resource

        base = _status_kib("VmRSS")
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "ru_maxrss"


def worker(backend, mode, device, reps, what, locations):
    import torch

    from visionllm.ops import multi_scale_deformable_attention as msda

    backward = mode == "fwd+bwd"
    value, shapes, starts, loc, attn, grad = _inputs(device, torch.float32, backward, locations)
    name = "reference" if backend == "reference" else device

    def call():
        out = msda(value, shapes, starts, loc, attn, backend=name)
        if backward:
            torch.autograd.grad(out, (value, loc, attn), grad)
        del out

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    call()  # warm-up: thread pools, CUDA context, lazy init
    sync()
    gc.collect()
    result = {"threads": torch.get_num_threads()}
    if what == "memory":
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call()
            sync()
            result["peak"] = torch.cuda.max_memory_allocated() - base
            result["method"] = "cuda max_memory_allocated"
        else:
            result["peak"], result["method"] = _cpu_peak(call)
    else:
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - t0)
        result["median_s"] = statistics.median(times)
        result["times_s"] = times
    print("RESULT " + json.dumps(result))


def run_worker(backend, mode, device, reps, what, locations):
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, mode, what]
    cmd += ["--device", device, "--reps", str(reps), "--locations", locations]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {backend} {mode} {what} failed:\n{proc.stdout}\n{proc.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument(
        "--locations",
        default="encoder",
        choices=["encoder", "uniform"],
        help="encoder: reference point + Deformable DETR offsets (default); uniform: "
        "random over the map, a cache-miss-bound worst case",
    )
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker[:2], args.device, args.reps, args.worker[2], args.locations)
        return

    import torch

    from visionllm.ops import native_available

    if not native_available(args.device):
        sys.exit(f"no native {args.device} kernel in this build; nothing to compare")
    S = sum(h * w for h, w in LEVELS)
    rows, res = [], {}
    for backend in ("reference", "native"):
        for mode in ("fwd", "fwd+bwd"):
            t = run_worker(backend, mode, args.device, args.reps, "time", args.locations)
            m = run_worker(backend, mode, args.device, args.reps, "memory", args.locations)
            res[backend, mode] = (t["median_s"], m["peak"])
            rows.append((backend, mode, t, m))
    levels = ",".join(f"{h}x{w}" for h, w in LEVELS)
    print(
        f"msda benchmark: device={args.device} threads={rows[0][2]['threads']} "
        f"torch={torch.__version__} float32"
    )
    print(
        f"shape: N={BATCH} levels={levels} S=Lq={S} M={HEADS} D={DIM} P={POINTS}; "
        f"{args.locations} locations; median of {args.reps} after 1 warm-up, "
        "each variant in a fresh process"
    )
    print(f"memory: peak growth during one call over the inputs ({rows[0][3]['method']})")
    print(f"{'backend':<10} {'pass':<8} {'median ms':>10} {'min ms':>9} {'peak MiB':>9}")
    for backend, mode, t, m in rows:
        print(
            f"{backend:<10} {mode:<8} {t['median_s'] * 1e3:>10.1f} "
            f"{min(t['times_s']) * 1e3:>9.1f} {m['peak'] / 2**20:>9.1f}"
        )
    fwd = res["reference", "fwd"][0] / res["native", "fwd"][0]
    speed = res["reference", "fwd+bwd"][0] / res["native", "fwd+bwd"][0]
    mem = res["native", "fwd+bwd"][1] / max(res["reference", "fwd+bwd"][1], 1)
    print(f"forward speedup: {fwd:.1f}x")
    print(f"memory native/reference (fwd+bwd): {mem:.3f}")
    print(f"speedup: {speed:.1f}x")
    ok = speed >= 3.0 and mem <= 0.25
    print(f"goal (>= 3x faster, <= 1/4 memory): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
