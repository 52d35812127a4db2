"""model.concepts of the specialist (a first stage): the whole image says which of the listed
words its captions use, read from the detection reader's captions_file."""

import json

import pytest
import torch
from hydra.errors import InstantiationException

from helpers import compose_cfg
from visionllm.data.coco import CocoDetection
from visionllm.evaluation.cider import words
from visionllm.tasks.detection import flipped_words

BACKGROUNDS = ["plain", "gradient", "striped", "mottled", "spotted", "checkered"]
TINY_SPECIALIST = ["experiment=shapes_specialist", "model.backbone.d_model=32", "model.image_tokenizer.num_queries=8",
                   "model.image_tokenizer.enc_layers=1", "model.image_tokenizer.dec_layers=2",
                   "model.image_tokenizer.d_ffn=64", "model.text_encoder.hidden_size=32",
                   "model.text_encoder.num_layers=1", "data.image_size=64", "tokenizer_vocab_size=400"]


def _reader(root, captions="captions_train2017.json"):
    return CocoDetection(image_dir=root / "train2017", ann_file=root / "annotations" / "instances_train2017.json",
                         captions_file=root / "annotations" / captions)


def test_each_record_carries_its_own_captions_words(shapes_root):
    r = _reader(shapes_root)
    caps = json.loads((shapes_root / "annotations" / "captions_train2017.json").read_text())["annotations"]
    for k in (0, len(r) - 1):
        rec = r[k]
        mine = sorted({w for a in caps if a["image_id"] == rec["image_id"] for w in words(a["caption"])})
        assert rec["caption_words"] == mine and "background" in mine
        assert sum(w in mine for w in BACKGROUNDS) == 1  # the shapes captions name one background
    plain = CocoDetection(image_dir=shapes_root / "train2017",
                          ann_file=shapes_root / "annotations" / "instances_train2017.json")
    assert "caption_words" not in plain[0]


def test_captions_of_other_images_or_no_captions_file_are_clear_errors(shapes_root):
    with pytest.raises(ValueError, match="none of the"):
        _reader(shapes_root, "captions_val2017.json")
    with pytest.raises(ValueError, match="instances file instead of captions"):
        _reader(shapes_root, "instances_train2017.json")


def test_a_flip_trades_left_and_right():
    assert flipped_words(["a", "left", "rightmost", "star"]) == ["a", "leftmost", "right", "star"]
    assert flipped_words(None) is None


def _specialist(shapes_root, tmp_path, extra=()):
    from hydra.utils import instantiate

    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.train import absolutize, prepare_tokenizer, tokenizer_corpus

    cfg = compose_cfg("train", [*TINY_SPECIALIST, f"data.root={shapes_root}", f"output_dir={tmp_path}", *extra])
    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    torch.manual_seed(0)
    return instantiate(cfg.model), collate([ds[i] for i in range(4)])


def test_the_specialist_learns_the_words_from_the_whole_image(shapes_root, tmp_path):
    caps = f"data.train.detection.captions_file={shapes_root}/annotations/captions_train2017.json"
    model, batch = _specialist(shapes_root, tmp_path, [f"model.concepts=[{','.join(BACKGROUNDS)}]", caps])
    assert all(t["caption_words"] for t in batch["targets"])
    out = model(batch)
    assert out["loss_concept"].item() > 0
    out["loss"].backward()
    # the words' gradient reaches the backbone: what a frozen backbone keeps for the second stage
    assert model.concept_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_tokenizer.backbone.parameters())

    # it learns them: on one batch the loss falls and each image's own background comes first
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = model(batch)["loss_concept"]
        first = float(loss) if first is None else first
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    model.eval()
    answers = model.predict(batch)
    for answer, target in zip(answers, batch["targets"]):
        assert answer["concepts"].shape == (len(BACKGROUNDS),)
        assert BACKGROUNDS[int(answer["concepts"].argmax())] in target["caption_words"]

    # an image without captions is left out, not counted as using none of the words
    for t in batch["targets"][1:]:
        t["caption_words"] = None
    assert model(batch)["loss_concept"].item() >= 0


def test_concepts_without_captions_or_with_bad_words_are_clear_errors(shapes_root, tmp_path):
    model, batch = _specialist(shapes_root, tmp_path, ["model.concepts=[striped,plain]"])
    with pytest.raises(ValueError, match="captions_file"):
        model(batch)
    # hydra's instantiate wraps the model's own ValueError
    with pytest.raises(InstantiationException, match="distinct single words"):
        _specialist(shapes_root, tmp_path, ["model.concepts=[striped,striped]"])
    with pytest.raises(InstantiationException, match="distinct single words"):
        _specialist(shapes_root, tmp_path, ["model.concepts=['light blue',plain]"])
