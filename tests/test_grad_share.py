"""tools/grad_share.py: each loss term's gradient lands on the parts it can reach, and the
shares of a part add up to one."""

import importlib.util
from pathlib import Path

import pytest

from helpers import tiny_model_and_sets

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("grad_share", ROOT / "tools" / "grad_share.py")
grad_share = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grad_share)


def test_parts_by_parameter_name():
    assert grad_share.part_of("image_tokenizer.backbone.body.conv1.weight") == "backbone"
    assert grad_share.part_of("image_tokenizer.decoder.0.ffn.weight") == "image tokenizer"
    assert grad_share.part_of("loc_embed.layers.0.weight") == "projections"
    assert grad_share.part_of("llm.model.base_model.model.lm_head.weight") == "LLM"


def test_each_term_reaches_what_it_can(shapes_root, tmp_path):
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path)
    model.train()
    batch = collate([ds.sets["detection"][0], ds.sets["vqa"][0]])
    norms = grad_share.term_norms(model, batch)
    assert {"loss_text", "loss_cls", "loss_tok_obj"} <= set(norms)
    assert norms["loss_text"]["LLM"] > 0 and norms["loss_text"]["projections"] > 0
    assert norms["loss_text"].get("class pointer", 0.0) == 0.0  # text never reads class slots
    assert norms["loss_tok_obj"].get("LLM", 0.0) == 0.0  # the tokenizer's own loss stops before the LLM
    table = grad_share.shares([norms, {}])  # a batch without any term counts zero
    for part, row in table.items():
        assert sum(c["share"] for c in row.values()) == pytest.approx(1.0), part
    assert table["LLM"]["loss_text"]["norm"] == pytest.approx((norms["loss_text"]["LLM"] / 2) ** 0.5)
