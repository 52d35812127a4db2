"""A run killed with SIGKILL and resumed ends with the same weights as one never interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, tiny_train_cfg
from visionllm.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.eval_every=1000", "trainer.keep_checkpoints=3",
         "trainer.tensorboard=false"]


def test_kill_and_resume_gives_identical_weights(shapes_root, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_train_cfg(shapes_root, straight, STEPS))

    killed = tmp_path / "killed"
    args = ["experiment=shapes_tiny", f"data.root={shapes_root}", f"output_dir={killed}", "trainer.batch_size=2",
            "trainer.num_workers=0", "trainer.log_every=1", "trainer.warmup_steps=2", "trainer.eval_max_images=4",
            "trainer.eval_batch_size=4", *TINY, *STEPS]
    # the same thread count as this process: CPU reductions are deterministic only for a fixed count
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "tools/train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "step_0000002" / "trainer_state.pt"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    # If the run outpaced the kill, forget what came after step 2: resume must start there.
    for later in sorted((killed / "checkpoints").glob("step_*"))[1:]:
        for f in later.iterdir():
            f.unlink()
        later.rmdir()
    train(tiny_train_cfg(shapes_root, killed, [*STEPS, "trainer.resume=auto"]))

    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(killed / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (k, (a[k] - b[k]).abs().max().item())
    # and training changed them: the comparison is not of two untouched models
    init = tmp_path / "init"
    train(tiny_train_cfg(shapes_root, init, ["trainer.max_steps=1", "trainer.eval_every=1000", "trainer.tensorboard=false"]))
    c = load_file(str(init / "checkpoint" / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_history_file_cut_short_costs_the_curves_not_the_resume(tmp_path, caplog):
    from visionllm.engine.train import _read_history, _write_atomic

    path = tmp_path / "history.json"
    assert _read_history(path) == []
    _write_atomic(path, '[{"step": 2, "loss": 1.0}]')
    assert _read_history(path) == [{"step": 2, "loss": 1.0}] and not (tmp_path / "history.json.tmp").exists()
    for broken in ("", '[{"step": 2, "lo', '{"step": 2}', "[1, 2]"):
        path.write_text(broken)
        with caplog.at_level("WARNING"):
            assert _read_history(path) == []
        assert "cannot be read" in caplog.text


def test_a_generalist_takes_only_the_image_tokenizer_of_another_run(shapes_root, tmp_path):
    """trainer.init_parts: the named parts come from the checkpoint (which may hold weights this
    model lacks elsewhere, as the specialist's box head), the rest keeps its own initial weights,
    and a checkpoint missing a weight of those parts fails loudly."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from helpers import tiny_model_and_sets
    from visionllm.engine.checkpoint import WEIGHTS, load_weights

    model, _ = tiny_model_and_sets(shapes_root, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = {k: v + 1.0 for k, v in before.items() if k.startswith("image_tokenizer.") and v.is_floating_point()}
    src.update({k: v for k, v in before.items() if k.startswith("image_tokenizer.") and not v.is_floating_point()})
    src["class_head.weight"] = torch.zeros(6, 4)  # the specialist's own head: not this model's, not taken
    ckpt = tmp_path / "specialist"
    ckpt.mkdir()
    save_file(src, str(ckpt / WEIGHTS))
    cfg = OmegaConf.create({"model": {"llm": {"pretrained": None}}})
    load_weights(model, ckpt, cfg, parts=("image_tokenizer.",))
    after = model.state_dict()
    for k, v in after.items():
        expected = src[k] if k in src else before[k]
        assert torch.equal(v, expected), k
    assert any(k.startswith("llm.") for k in after)  # the LLM kept its own weights (checked above)
    # the whole checkpoint cannot start this model: it has another head and no LLM
    with pytest.raises(ValueError, match="does not have"):
        load_weights(model, ckpt, cfg)
    del src[next(k for k in src if k.startswith("image_tokenizer.backbone."))]
    save_file(src, str(ckpt / WEIGHTS))
    with pytest.raises(ValueError, match="lacks weights of"):
        load_weights(model, ckpt, cfg, parts=("image_tokenizer.",))
    with pytest.raises(ValueError, match="no weights under"):
        load_weights(model, ckpt, cfg, parts=("no_such_part.",))
