"""Training throughput: samples/s and peak memory of real training steps, per experiment.

    python tools/bench_train.py [--experiments shapes_tiny shapes] [--steps 20] [--warmup 3] [data.root=DIR]
                                [--against model.group_attention=dense ...]

With ``--against OVERRIDES``, each experiment is also timed with those overrides added, on the
same batches, and the ratio of the two is printed (one run, side by side).

Each experiment runs in its own process (a clean peak-memory reading): the model and a
batch mixture built from the config exactly as tools/train.py builds them, then timed
optimizer steps. Peak memory is the process's peak resident set (ru_maxrss) on the CPU, or
``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(experiment: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    import torch
    from hydra.utils import instantiate

    from visionllm.cli import pick_device
    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.optim import build_optimizer
    from visionllm.engine.stages import compose_train_config
    from visionllm.engine.train import absolutize, prepare_tokenizer, tokenizer_corpus

    tmp = tempfile.mkdtemp()
    cfg = compose_train_config([f"experiment={experiment}", f"output_dir={tmp}", *overrides])
    absolutize(cfg)
    device = pick_device(cfg.trainer.device)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary, per_task=100))
    model = instantiate(cfg.model).to(device).train()
    opt, _ = build_optimizer(model, cfg.trainer)
    bs = cfg.trainer.batch_size
    batches = [collate([ds[(i * bs + j) % len(ds)] for j in range(bs)]) for i in range(steps + warmup)]
    bf16 = cfg.trainer.get("precision", "fp32") == "bf16"  # as tools/train.py autocasts
    times = []
    for i, batch in enumerate(batches):
        batch["images"], batch["pixel_mask"] = batch["images"].to(device), batch["pixel_mask"].to(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"experiment": experiment, "batch_size": bs, "tasks": sorted(ds.names), "steps": len(times),
            "s_per_step": sum(times) / len(times), "samples_per_s": bs * len(times) / sum(times),
            "peak_mib": peak, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "threads": torch.get_num_threads(), "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=["shapes_tiny", "shapes"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--against", nargs="+", default=[], metavar="OVERRIDE",
                    help="also time each experiment with these overrides, and print the ratio")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.warmup, overrides)))
        return

    def run(exp: str, extra: list[str]) -> dict:
        cmd = [sys.executable, __file__, "--worker", exp, "--steps", str(args.steps), "--warmup", str(args.warmup),
               *overrides, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), check=False)
        res = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not res:
            sys.exit(f"{exp} {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        return res[0] | {"variant": " ".join(extra) or "as configured"}

    rows = []
    for exp in args.experiments:
        rows.append(run(exp, []))
        if args.against:
            rows.append(run(exp, args.against))
    vw = max(14, *(len(r["variant"]) + 2 for r in rows))  # the variant column fits its longest name
    print(f"{'experiment':<14}{'variant':<{vw}}{'tasks':<44}{'batch':>6}{'params M':>10}{'s/step':>9}{'samples/s':>11}"
          f"{'peak MiB':>10}")
    for r in rows:
        print(f"{r['experiment']:<14}{r['variant']:<{vw}}{','.join(r['tasks']):<44}{r['batch_size']:>6}{r['params_m']:>10.2f}"
              f"{r['s_per_step']:>9.3f}{r['samples_per_s']:>11.1f}{r['peak_mib']:>10.0f}")
    if args.against:
        for base, other in zip(rows[::2], rows[1::2]):
            print(f"{base['experiment']}: {' '.join(args.against)} takes {other['s_per_step'] / base['s_per_step']:.2f}x "
                  f"the time of a step as configured, {other['peak_mib'] / base['peak_mib']:.2f}x the peak memory")
    print(f"device {rows[0]['device']}, {rows[0]['threads']} threads: mean of {rows[0]['steps']} steps after {args.warmup} warm-up")


if __name__ == "__main__":
    main()
