"""Token naming (model.token_names): each image token matched to an object names it in words
through the LLM's own head, at one layer."""

import pytest
import torch
from hydra.errors import InstantiationException

from tests.helpers import tiny_model_and_sets
from visionllm.data.coco import object_name
from visionllm.data.transforms import collate


def test_an_object_in_words():
    assert object_name({"category_name": "circle", "attributes": ["red"]}) == "red circle"
    assert object_name({"category_name": "circle", "attributes": []}) == "circle"
    assert object_name({"category_name": "circle"}) == "circle"
    # a described class set's name already says the colour: it is said once
    assert object_name({"category_name": "red shape", "attributes": ["red"]}) == "red shape"


def test_targets_name_their_objects(shapes_root, tmp_path):
    """Detection, segmentation and grounding targets carry one name per object, with its
    colour, aligned with the labels."""
    _, ds = tiny_model_and_sets(shapes_root, tmp_path)
    colours = {"red", "green", "blue", "yellow", "purple", "orange"}
    for task in ("detection", "segmentation", "grounding"):
        sample = ds.sets[task][0]
        t = sample["target"]
        assert len(t["names"]) == len(t["labels"]) > 0, task
        for name, label in zip(t["names"], t["labels"].tolist()):
            words = name.split()
            assert words[0] in colours and len(words) == 2, (task, name)
            if task != "grounding":  # there the class is the referring expression
                assert sample["request"].classes[label] == words[-1], (task, name)


def _names_loss(model, batch):
    return model(batch)["loss_names"]


def test_the_naming_loss_trains_the_tokens_and_is_learnt(shapes_root, tmp_path):
    """The loss is there only when asked for; it reaches the image tokens (through the LLM's
    first layer) and the tokenizer; a few steps on one batch lower it; and no hook is left on
    the LLM after a pass."""
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0"])
    plain, _ = tiny_model_and_sets(shapes_root, tmp_path / "plain")
    batch = collate([ds.sets["detection"][0], ds.sets["segmentation"][1], ds.sets["grounding"][2], ds.sets["vqa"][0]])
    assert "loss_names" not in plain(batch)
    model.train()
    losses = model(batch)
    assert losses["loss_names"] > 0
    losses["loss_names"].backward()
    assert model.token_proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_tokenizer.decoder.parameters())
    assert all(not layer._forward_hooks for layer in model.llm.decoder.layers)

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(_names_loss(model, batch))
    for _ in range(15):
        loss = _names_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(_names_loss(model, batch)) < 0.7 * first


@pytest.mark.parametrize("layer", [0, 1])
def test_any_layer_may_name_them(shapes_root, tmp_path, layer):
    """Layer 0 reads the LLM's input (the image tokens themselves), the last layer (the tiny
    LLM has one) its output; past the last layer is a clear error."""
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", f"model.token_names_layer={layer}"])
    batch = collate([ds.sets["detection"][0]])
    loss = model(batch)["loss_names"]
    loss.backward()
    assert loss > 0 and model.token_proj.weight.grad.abs().sum() > 0
    with pytest.raises(InstantiationException, match="token_names_layer must be in 0..1"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad", ["model.token_names=1.0", "model.token_names_layer=2"])


def test_the_probe_reads_what_the_loss_trains(shapes_root, tmp_path):
    """tools/probe_tokens.py's "named" logits at a token are the naming loss's logits there,
    for the same words."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from probe_tokens import _first_word_ids, _named_logits

    from visionllm.modeling.decoding import splice_image_tokens

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0"])
    model.eval()
    batch = collate([ds.sets["detection"][0], ds.sets["detection"][1]])
    with torch.no_grad():
        _, _, v = model._image_tokens(batch)
        named = _named_logits(model, batch, v, ["circle", "star", "blue", "red"])
        prefix, valid, ids = splice_image_tokens(model.llm, batch["instructions"], v)
        with model._layer_output() as seen:
            model.llm.decoder(inputs_embeds=prefix, attention_mask=valid.long(), use_cache=False)
        words = torch.tensor(_first_word_ids(model, ["circle", "star", "blue", "red"]))
        at = (ids[1] == model.llm.vocab.image).nonzero()[:, 0]
        full = model.llm.logits(model.llm.decoder.norm(seen["out"][1, at[3]]), torch.arange(model.llm.vocab.image))
    assert named.shape == (2, model.num_queries, 4)
    torch.testing.assert_close(torch.as_tensor(named[1, 3]), full[words])


def test_side_words_follow_the_image_not_the_canvas():
    """An object's side is the half of the image (not of the padded canvas) its centre is in,
    as the built-in position questions say it."""
    from visionllm.modeling.naming import image_extent, side_words

    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    mask[0, :4, :] = False  # a wide image: the top half of the canvas
    mask[1, :, :2] = False  # a tall one: the left quarter
    extent = image_extent(mask)
    torch.testing.assert_close(extent, torch.tensor([[1.0, 0.5], [0.25, 1.0]]))
    centers = torch.tensor([[0.2, 0.3], [0.6, 0.1]])
    assert side_words(centers, extent[0]) == ["left bottom", "right top"]
    assert side_words(centers, extent[1]) == ["right top", "right top"]
    assert side_words(None, extent[0]) is None


def test_token_sides_are_said_but_never_looked_for(shapes_root, tmp_path):
    """With model.token_sides the naming target holds the side words too (the loss changes),
    but the copy's pointer does not count them as name words; it needs token naming."""
    over = ["model.token_names=1.0", "model.named_copy=true"]
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, [*over, "model.token_sides=true"])
    plain, _ = tiny_model_and_sets(shapes_root, tmp_path / "plain", over)
    plain.load_state_dict(model.state_dict())
    batch = collate([ds.sets["detection"][0], ds.sets["grounding"][1]])
    with torch.no_grad():
        sided, named = float(model(batch)["loss_names"]), float(plain(batch)["loss_names"])
    assert sided > named > 0  # two more words to say, none of which the random head favours
    noted = model.named_copy.name_words
    name = ds.sets["detection"][0]["target"]["names"][0]
    assert noted[model._word_ids(name)].all()
    assert torch.equal(noted, plain.named_copy.name_words)  # the same name words, side words or not
    with pytest.raises(InstantiationException, match="token_sides .* needs model.token_names > 0"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad", ["model.token_sides=true"])
    # as a share: the side words' part of the target, the name's words keep the rest
    model.token_sides = 0.2
    with torch.no_grad():
        light = float(model(batch)["loss_names"])
    model.token_sides = 0.0  # off: no side words at all
    with torch.no_grad():
        off = float(model(batch)["loss_names"])
    assert off == pytest.approx(named, rel=1e-3) and named < light < sided  # the loss is linear in the share
    with pytest.raises(InstantiationException, match="token_sides must be"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad2", [*over, "model.token_sides=1.5"])
