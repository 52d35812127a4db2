"""torchrun with 2 CPU processes (gloo): DDP and FSDP train, log the ranks' losses, evaluate and
checkpoint; with the same global batch they give the losses one process gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
PORT = iter(range(29517, 29540))


def _train(shapes_root, out: Path, *, nproc: int, batch: int, extra=()):
    args = ["experiment=shapes_tiny", f"data.root={shapes_root}", f"output_dir={out}", f"trainer.batch_size={batch}",
            "trainer.num_workers=0", "trainer.log_every=1", "trainer.warmup_steps=1", "trainer.max_steps=3",
            "trainer.checkpoint_every=3", "trainer.eval_every=3", "trainer.eval_max_images=2", "trainer.eval_batch_size=2",
            "trainer.tensorboard=false", "trainer.device=cpu", *TINY, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "tools/train.py"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={next(PORT)}",
        "tools/train.py"]
    r = subprocess.run([*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "history.json").read_text())


@pytest.mark.slow
def test_torchrun_two_processes(shapes_root, tmp_path):
    out = tmp_path / "ddp"
    hist = _train(shapes_root, out, nproc=2, batch=1)
    assert [h["step"] for h in hist if "loss" in h] == [1, 2, 3]
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert "bbox_AP" in json.loads((out / "metrics.json").read_text())


# Same numbers in one process and in two need per-sample computations: frozen batch norms and
# no dropout (the data, its augmentation and the task mixture are already drawn per sample).
SAME = ["task=all", "task.eval=[detection,caption]", "model.backbone.frozen_bn=true", "model.text_encoder.dropout=0.0"]


@pytest.mark.slow
def test_one_process_and_two_give_the_same_losses(shapes_root, tmp_path):
    """Global batch 8: one process of 8, DDP 2 x 4, FSDP 2 x 4 — the five tasks mixed, so the
    losses' normalizers (objects, answer tokens) must be global for the numbers to agree."""
    runs = {
        "one": _train(shapes_root, tmp_path / "one", nproc=1, batch=8, extra=SAME),
        "ddp": _train(shapes_root, tmp_path / "ddp", nproc=2, batch=4, extra=SAME),
        "fsdp": _train(shapes_root, tmp_path / "fsdp", nproc=2, batch=4, extra=[*SAME, "trainer.strategy=fsdp"]),
    }
    losses = {name: [h for h in hist if "loss" in h] for name, hist in runs.items()}
    ref = losses["one"]
    assert [h["step"] for h in ref] == [1, 2, 3]
    assert "loss_text" in ref[0], "the mixture should have put a text task in the first batch"
    for name in ("ddp", "fsdp"):
        assert [h["step"] for h in losses[name]] == [1, 2, 3]
        # step 1: the same weights on the same samples: every loss term and the gradient's norm
        # (taken after the processes' gradients are averaged) agree to float32 rounding
        first = losses[name][0]
        for k, val in ref[0].items():
            if k.startswith("loss") or k == "grad_norm":
                assert first.get(k, 0.0) == pytest.approx(val, rel=1e-5, abs=1e-6), (name, k)
        # later steps: Adam's first updates are ~lr * sign(g), so gradients equal to rounding
        # still move near-zero elements apart by up to 2 lr; the losses stay within a few per cent
        for a, b in zip(ref[1:], losses[name][1:]):
            assert b["loss"] == pytest.approx(a["loss"], rel=0.05), (name, a["step"])
    # the weights after three steps: FSDP's checkpoint is a whole model, loadable by one process;
    # all three agree but for the elements Adam's sign-like first steps sent ~lr apart
    w = {name: load_file(str(tmp_path / name / "checkpoint" / "model.safetensors")) for name in runs}
    assert w["fsdp"].keys() == w["one"].keys() == w["ddp"].keys()
    for name in ("ddp", "fsdp"):
        diff = torch.cat([(w[name][k].float() - v.float()).abs().flatten() for k, v in w["one"].items()
                          if v.is_floating_point()])
        assert diff.mean() < 1e-5, (name, diff.mean())
        assert (diff > 1e-5).float().mean() < 0.05, (name, (diff > 1e-5).float().mean())
    assert "bbox_AP" in json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert "caption_CIDEr" in json.loads((tmp_path / "fsdp" / "metrics.json").read_text())


@pytest.mark.slow
def test_fsdp_resumes_exactly(shapes_root, tmp_path):
    """An FSDP run resumed from its step-2 checkpoint ends where the uninterrupted run ends
    (with gradient checkpointing in the LLM and the deformable transformer, as the 7B preset)."""
    extra = [*SAME, "trainer.strategy=fsdp", "trainer.checkpoint_every=2", "task.eval=[detection]",
             "model.llm.gradient_checkpointing=true", "model.image_tokenizer.checkpointing=true"]
    _train(shapes_root, tmp_path / "whole", nproc=2, batch=2, extra=extra)
    step2 = tmp_path / "whole" / "checkpoints" / "step_0000002"
    assert (step2 / "trainer_state.pt").is_file()
    _train(shapes_root, tmp_path / "resumed", nproc=2, batch=2, extra=[*extra, f"trainer.resume={step2}"])
    a = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"))
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=1e-6, rtol=0, msg=k)
