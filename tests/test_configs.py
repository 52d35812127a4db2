"""Every experiment composes and instantiates; the paper's 7B preset on the meta device."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_cfg
from visionllm.engine.train import prepare_tokenizer

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    cfg = compose_cfg("train", [f"tokenizer_dir={d}", "tokenizer_vocab_size=400"])
    prepare_tokenizer(cfg, ["circle", "square", "is there one? yes", "is there one? no"])  # count_exist: one token each
    return d


def test_experiments_exist():
    assert {"shapes_tiny", "shapes", "coco_r50"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tok_dir):
    cfg = compose_cfg("train", [f"experiment={name}", f"tokenizer_dir={tok_dir}"])
    device = "meta" if name.startswith("coco_r50") else "cpu"
    with torch.device(device):
        model = instantiate(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    tok = model.image_tokenizer
    assert tok.num_queries == cfg.model.image_tokenizer.num_queries
    assert tok.d_model == cfg.model.backbone.d_model
    if name.startswith("coco_r50"):
        # ResNet-50 + BERT-base + 6+6 deformable layers + LLaMA-7B-sized decoder
        assert 6.3e9 < n < 7.5e9, n
        assert len(tok.encoder) == 6 and len(tok.decoder) == 6 and tok.num_queries == 100
        assert model.llm.hidden_size == 4096
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable < 0.1 * n  # LoRA + new token rows + the tokenizer, not the 7B base


def test_eval_and_infer_configs_compose():
    assert list(compose_cfg("eval", ["checkpoint=x"]).task.eval) == ["detection"]
    assert len(compose_cfg("eval", ["checkpoint=x", "task=all"]).task.eval) == 5
    for data in ("shapes", "coco", "refcoco"):
        assert compose_cfg("train", [f"data={data}"]).data.val
    assert compose_cfg("infer", ["checkpoint=x", "image=y"]).score_threshold > 0


# options that say whether weights move, not which weights there are: a second stage may freeze
# the backbone that its first stage trained (the paper's stage 2; experiment=shapes since run 40)
MOVES_ONLY = {("backbone", "frozen")}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_first_stage_trains_the_same_image_tokenizer(name):
    """An experiment's trainer.first_stage, with its overrides, builds the image tokenizer that the
    experiment then takes from it (its weights must load: the same parts, sizes and options)."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("train", [f"experiment={name}"])
    spec = cfg.trainer.get("first_stage")
    if not spec:
        pytest.skip("no first stage")
    stage = compose_cfg("train", [f"experiment={spec.experiment}", *(spec.get("overrides") or [])])
    assert cfg.data.image_size == stage.data.image_size
    # the specialist's box head goes to a model with a box prior (model.box_prior) only
    assert ("box_head" in (spec.get("parts") or [])) == bool(cfg.model.get("box_prior")), spec.get("parts")
    for part in ("image_tokenizer", "backbone", "text_encoder"):
        mine, theirs = OmegaConf.to_container(cfg.model[part]), OmegaConf.to_container(stage.model[part])
        for key in set(mine) | set(theirs):
            if (part, key) in MOVES_ONLY:
                continue
            if key in mine and key in theirs:
                assert mine[key] == theirs[key], (part, key)
            else:  # an option only one model has must be off in it (decoder_text, checkpointing)
                assert not mine.get(key, theirs.get(key)), (part, key)
