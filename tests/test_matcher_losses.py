import itertools

import torch

from visionllm.modeling.losses import (
    answer_loss,
    expected_offsets,
    location_ce,
    tokenizer_loss,
    two_hot,
)
from visionllm.modeling.matcher import hungarian


def test_hungarian_is_optimal():
    g = torch.Generator().manual_seed(0)
    for M, n in [(5, 3), (4, 4), (3, 0), (6, 1)]:
        cost = torch.rand(M, n, generator=g)
        i, j = hungarian(cost)
        assert len(i) == min(M, n) and len(set(i.tolist())) == len(i)
        if n:
            best = min(sum(cost[p, t] for t, p in enumerate(perm)) for perm in itertools.permutations(range(M), n))
            assert abs(cost[i, j].sum() - best) < 1e-6


def test_two_hot_and_expectation():
    lo, hi, w = two_hot(torch.tensor([-512.0, 0.25, 511.5, 512.0]))
    assert lo.tolist() == [0, 512, 1023, 1023] and hi.tolist() == [1, 513, 1024, 1024]
    assert torch.allclose(w, torch.tensor([0.0, 0.25, 0.5, 1.0]))
    # a distribution peaked at bin k has expectation k/512
    logits = torch.full((1025,), -1e4)
    logits[512 + 100] = 0
    assert abs(expected_offsets(logits).item() - 100 / 512) < 1e-6


def test_location_ce_prefers_near_bins():
    target = torch.tensor([[0.1]])
    near = torch.full((1, 1, 1025), -10.0)
    near[0, 0, 512 + 51] = 10
    far = torch.full((1, 1, 1025), -10.0)
    far[0, 0, 512 - 300] = 10
    assert location_ce(near, target) < location_ce(far, target)


def test_answer_loss_matches_and_learns():
    torch.manual_seed(0)
    M, K = 6, 2
    anchors = torch.rand(M, 2) * 0.5 + 0.25
    labels = torch.tensor([1, 0])
    coords = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]])
    cls = torch.zeros(M, K + 1, requires_grad=True)
    loc = torch.zeros(M, 4, 1025, requires_grad=True)
    opt = torch.optim.Adam([cls, loc], lr=0.1)
    first = None
    for _ in range(60):
        parts, n = answer_loss(cls, loc, anchors, labels, coords, is_box=True)
        total = sum(parts.values())
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert n == 2 and {"loss_cls", "loss_loc_ce", "loss_loc_l1", "loss_loc_giou"} <= set(parts)
    assert total.item() < 0.5 * first
    # no objects: only the no-object class loss
    parts, n = answer_loss(cls, loc, anchors, labels[:0], coords[:0], is_box=True)
    assert n == 0 and set(parts) == {"loss_cls"} and torch.isfinite(parts["loss_cls"])


def test_tokenizer_loss_finite_with_empty_images():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    points = torch.rand(2, 3, 5, 2, requires_grad=True)
    out, assigned = tokenizer_loss(logits, points, [torch.rand(2, 2), torch.zeros(0, 2), torch.rand(1, 2)])
    sum(out.values()).backward()
    assert [len(i) for i, _ in assigned] == [2, 0, 1]
    assert all(torch.isfinite(v) for v in out.values()) and logits.grad is not None
