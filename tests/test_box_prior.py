"""model.box_prior: each token also regresses a box, and box and polygon answers are offsets from
its points (its corners; the ellipse inside it for polygons), not from the token's centre."""

import pytest
import torch

from visionllm.modeling.box_prior import box_head, prior_boxes, prior_loss, slot_anchors, target_box
from visionllm.tasks.polygons import shoelace


def test_slot_anchors_are_the_corners_or_the_inscribed_ellipse_clockwise_from_the_top():
    box = torch.tensor([[0.0, 0.0, 2.0, 4.0]])
    assert torch.equal(slot_anchors(box, 2), box)
    four = slot_anchors(box, 4).view(4, 2)
    torch.testing.assert_close(four, torch.tensor([[1.0, 0.0], [2.0, 2.0], [1.0, 4.0], [0.0, 2.0]]))  # top, right, bottom, left
    sixteen = slot_anchors(box, 16).view(16, 2).numpy()
    assert shoelace(sixteen) > 0  # clockwise as displayed, as the polygon targets run (tasks/polygons.py)
    assert slot_anchors(torch.rand(3, 5, 4), 8).shape == (3, 5, 16)
    with pytest.raises(ValueError, match="at least 2 points"):
        slot_anchors(box, 1)


def test_target_box_of_a_box_and_of_a_polygon():
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert torch.equal(target_box(boxes), boxes)
    poly = torch.tensor([[0.5, 0.1, 0.9, 0.5, 0.5, 0.8, 0.2, 0.5]])
    torch.testing.assert_close(target_box(poly), torch.tensor([[0.2, 0.1, 0.9, 0.8]]))


def test_the_head_is_the_specialists_and_its_loss_is_zero_on_its_own_boxes():
    head = box_head(8)
    assert set(head.state_dict()) == {f"layers.{i}.{w}" for i in range(3) for w in ("weight", "bias")}
    embeds, points = torch.randn(2, 5, 8), torch.rand(2, 5, 2)
    boxes = prior_boxes(head, embeds, points)
    assert boxes.shape == (2, 5, 4) and bool((boxes[..., 2:] >= boxes[..., :2]).all())
    i = torch.tensor([0, 3])
    same = prior_loss(boxes, [(1, i, boxes[1, i].detach())], num=2.0)
    assert same["loss_prior_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["loss_prior_giou"].item() == pytest.approx(0.0, abs=1e-5)
    off = prior_loss(boxes, [(1, i, boxes[1, i].detach().flip(0))], num=2.0)
    assert float(off["loss_prior_l1"]) > 0
    off["loss_prior_l1"].backward()
    assert head.layers[0].weight.grad.abs().sum() > 0


def test_a_generalist_with_the_prior_learns_it_and_answers_from_its_points(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, extra=["model.box_prior=true"])
    samples = [ds.sets["detection"][0], ds.sets["segmentation"][0], ds.sets["grounding"][0], ds.sets["vqa"][0]]
    batch = collate(samples)
    out = model(batch)
    assert float(out["loss_prior_l1"]) > 0 and float(out["loss_prior_giou"]) > 0
    out["loss"].backward()
    assert model.box_head.layers[-1].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        answers = model.predict(batch)
        toks, _, _ = model._image_tokens(batch)
        prior = model._prior(toks)
        # with the location logits at the zero bin, every answer is the prior's own points
        zero = torch.nn.functional.one_hot(torch.tensor(512), 1025).float() * 50
        model.llm.logits, logits = (lambda h, ids: zero.expand(*h.shape[:-1], -1) if len(ids) == 1025
                                    else logits(h, ids)), model.llm.logits
        try:
            at_zero = model.predict(batch)
        finally:
            model.llm.logits = logits
    assert answers[0]["points"].shape[1:] == (2, 2) and answers[1]["points"].shape[1] >= 3
    torch.testing.assert_close(at_zero[0]["points"].reshape(-1, 4), prior[0])
    n = at_zero[1]["points"].shape[1]
    torch.testing.assert_close(at_zero[1]["points"].reshape(-1, 2 * n), slot_anchors(prior[1], n))
