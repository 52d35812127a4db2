"""model.copy_follow: the named copy's pointer moves along an answer, by a query from each
position's state, so a caption that names nothing can copy one object's words, then another's."""

import pytest
import torch

from tests.helpers import tiny_model_and_sets
from visionllm.data.transforms import collate
from visionllm.modeling.named_copy import NamedCopy

RED, BLUE, CIRCLE, STAR, WHAT = range(5)


def _copy(follow=True):
    copy = NamedCopy(hidden_size=16, bare_of=torch.tensor([5, 6, CIRCLE, STAR, WHAT, 5, 6, 7]), follow=follow)
    copy.note_names([RED, BLUE, CIRCLE, STAR])
    return copy


def _named():
    logits = torch.zeros(2, 8)
    logits[0, [RED, CIRCLE]] = 6.0  # token 0: a red circle
    logits[1, [BLUE, STAR]] = 6.0  # token 1: a blue star
    return logits.log_softmax(-1)


def test_untrained_it_points_where_the_question_does():
    torch.manual_seed(0)
    copy = _copy()
    table = copy.lookup(_named(), [WHAT, CIRCLE], torch.randn(2, 16))
    assert len(table) == 3
    moved = copy.move(torch.randn(4, 16), table[0].expand(4, -1, -1), [table[2]] * 4)
    torch.testing.assert_close(moved, table[0].expand(4, -1, -1), atol=1e-5, rtol=0)
    assert len(_copy(follow=False).lookup(_named(), [WHAT], torch.randn(2, 16))) == 2


def test_it_learns_to_copy_one_object_then_the_other():
    """A caption asks about nothing, so the question's pointer is the same at every word and
    offers both colours alike. Two positions whose states differ learn to point at the red
    circle, then at the blue star."""
    torch.manual_seed(0)
    copy = _copy()
    tokens = torch.randn(2, 16)
    table = copy.lookup(_named(), [WHAT], tokens)
    states = torch.randn(2, 16)
    opt = torch.optim.Adam(copy.follow.parameters(), lr=0.05)
    before = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0].exp().detach()
    assert abs(float(before[0, RED] - before[0, BLUE])) < 1e-6  # the question alone cannot tell
    for _ in range(100):
        table = copy.lookup(_named(), [WHAT], tokens)
        log_c = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0]
        loss = -(log_c[0, RED] + log_c[1, BLUE])
        opt.zero_grad()
        loss.backward()
        opt.step()
    c = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0].exp().detach()
    assert c[0, RED] > 0.4 > 0.05 > c[0, BLUE] and c[1, BLUE] > 0.4 > 0.05 > c[1, RED], c[:, :4]
    # the bare forms move with it (word 5 is RED's bare form and its own)
    bare = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 1].exp().detach()
    torch.testing.assert_close(bare[0, 5], c[0, RED] + c[0, 5])


@pytest.mark.parametrize("stay", [False, True])  # model.copy_stay: tests/test_copy_stay.py
def test_the_model_trains_it_and_writes_with_it(shapes_root, tmp_path, stay):
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true",
                                                            "model.copy_follow=true", f"model.copy_stay={stay}"])
    batch = collate([ds.sets["caption"][0], ds.sets["vqa"][0]])
    model.named_copy.strength.bias.data.fill_(0.5)  # a little trained: the copy is used
    if stay:  # a pointer that moves, so where it was matters
        torch.nn.init.normal_(model.named_copy.follow.weight, std=0.5)
    model(batch)["loss"].backward()
    learned = model.named_copy.stay if stay else model.named_copy.follow
    assert learned.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(learned.weight, std=0.5)
        out = model.predict(collate([ds.sets["caption"][0]]), max_new_tokens=4)
        drawn = model.predict(collate([ds.sets["caption"][0]]), max_new_tokens=4, temperature=1.0, samples=3,
                              generator=torch.Generator().manual_seed(0))
    assert isinstance(out[0]["text"], str) and len(drawn[0]["texts"]) == 3


def test_it_needs_the_copy(shapes_root, tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException), match="copy_follow"):
        tiny_model_and_sets(shapes_root, tmp_path, ["model.copy_follow=true"])
