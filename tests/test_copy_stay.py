"""model.copy_stay: the moving pointer of the named copy remembers where it was along an answer,
so a shape word can take the shape of the object whose colour the word before took, and a list
can go on to objects it has not written yet."""

import pytest
import torch

from tests.helpers import tiny_model_and_sets
from tests.test_copy_follow import (  # token 0 a red circle, 1 a blue star
    BLUE,
    CIRCLE,
    RED,
    STAR,
    WHAT,
    _named,
)
from visionllm.modeling.named_copy import NamedCopy, Trail

H = 16


def _copy(stay=True):
    copy = NamedCopy(hidden_size=H, bare_of=torch.tensor([5, 6, CIRCLE, STAR, WHAT, 5, 6, 7]), follow=True, stay=stay)
    copy.note_names([RED, BLUE, CIRCLE, STAR])
    return copy


def _written(copy, table, states):
    """The same answer written one word at a time, the trail carried along."""
    trail, rows = Trail(), []
    for t in range(states.shape[0]):
        rows.append(copy.move(states[t : t + 1], table[0][None], [table[2]], trail=trail))
    return torch.cat(rows)


def test_untrained_it_moves_as_without_it():
    torch.manual_seed(0)
    with_stay, without = _copy(), _copy(stay=False)
    without.load_state_dict({k: v for k, v in with_stay.state_dict().items() if not k.startswith("stay.")})
    torch.nn.init.normal_(with_stay.follow.weight, std=0.5)
    without.follow.weight.data.copy_(with_stay.follow.weight)
    tokens, states = torch.randn(2, H), torch.randn(5, H)
    table = with_stay.lookup(_named(), [WHAT], tokens)
    expected = without.move(states, table[0].expand(5, -1, -1), [table[2]] * 5)
    torch.testing.assert_close(with_stay.move(states, table[0].expand(5, -1, -1), [table[2]] * 5), expected)
    torch.testing.assert_close(_written(with_stay, table, states), expected)


def test_teacher_forcing_and_writing_walk_the_same_path():
    """Training runs the path over a whole answer at once (two answers side by side here, of
    different lengths); writing runs it a word at a time: the same pointers."""
    torch.manual_seed(1)
    copy = _copy()
    for p in (copy.follow.weight, copy.stay.weight, copy.stay.bias):
        torch.nn.init.normal_(p, std=1.0)
    one = copy.lookup(_named(), [WHAT], torch.randn(2, H))
    two = copy.lookup(_named(), [WHAT], torch.randn(2, H))
    s1, s2 = torch.randn(6, H), torch.randn(3, H)
    forced = copy.move(torch.cat([s1, s2]), torch.stack([one[0]] * 6 + [two[0]] * 3), [one[2]] * 6 + [two[2]] * 3)
    torch.testing.assert_close(forced[:6], _written(copy, one, s1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forced[6:], _written(copy, two, s2), atol=1e-5, rtol=1e-5)
    # the path matters: the same states in another order point elsewhere than a fixed pointer would
    assert not torch.allclose(forced[1:6], copy.move(s1[1:], one[0].expand(5, -1, -1), [one[2]] * 5), atol=1e-3)


def test_it_stays_on_the_object_and_leaves_the_covered():
    """The first word points at the red circle; the second's own query leans to the blue star.
    Staying takes the circle's shape; covering takes the star's."""
    torch.manual_seed(0)
    copy = _copy()
    tokens = torch.randn(2, H)
    table = copy.lookup(_named(), [WHAT], tokens)
    # word t's state is the t-th unit vector, so its query is column t of the follow map:
    # word 0 points at token 0 strongly, word 1 at token 1 a little
    states = torch.eye(2, H)
    k0, k1 = table[2][2]
    copy.follow.weight.data.zero_()
    copy.follow.weight.data[:, 0] = 0.2 * (k0 - k1)
    copy.follow.weight.data[:, 1] = 0.02 * (k1 - k0)
    moved = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0].exp()
    assert moved[0, RED] > 0.45 and moved[1, STAR] > moved[1, CIRCLE]  # no memory: the star's shape
    copy.stay.bias.data = torch.tensor([3.0, 0.0])  # stay
    moved = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0].exp()
    assert moved[1, CIRCLE] > 0.45 > 0.05 > moved[1, STAR]  # each token says two words alike
    copy.stay.bias.data = torch.tensor([0.0, 5.0])  # leave what is covered
    moved = copy.move(states, table[0].expand(2, -1, -1), [table[2]] * 2)[:, 0].exp()
    assert moved[1, STAR] > 0.45 > 0.05 > moved[1, CIRCLE]


def test_it_needs_the_moving_pointer(shapes_root, tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException), match="copy_stay"):
        tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true",
                                                    "model.copy_stay=true"])
    with pytest.raises(ValueError, match="follow"):
        NamedCopy(hidden_size=H, bare_of=torch.arange(8), stay=True)
