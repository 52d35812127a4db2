"""Training under bf16 autocast (``trainer.precision=bf16``, the GPU presets' setting) with every
option ``experiment=shapes`` turns on, and ``model.count_exist``: the loss is finite, every part
gets a gradient, and it is close to the float32 loss. CPU autocast takes the same paths as
CUDA's for these ops."""

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tests.helpers import tiny_model_and_sets
from visionllm.data.transforms import collate


def shapes_options() -> list[str]:
    """The model options conf/experiment/shapes.yaml sets (its plain values: the sizes and the
    loss weights it sets in sub-trees stay as the tiny model has them)."""
    exp = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/experiment/shapes.yaml")
    return [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in exp.model.items()
            if not isinstance(v, DictConfig)]


def test_bf16_autocast_trains_the_shapes_options(shapes_root, tmp_path):
    options = shapes_options()
    assert "model.named_copy=true" in options and "model.referent_loss=1.0" in options
    # and existence from the count in training too ("yes" and "no" one token each)
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, [*options, "model.count_exist=true",
                                                            "tokenizer_vocab_size=800"])
    model.named_copy.strength.bias.data.fill_(0.5)  # a little trained: the copy is used
    batch = collate([ds.sets[t][0] for t in ("detection", "segmentation", "grounding", "caption", "vqa")])
    with torch.no_grad():
        full = float(model(batch)["loss"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    loss = losses["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss.detach()) - full) < 0.05 * abs(full), (float(loss.detach()), full)
    loss.backward()
    for part in ("named_copy", "llm", "image_tokenizer"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
        assert all(g is None or torch.isfinite(g).all() for g in grads), part
