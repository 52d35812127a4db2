"""Where a polygon target starts (model.polygon_free_start; losses.nearest_start)."""

import math

import numpy as np
import torch

from visionllm.modeling.losses import answer_loss, nearest_start, polygon_starts
from visionllm.tasks.polygons import resample_polygon, shoelace


def _square(turn_deg: float, n: int, size: float = 0.3, centre=(0.5, 0.5)) -> torch.Tensor:
    """A square turned by ``turn_deg``, resampled as polygon targets are (from its top-most point)."""
    a = math.radians(turn_deg) + math.pi / 4 + math.pi / 2 * np.arange(4)
    corners = np.stack([centre[0] + size / 2 * math.sqrt(2) * np.cos(a),
                        centre[1] + size / 2 * math.sqrt(2) * np.sin(a)], 1)
    return torch.tensor(resample_polygon(corners, n), dtype=torch.float32).flatten()


def test_starts_are_the_same_ring_in_the_same_direction():
    ring = _square(10.0, 8)[None]
    starts = polygon_starts(ring)
    assert starts.shape == (1, 8, 16)
    assert torch.equal(starts[0, 0], ring[0])
    pts = ring.view(8, 2)
    for s in range(8):
        turned = starts[0, s].view(8, 2)
        assert torch.equal(turned, torch.roll(pts, -s, 0))
        assert shoelace(turned.numpy()) > 0  # clockwise with y down, as the targets run


def test_nearest_start_finds_the_ring_the_answer_follows():
    ring = _square(20.0, 12)[None]
    for s in (0, 3, 7):
        answer = polygon_starts(ring)[0, s] + 0.01
        assert torch.equal(nearest_start(answer[None], ring)[0], polygon_starts(ring)[0, s])


def test_an_answer_started_elsewhere_costs_nothing_with_a_free_start():
    ring = _square(30.0, 8)
    cls = torch.zeros(1, 2)
    for s in (1, 5):
        goal = polygon_starts(ring[None])[0, s]
        loc = torch.full((1, 16, 1025), -1e4)
        bins = (goal * 512).round().long() + 512 - 256  # anchors at 0.5 below: offset = goal - 0.5
        loc[0, torch.arange(16), bins] = 0.0
        anchors = torch.full((1, 16), 0.5)
        args = (cls, loc, anchors, torch.tensor([0]), ring[None])
        free, _ = answer_loss(*args, is_box=False, assignment=(torch.tensor([0]), torch.tensor([0])), free_start=True)
        fixed, _ = answer_loss(*args, is_box=False, assignment=(torch.tensor([0]), torch.tensor([0])))
        assert free["loss_loc_l1"] < 0.03 < 0.1 < fixed["loss_loc_l1"]  # rounding to bins: up to 1/1024 a coordinate


def test_the_matching_reads_the_nearest_start_too():
    rings = torch.stack([_square(15.0, 8, size=0.2, centre=(0.3, 0.3)), _square(15.0, 8, size=0.2, centre=(0.34, 0.3))])
    # group 0 answers ring 0 started at its fourth point, group 1 ring 1 as it starts: with the
    # top-most start only, group 0 looks nearer to ring 1 than to ring 0
    answers = torch.stack([polygon_starts(rings[:1])[0, 4], rings[1]])
    loc = torch.full((2, 16, 1025), -1e4)
    loc[torch.arange(2)[:, None], torch.arange(16), ((answers - 0.5) * 512).round().long() + 512] = 0.0
    anchors = torch.full((2, 16), 0.5)
    cls = torch.zeros(2, 2)
    free, _ = answer_loss(cls, loc, anchors, torch.tensor([0, 0]), rings, is_box=False, free_start=True)
    assert free["loss_loc_l1"] < 0.05


def test_a_square_that_jumps_its_start_is_learned_sharp_only_with_a_free_start():
    # a square turned by -1 and +1 degrees: alike, but the top-most point (where the targets
    # start) is its top-right corner in one and its top-left in the other
    rings = [_square(-1.0, 8), _square(1.0, 8)]
    assert (rings[0] - rings[1]).abs().max() > 0.1
    anchors = torch.full((1, 16), 0.5)
    cls = torch.zeros(1, 2)
    errors = {}
    for free in (False, True):
        torch.manual_seed(0)
        loc = torch.zeros(1, 16, 1025, requires_grad=True)
        opt = torch.optim.Adam([loc], lr=0.05)
        for step in range(300):
            ring = rings[step % 2]
            parts, _ = answer_loss(cls, loc, anchors, torch.tensor([0]), ring[None], is_box=False,
                                   assignment=(torch.tensor([0]), torch.tensor([0])), free_start=free)
            opt.zero_grad()
            (parts["loss_loc_ce"] + parts["loss_loc_l1"]).backward()
            opt.step()
        answer = anchors + ((loc.detach().argmax(-1) - 512).float() / 512)
        errors[free] = max((nearest_start(answer, r[None]) - answer).abs().max().item() for r in rings)
    assert errors[True] < 0.03 < 0.1 < errors[False]
