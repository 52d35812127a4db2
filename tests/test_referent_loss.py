"""model.referent_loss: a one-object answer's group taught to outscore the image's other groups."""

import pytest
import torch

from visionllm.modeling.losses import answer_loss


def _one_referent(cls_logits, group, w=1.0, labels=None):
    M = cls_logits.shape[0]
    labels = torch.zeros(1, dtype=torch.long) if labels is None else labels
    coords = torch.tensor([[0.2, 0.2, 0.4, 0.4]]).repeat(len(labels), 1)
    assignment = (torch.tensor([group] * len(labels)), torch.arange(len(labels)))
    return answer_loss(cls_logits, torch.zeros(M, 4, 1025), torch.full((M, 2), 0.3), labels, coords,
                       is_box=True, assignment=assignment, w_referent=w)[0]


def test_it_is_the_groups_softmax_at_the_referents_group():
    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    out = _one_referent(logits, group=4)
    odds = logits[:, 0] - logits[:, 1]  # log p(class) - log p(no object)
    assert torch.allclose(out["loss_referent"], -(odds.log_softmax(0)[4]))
    # the referent's group ahead of every other: near zero; a look-alike ahead of it: large
    ahead = torch.tensor([[-4.0, 0.0]] * 6)
    ahead[4] = torch.tensor([6.0, 0.0])
    behind = ahead.clone()
    behind[1] = torch.tensor([9.0, 0.0])
    assert _one_referent(ahead, 4)["loss_referent"] < 0.05 < 1.0 < _one_referent(behind, 4)["loss_referent"]


def test_the_look_alike_is_pushed_down_hardest():
    """Against the class cross-entropy alone, the loss moves the group that competes with the
    referent (a look-alike that scores high) more than a group already scored low."""
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-3.0, 0.0], [-3.0, 0.0]], requires_grad=True)
    _one_referent(logits, group=0)["loss_referent"].backward()
    g = logits.grad[:, 0]
    assert g[0] < 0  # the referent's class logit goes up
    assert g[1] > 5 * g[2] > 0  # the look-alike's goes down, far more than a weak group's


def test_only_one_object_under_one_class():
    logits = torch.randn(5, 3)  # two classes: a detection answer
    out = answer_loss(logits, torch.zeros(5, 4, 1025), torch.full((5, 2), 0.3), torch.tensor([0, 1]),
                      torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]]), is_box=True, w_referent=1.0)[0]
    assert "loss_referent" not in out
    two = _one_referent(torch.randn(5, 2), group=1, labels=torch.zeros(2, dtype=torch.long))
    assert "loss_referent" not in two  # two objects of one class: detection, not a referent
    assert "loss_referent" not in _one_referent(torch.randn(5, 2), group=1, w=0.0)


def test_the_model_adds_it_for_grounding_and_refuses_a_negative_weight(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate
    from visionllm.modeling.visionllm import VisionLLM

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, extra=["model.referent_loss=1.0"], task="grounding")
    out = model(collate([ds.sets["grounding"][i] for i in range(2)]))
    assert out["loss_referent"] > 0
    out["loss"].backward()
    assert model.class_pointer.weight.grad is not None
    with pytest.raises(ValueError, match="referent_loss"):
        VisionLLM(image_tokenizer=model.image_tokenizer, llm=model.llm, referent_loss=-1.0)


def test_several_expressions_each_get_it():
    """A grounding sample of several expressions (task.grounding.expressions): one referent term
    per expression, its class's log-odds over the groups at its object's group."""
    torch.manual_seed(1)
    logits = torch.randn(6, 4)  # three expressions and no object
    labels = torch.tensor([2, 0])
    coords = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]])
    assignment = (torch.tensor([5, 1]), torch.tensor([0, 1]))
    out = answer_loss(logits, torch.zeros(6, 4, 1025), torch.full((6, 2), 0.3), labels, coords, is_box=True,
                      assignment=assignment, w_referent=1.0, referring=True)[0]
    logp = logits.log_softmax(-1)
    want = -((logp[:, 2] - logp[:, 3]).log_softmax(0)[5] + (logp[:, 0] - logp[:, 3]).log_softmax(0)[1])
    assert torch.allclose(out["loss_referent"], want)
    # without the flag, a two-class answer is detection
    plain = answer_loss(logits, torch.zeros(6, 4, 1025), torch.full((6, 2), 0.3), labels, coords, is_box=True,
                        assignment=assignment, w_referent=1.0)[0]
    assert "loss_referent" not in plain
    with pytest.raises(ValueError, match="one object per expression"):
        answer_loss(logits, torch.zeros(6, 4, 1025), torch.full((6, 2), 0.3), torch.tensor([0, 0]), coords,
                    is_box=True, assignment=assignment, w_referent=1.0, referring=True)


def test_the_model_trains_on_several_expressions(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="grounding",
                                    extra=["model.referent_loss=1.0", "task.grounding.expressions=3"])
    batch = collate([ds.sets["grounding"][i] for i in range(6)])
    assert max(len(r.classes) for r in batch["requests"]) > 1
    out = model(batch)
    assert out["loss_referent"] > 0
    out["loss"].backward()
    with pytest.raises(ValueError, match="task.grounding.expressions"):
        tiny_model_and_sets(shapes_root, tmp_path, task="grounding", extra=["task.grounding.expressions=0"])
