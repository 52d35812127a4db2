"""torchrun with 2 CPU processes (gloo) trains, logs the ranks' mean loss, evaluates and
checkpoints on rank 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes(shapes_root, tmp_path):
    out = tmp_path / "ddp"
    args = ["experiment=shapes_tiny", f"data.root={shapes_root}", f"output_dir={out}", "trainer.batch_size=1",
            "trainer.num_workers=0", "trainer.log_every=1", "trainer.warmup_steps=1", "trainer.max_steps=3",
            "trainer.checkpoint_every=3", "trainer.eval_every=3", "trainer.eval_max_images=2", "trainer.eval_batch_size=2",
            "trainer.tensorboard=false", "trainer.device=cpu", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        "tools/train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist if "loss" in h] == [1, 2, 3]
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert "bbox_AP" in json.loads((out / "metrics.json").read_text())
