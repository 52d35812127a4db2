"""model.name_location: a name's words also score each group's box ("the leftmost circle")."""

import math

import pytest
import torch

from visionllm.modeling.name_location import NameLocation, box_features, relative_features


def test_box_features_of_a_box_and_of_a_polygon():
    box = torch.tensor([[0.2, 0.4], [0.6, 0.5]])  # two corners, x1 y1 x2 y2 = .2 .4 .6 .5
    f = box_features(box)
    expected = [2 * (0.4 - 0.5), 2 * (0.45 - 0.5), 2 * (0.2 - 0.5), 2 * (0.4 - 0.5), 2 * (0.6 - 0.5),
                2 * (0.5 - 0.5), math.log(0.4) / 2, math.log(0.1) / 2]
    assert torch.allclose(f, torch.tensor(expected), atol=1e-6)
    # a polygon's features are those of its bounding box; corners in any order
    poly = torch.tensor([[0.6, 0.45], [0.2, 0.5], [0.4, 0.4], [0.3, 0.45]])
    assert torch.allclose(box_features(poly), f, atol=1e-6)
    # a point: no width, read at the floor (1 % of the canvas) rather than as log 0
    assert torch.allclose(box_features(torch.tensor([[0.3, 0.3], [0.3, 0.3]]))[6:], torch.full((2,), math.log(0.01) / 2))


def test_untrained_it_adds_nothing_and_moves_neither_boxes_nor_words():
    loc = NameLocation(16)
    words = torch.randn(2, 3, 16, requires_grad=True)
    points = torch.rand(2, 5, 2, 2, requires_grad=True)
    out = loc(words, points)
    assert out.shape == (2, 5, 3) and torch.equal(out, torch.zeros(2, 5, 3))
    torch.nn.init.normal_(loc.proj.weight)
    loc(words, points).sum().backward()
    assert points.grad is None and words.grad is None  # it reads them and moves neither
    assert loc.proj.weight.grad.abs().sum() > 0


