import pytest
import torch

from visionllm import vocab as V
from visionllm.text_tokenizer import load_tokenizer, train_text_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_text_tokenizer(["find the red circle in the picture", "a star and a square"] * 5, d, vocab_size=300)
    return load_tokenizer(d)


def test_ranges_are_contiguous_and_disjoint(tokenizer):
    base = len(tokenizer)
    v = V.add_visionllm_tokens(tokenizer)
    assert v.image == base
    ranges = {
        "special": range(v.image, v.cls),
        "structural": range(v.cls, v.class0),
        "class": range(v.class0, v.class0 + V.NUM_CLASS_TOKENS),
        "loc": range(v.loc0, v.loc0 + 2 * V.LOC_HALF + 1),
    }
    ids = [i for r in ranges.values() for i in r]
    assert len(ids) == len(set(ids)) == len(V.added_tokens())
    assert max(ids) == v.size - 1
    assert tokenizer.convert_ids_to_tokens(v.class_id(7)) == "<c7>"
    assert tokenizer.convert_ids_to_tokens(v.loc_id(-512)) == "<p-512>"
    assert tokenizer.convert_ids_to_tokens(v.loc_id(512)) == "<p512>"
    assert tokenizer.convert_ids_to_tokens(v.slot_ids(3)) == ["<cls>", "<x1>", "<y1>", "<x2>", "<y2>", "<x3>", "<y3>"]
    # idempotent
    assert V.add_visionllm_tokens(tokenizer) == v


def test_tokens_are_single_pieces_in_text(tokenizer):
    v = V.add_visionllm_tokens(tokenizer)
    ids = tokenizer("{'circle': <c0>} <image> <p-3>", add_special_tokens=False)["input_ids"]
    assert v.class_id(0) in ids and v.image in ids and v.loc_id(-3) in ids


def test_quantize_round_trip():
    k = torch.arange(-V.LOC_HALF, V.LOC_HALF + 1)
    assert torch.equal(V.quantize(V.dequantize(k)), k)
    x = torch.rand(1000) * 2 - 1
    assert (V.dequantize(V.quantize(x)) - x).abs().max() <= 0.5 / V.LOC_HALF + 1e-7
    assert V.quantize(torch.tensor([-3.0, 3.0])).tolist() == [-512, 512]


def test_bad_indices():
    v = V.Vocab(image=0, none=1, bos=2, cls=3, xy0=4, class0=133, loc0=645, size=1670)
    with pytest.raises(ValueError):
        v.class_id(512)
    with pytest.raises(ValueError):
        v.slot_ids(65)
