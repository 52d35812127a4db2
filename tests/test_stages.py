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

    # a second stage with the backbone frozen (frozen batch norms) takes the stage's backbone as it is,
    # its norms' running statistics too
    from hydra.utils import instantiate

    from visionllm.engine.checkpoint import load_weights
    frozen_cfg = OmegaConf.load(out / "config.yaml")
    frozen_cfg.model.backbone.frozen = True
    model = instantiate(frozen_cfg.model)
    load_weights(model, stage / "checkpoint", frozen_cfg, parts=("image_tokenizer.",))
    stage_all = load_file(str(stage / "checkpoint" / "model.safetensors"))
    body = {k: v for k, v in model.state_dict().items() if k.startswith("image_tokenizer.backbone.body.")}
    assert any(k.endswith("running_var") for k in body) and not any(p.requires_grad for p in
                                                                    model.image_tokenizer.backbone.body.parameters())
    assert all(torch.equal(v, stage_all[k]) for k, v in body.items())

    # with model.box_prior the generalist also takes the specialist's box head (parts box_head);
    # a model without the prior says it has no such part
    prior_cfg = OmegaConf.load(out / "config.yaml")
    prior_cfg.model.box_prior = True
    model = instantiate(prior_cfg.model)
    load_weights(model, stage / "checkpoint", prior_cfg, parts=("image_tokenizer.", "box_head."))
    assert all(torch.equal(v, stage_all[f"box_head.{k}"]) for k, v in model.box_head.state_dict().items())
    with pytest.raises(ValueError, match=r"no weights under \['box_head.'\]"):
        load_weights(instantiate(saved.model), stage / "checkpoint", saved, parts=("image_tokenizer.", "box_head."))


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


def test_a_frozen_backbone_must_start_from_weights(shapes_root, tmp_path):
    """experiment=shapes freezes its backbone in the second stage: a run that gives it no weights
    (no stage, no init_from holding it, no checkpoint) stops with a clear error before training."""
    from helpers import compose_cfg
    from visionllm.engine.stages import check_frozen_backbone

    cfg = tiny_train_cfg(shapes_root, tmp_path / "a", [*STEPS, "model.backbone.frozen=true"])
    with pytest.raises(ValueError, match="nothing gives the backbone weights"):
        train(cfg)
    assert not (tmp_path / "a" / "config.yaml").exists()
    cfg = tiny_train_cfg(shapes_root, tmp_path / "b", [*STEPS, "model.backbone.frozen=true",
                                                       f"trainer.init_from={tmp_path / 'elsewhere'}", "trainer.init_parts=[llm]"])
    with pytest.raises(ValueError, match=r"do not hold the backbone"):
        check_frozen_backbone(cfg)
    for parts in (["image_tokenizer"], ["image_tokenizer.backbone"], None):
        cfg.trainer.init_parts = parts
        check_frozen_backbone(cfg)  # the backbone comes with the parts (None: every weight)
    # the shipped experiment: frozen, with a first stage that hands on the image tokenizer
    shapes = compose_cfg("train", ["experiment=shapes"])
    assert shapes.model.backbone.frozen is True and "image_tokenizer" in shapes.trainer.first_stage.parts
    check_frozen_backbone(shapes)
    with pytest.raises(ValueError, match="model.backbone.frozen=false"):
        check_frozen_backbone(compose_cfg("train", ["experiment=shapes", "trainer.first_stage=null"]))
    check_frozen_backbone(compose_cfg("train", ["experiment=shapes", "trainer.first_stage=null", "model.backbone.frozen=false"]))
