"""trainer.first_stage: one command trains the paper's stage 1 (here the specialist) into
OUTPUT_DIR/first_stage and starts the generalist from its image tokenizer."""

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from helpers import tiny_train_cfg
from visionllm.engine.train import train

STEPS = ["trainer.max_steps=2", "trainer.eval_every=1000", "trainer.tensorboard=false"]
# the specialist's model has no LLM: only the tokenizer's tiny sizes apply to it
STAGE = ["model.backbone.d_model=32", "model.image_tokenizer.num_queries=8", "model.image_tokenizer.enc_layers=1",
         "model.image_tokenizer.dec_layers=2", "model.image_tokenizer.d_ffn=64", "model.text_encoder.hidden_size=32",
         "model.text_encoder.num_layers=1", "data.image_size=64", "tokenizer_vocab_size=400", "trainer.batch_size=2",
         "trainer.num_workers=0", "trainer.warmup_steps=1", "trainer.eval_max_images=4", "trainer.eval_batch_size=4",
         "trainer.max_steps=2", "trainer.eval_every=1000", "trainer.tensorboard=false"]


def _params(path):
    return {k: v for k, v in load_file(str(path / "model.safetensors")).items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_the_first_stage_trains_once_and_starts_the_second(shapes_root, tmp_path, caplog):
    out = tmp_path / "run"
    spec = {"experiment": "shapes_specialist", "parts": ["image_tokenizer"], "overrides": STAGE}
    cfg = tiny_train_cfg(shapes_root, out, [*STEPS, "trainer.lr=0"])  # lr 0: the second stage keeps what it took
    cfg.trainer.first_stage = spec
    with caplog.at_level("INFO", logger="visionllm"):
        train(cfg)
    stage = out / "first_stage"
    assert (stage / "metrics.json").is_file() and "bbox_AP" in (stage / "metrics.json").read_text()
    first, second = _params(stage / "checkpoint"), _params(out / "checkpoint")
    assert "class_head.weight" in first and not any(k.startswith("class_head.") for k in second)
    shared = [k for k in second if k.startswith("image_tokenizer.")]
    assert shared and all(torch.equal(first[k], second[k]) for k in shared)
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.trainer.init_from == str(stage / "checkpoint") and list(saved.trainer.init_parts) == ["image_tokenizer"]

    # run again (as a resumed command would): the finished stage is not trained a second time
    mtime = (stage / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    cfg = tiny_train_cfg(shapes_root, out, [*STEPS, "trainer.lr=0", "trainer.resume=auto"])
    cfg.trainer.first_stage = spec
    with caplog.at_level("INFO", logger="visionllm"):
        train(cfg)
    assert "already finished" in caplog.text
    assert (stage / "checkpoint" / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_first_stage_is_checked_before_anything_trains(shapes_root, tmp_path):
    cfg = tiny_train_cfg(shapes_root, tmp_path / "a", STEPS)
    cfg.trainer.first_stage = {"experiment": "shapes_specialist"}
    cfg.trainer.init_from = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="set one of them"):
        train(cfg)
    cfg = tiny_train_cfg(shapes_root, tmp_path / "b", STEPS)
    cfg.trainer.first_stage = {"experiment": "shapes_specialist", "part": ["image_tokenizer"]}
    with pytest.raises(ValueError, match="takes experiment"):
        train(cfg)
    assert not (tmp_path / "b" / "first_stage").exists()