def test_it_learns_at_its_own_rate_without_decaying_faster():
    from visionllm.engine.optim import param_groups

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.loc = NameLocation(16)

    groups = param_groups(Two(), lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    by_size = {sum(p.numel() for p in g["params"]): g for g in groups}
    head = by_size[NameLocation(16).proj.weight.numel()]
    assert head["lr"] == 1e-3 * NameLocation.lr_mult
    assert abs(head["lr"] * head["weight_decay"] - 1e-3 * 0.05) < 1e-12  # AdamW's decay a step unchanged
    assert by_size[16]["lr"] == 1e-3 and by_size[16]["weight_decay"] == 0.05  # the body's weight


def test_it_stays_at_zero_until_its_start():
    from omegaconf import OmegaConf

    from visionllm.engine.optim import build_optimizer

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.loc = NameLocation(16, start=0.5)

    model = Two()
    tc = OmegaConf.create({"lr": 1e-3, "backbone_lr_mult": 0.1, "weight_decay": 0.05, "warmup_steps": 2, "max_steps": 10})
    opt, sched = build_optimizer(model, tc)
    x = torch.randn(3, 16)
    body_before = model.body.weight.detach().clone()
    for step in range(10):
        opt.zero_grad()
        words = x[None, None].expand(1, 1, 3, 16)[:, :, 0]  # (1, K=1, H)
        points = torch.rand(1, 4, 2, 2)
        (model.loc(words, points).sum() + model.body(torch.ones(4)).sum()).backward()
        opt.step()
        sched.step()
        # held at zero until step 5 (progress 0.5), then it learns; the rest learns from the start
        assert bool(model.loc.proj.weight.abs().sum() == 0) == (step < 5), step
    assert not torch.equal(model.body.weight, body_before)
    with pytest.raises(ValueError, match="name_location_from"):
        NameLocation(16, start=1.0)


@pytest.mark.parametrize("relative", [False, True])
def test_it_learns_which_way_a_word_points(relative):
    """Names "<side> <noun>", each image with three objects of the noun and two others: the
    target is the noun's object furthest to the side. With the name score alone (the noun's
    objects alike), the best group is one of three; with the box term learned through a softmax
    over the groups (as the referent loss teaches), it is the furthest one."""
    g = torch.Generator().manual_seed(0)
    H = 16
    sides = torch.randn(4, H, generator=g)  # left, right, top, bottom
    noun = torch.randn(H, generator=g)
    loc = NameLocation(H, relative=relative)
    opt = torch.optim.Adam(loc.parameters(), lr=1e-3 * NameLocation.lr_mult)

    def batch(n=64):
        side = torch.randint(0, 4, (n,), generator=g)
        centres = torch.rand(n, 5, 2, generator=g) * 0.8 + 0.1
        half = torch.full((n, 5, 2), 0.04)
        points = torch.stack([centres - half, centres + half], 2)  # (n, 5, 2 corners, 2)
        match = torch.tensor([4.0, 4.0, 4.0, -4.0, -4.0])  # the first three fit the noun
        axis = torch.where(side < 2, 0, 1)
        sign = torch.where(side % 2 == 0, -1.0, 1.0)  # left / top: smallest coordinate
        key = sign[:, None] * centres.gather(2, axis[:, None, None].expand(n, 5, 1))[..., 0]  # (n, 5) larger = wanted
        target = key[:, :3].argmax(1)
        words = torch.nn.functional.normalize(sides[side] + noun, dim=-1)[:, None] * math.sqrt(H)
        return words, points, match, target

    for _ in range(300):
        words, points, match, target = batch()
        logits = match + loc(words, points, match[None, :, None].expand(len(points), -1, 1))[..., 0]
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    words, points, match, target = batch(400)
    picked = (match + loc(words, points, match[None, :, None].expand(len(points), -1, 1))[..., 0]).argmax(1)
    assert (picked == target).float().mean() > 0.9


def test_relative_features_are_a_place_among_look_alikes():
    """Three circles at x 0.30, 0.35 and 0.60 and a star further left at 0.10: on the x centre
    the leftmost circle is near +1 (every other circle lies to its right), the middle one
    between, the rightmost near -1; the star, which does not fit "circle", hardly counts."""
    xs = torch.tensor([0.30, 0.35, 0.60, 0.10])
    boxes = torch.stack([torch.stack([xs - 0.02, torch.full_like(xs, 0.5)], -1),
                         torch.stack([xs + 0.02, torch.full_like(xs, 0.54)], -1)], 1)  # (4, 2 corners, 2)
    fit = torch.tensor([6.0, 6.0, 6.0, -6.0])[None, :, None]  # (1, M, K = 1)
    rel = relative_features(box_features(boxes)[None], fit)[0, :, 0, 0]  # x centre
    assert rel[0] > 0.95 and rel[2] < -0.95 and -0.5 < rel[1] < 0.5, rel
    assert rel[3] > 0.95  # everything that fits lies right of the star too
    # only the order among what fits counts: move the circles apart, same places
    wide = boxes.clone()
    wide[:3, :, 0] += torch.tensor([-0.2, 0.0, 0.3])[:, None]
    rel_wide = relative_features(box_features(wide)[None], fit)[0, :, 0, 0]
    assert rel_wide[0] > 0.95 and rel_wide[2] < -0.95
    with pytest.raises(ValueError, match="fit"):
        NameLocation(8, relative=True)(torch.zeros(1, 1, 8), boxes[None])


@pytest.mark.parametrize("relative", [False, True])
def test_the_model_takes_it_and_trains_it(shapes_root, tmp_path, relative):
    from helpers import answers_without, tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="grounding", extra=[
        "model.name_location=true", f"model.name_location_relative={str(relative).lower()}"])
    assert isinstance(model.name_location, NameLocation) and model.name_location.relative == relative
    batch = collate([ds.sets["grounding"][i] for i in range(2)])
    out = model(batch)
    out["loss"].backward()
    assert model.name_location.proj.weight.grad.abs().sum() > 0
    # with the map at zero it answers as the model without it
    with_it, without = answers_without(model, "name_location", batch)
    assert all(torch.equal(a["probs"], b["probs"]) for a, b in zip(with_it, without))
    torch.nn.init.normal_(model.name_location.proj.weight)
    with torch.no_grad():
        moved = model.predict(batch)
    assert not all(torch.allclose(a["probs"], b["probs"]) for a, b in zip(moved, without))


def test_a_start_without_the_term_is_an_error(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets

    with pytest.raises(Exception, match="it needs model.name_location=true"):
        tiny_model_and_sets(shapes_root, tmp_path, extra=["model.name_location_from=0.5"], task="grounding")
    with pytest.raises(Exception, match="it needs model.name_location=true"):
        tiny_model_and_sets(shapes_root, tmp_path, extra=["model.name_location_relative=true"], task="grounding")

