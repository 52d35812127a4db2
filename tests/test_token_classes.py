"""model.token_classes: a class loss on the tokenizer, each matched image token against the
instruction's class names."""

import pytest
import torch

from visionllm.modeling.token_classes import TokenClasses


def test_logits_are_scaled_cosines_and_the_loss_asks_for_the_objects_name():
    torch.manual_seed(0)
    head = TokenClasses(4, 6)
    tokens, names = torch.randn(3, 4), torch.randn(2, 6)
    logits = head(tokens, names)
    q = torch.nn.functional.normalize(head.query(tokens), dim=-1)
    want = 10.0 * q @ torch.nn.functional.normalize(names, dim=-1).T
    torch.testing.assert_close(logits, want)
    assert logits.abs().max() <= 10.0 + 1e-5
    labels = torch.tensor([0, 1, 1])
    torch.testing.assert_close(head.loss(tokens, names, labels),
                               torch.nn.functional.cross_entropy(want, labels, reduction="sum"))
    # learning it separates two tokens by their names
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = head.loss(tokens, names, labels).item()
    for _ in range(50):
        opt.zero_grad()
        head.loss(tokens, names, labels).backward()
        opt.step()
    assert head.loss(tokens, names, labels).item() < 0.5 * first
    assert head(tokens, names).argmax(-1).tolist() == labels.tolist()


def test_the_model_trains_the_tokens_through_it(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="detection", extra=["model.token_classes=1.0"])
    batch = collate([ds.sets["detection"][i] for i in range(2)])
    out = model(batch)
    assert out["loss_tok_cls"] > 0
    out["loss"].backward()
    assert model.token_classes.query.weight.grad.abs().sum() > 0
    assert model.token_classes.log_scale.grad is not None
    # it reaches the tokenizer: the decoder's last layer gets a gradient from this loss alone
    model.zero_grad()
    model(batch)["loss_tok_cls"].backward()
    assert model.image_tokenizer.decoder[-1].norm2.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.llm.decoder.layers.parameters())  # not the LLM's layers
    # a one-class request (grounding) gives it nothing to tell apart: an exact zero, every parameter used
    model2, ds2 = tiny_model_and_sets(shapes_root, tmp_path / "g", task="grounding", extra=["model.token_classes=1.0"])
    out2 = model2(collate([ds2.sets["grounding"][i] for i in range(2)]))
    assert out2["loss_tok_cls"] == 0
    out2["loss"].backward()
    assert model2.token_classes.query.weight.grad is not None


def test_off_by_default_and_a_bad_weight_is_a_clear_error(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets

    model, _ = tiny_model_and_sets(shapes_root, tmp_path, task="detection")
    assert model.token_classes is None
    with pytest.raises(Exception, match="model.token_classes is a loss weight"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad", task="detection", extra=["model.token_classes=-1"])
