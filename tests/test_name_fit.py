"""model.name_fit: a class slot also scores what token naming says at each group's image token."""

import pytest
import torch

from visionllm.modeling.name_fit import NameFit


def test_the_term_is_the_gain_times_the_weighed_log_probabilities():
    torch.manual_seed(0)
    named = torch.randn(2, 3, 10).log_softmax(-1)  # 2 images, 3 groups, 10 words
    words = torch.tensor([[[4, 7, 0], [2, 0, 0]], [[9, 1, 5], [0, 0, 0]]])
    shares = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.2, 0.3, 0.5], [0.0, 0.0, 0.0]]])
    fit = NameFit()
    assert torch.equal(fit(named, words, shares), torch.zeros(2, 3, 2))  # untrained: nothing
    fit.gain.data.fill_(2.0)
    out = fit(named, words, shares)
    want = torch.zeros(2, 3, 2)
    for b in range(2):
        for k in range(2):
            want[b, :, k] = 2.0 * sum(shares[b, k, t] * named[b, :, words[b, k, t]] for t in range(3))
    torch.testing.assert_close(out, want)
    # the group whose token says the name's words most is the one it lifts most
    named = torch.full((1, 3, 10), -5.0)
    named[0, 1, 4] = named[0, 1, 7] = -0.1
    out = fit(named, torch.tensor([[[4, 7]]]), torch.tensor([[[0.5, 0.5]]]))
    assert out[0, :, 0].argmax() == 1
    named.requires_grad_(True)
    fit(named, torch.tensor([[[4, 7]]]), torch.tensor([[[0.5, 0.5]]])).sum().backward()
    assert named.grad is None  # it reads the head's words and never moves them


def test_the_model_reads_the_names_words_and_starts_as_without_it(shapes_root, tmp_path):
    from helpers import answers_without, tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="grounding", extra=[
        "model.name_fit=true", "model.token_names=1.0", "model.named_copy=true", "model.name_pool=true"])
    tok = model.llm.tokenizer
    red, circle = (tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("red", "circle"))
    model.named_copy.note_names([red, circle])
    words, shares = model._name_words([["the red circle", "the leftmost one"], ["red"]], 3)
    assert words.shape[:2] == shares.shape[:2] == (2, 3)
    first = dict(zip(words[0, 0].tolist(), shares[0, 0].tolist()))
    assert first[red] == pytest.approx(0.5) and first[circle] == pytest.approx(0.5)  # the pool is even at start
    assert shares[0, 0].sum() == pytest.approx(1.0)
    assert shares[0, 1].sum() == 0 and shares[0, 2].sum() == 0  # no name words; past K
    assert dict(zip(words[1, 0].tolist(), shares[1, 0].tolist()))[red] == pytest.approx(1.0)

    batch = collate([ds.sets["grounding"][i] for i in range(2)])
    out = model(batch)
    out["loss"].backward()
    assert model.name_fit.gain.grad is not None and model.name_fit.gain.grad != 0
    with_it, without = answers_without(model, "name_fit", batch)  # the gain at zero: as without it
    assert all(torch.equal(a["probs"], b["probs"]) for a, b in zip(with_it, without))
    model.name_fit.gain.data.fill_(3.0)
    with torch.no_grad():
        moved = model.predict(batch)
    assert not all(torch.allclose(a["probs"], b["probs"]) for a, b in zip(moved, without))


def test_it_needs_the_named_copy(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets

    with pytest.raises(Exception, match="it needs model.named_copy=true"):
        tiny_model_and_sets(shapes_root, tmp_path, task="grounding", extra=["model.name_fit=true"])


def test_a_held_gain_scores_at_that_value_and_never_learns(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    named, words, weights = torch.randn(1, 2, 9).log_softmax(-1), torch.tensor([[[3, 4]]]), torch.tensor([[[0.5, 0.5]]])
    held = NameFit(held=3.0)
    held.gain.data.fill_(1.1)  # a learned gain loaded from a checkpoint does not count
    expected = 3.0 * (0.5 * named[..., 3] + 0.5 * named[..., 4])
    torch.testing.assert_close(held(named, words, weights)[..., 0], expected)
    assert "held" not in held.state_dict() and not held.gain.requires_grad
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="finite gain >= 0"):
            NameFit(held=bad)
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="grounding", extra=[
        "model.name_fit=true", "model.name_fit_gain=2.0", "model.token_names=1.0", "model.named_copy=true"])
    model(collate([ds.sets["grounding"][i] for i in range(2)]))["loss"].backward()
    assert model.name_fit.gain.grad is None and float(model.name_fit.held) == 2.0
    with pytest.raises(Exception, match="needs model.name_fit=true"):
        tiny_model_and_sets(shapes_root, tmp_path / "b", task="grounding", extra=["model.name_fit_gain=2.0"])
