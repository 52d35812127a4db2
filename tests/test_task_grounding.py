"""Visual grounding task: templates, the one-box target, and P@0.5 with an oracle."""

import random

import pytest
import torch

from visionllm.data.refcoco import RefCocoGrounding
from visionllm.data.transforms import letterbox
from visionllm.evaluation.grounding import evaluate_grounding
from visionllm.tasks import grounding
from visionllm.tasks.instructions import parse_instruction


@pytest.fixture(scope="module")
def eval_reader(shapes_root):
    return RefCocoGrounding(root=shapes_root, splits=("val", "testA", "testB"), image_root=shapes_root)


class Oracle(torch.nn.Module):
    """Answers from meta["gt_bbox"] in the model's output format: a decoy group first, then
    the true box with the top score (or a shifted box when ``wrong``; the decoy on top when
    ``decoy_first``)."""

    def __init__(self, wrong: bool = False, decoy_first: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.wrong, self.decoy_first = wrong, decoy_first

    def predict(self, batch):
        out = []
        for meta in batch["meta"]:
            x, y, w, h = meta["gt_bbox"]
            if self.wrong:
                x += 1.5 * w
            box = torch.tensor([[x, y], [x + w, y + h]]) / meta["canvas_scale"]
            decoy = torch.tensor([[0.0, 0.0], [0.05, 0.05]])
            out.append({"labels": torch.zeros(2, dtype=torch.long), "scores": torch.tensor([0.9 if self.decoy_first else 0.3, 0.8]), "points": torch.stack([decoy, box])})
        return out


@pytest.mark.parametrize("expression", ["the rightmost blue shape", "the child's toy", 'the "big" one\'s hat', "  spaced   out  "])
def test_templates_parse_back(expression):
    assert len(grounding.TEMPLATES) >= 10
    want = [" ".join(expression.split()).replace('"', "'") if "'" in expression and '"' in expression else " ".join(expression.split())]
    for t in grounding.TEMPLATES:
        r = parse_instruction(grounding.make_instruction(expression, template=t, coord_range=1000))
        assert (r.kind, r.classes, r.num_points, r.coord_range) == ("boxes", want, 2, 1000), t


def test_training_sample(shapes_root):
    train = RefCocoGrounding(root=shapes_root, splits=("train",), image_root=shapes_root)
    rng = random.Random(0)
    for i in range(0, len(train), max(1, len(train) // 8)):
        rec = train[i]
        s = grounding.training_sample(rec, image_size=64, rng=rng)
        assert set(s) == {"image", "pixel_mask", "instruction", "request", "target", "meta"}
        assert parse_instruction(s["instruction"]) == s["request"]
        assert s["request"].classes == [rec["expression"]]
        canvas, _, scale = letterbox(rec["image"], 64)
        assert torch.equal(s["image"], canvas)  # never flipped: expressions say left and right
        x, y, w, h = rec["bbox"]
        t = s["target"]
        assert t["labels"].tolist() == [0]
        torch.testing.assert_close(t["coords"] * scale, torch.tensor([[x, y, x + w, y + h]]))
        torch.testing.assert_close(t["centers"] * scale, torch.tensor([[x + w / 2, y + h / 2]]))
        assert s["meta"]["canvas_scale"] == scale == max(rec["width"], rec["height"])


def test_reading_the_answer(eval_reader):
    s = grounding.eval_samples(eval_reader[0], image_size=64)[0]
    assert s["meta"]["gt_bbox"] == eval_reader[0]["bbox"] and s["meta"]["split"] == eval_reader[0]["split"]
    obj = grounding.to_box(Oracle().predict({"meta": [s["meta"]]})[0], s["request"], s["meta"])
    x, y, w, h = s["meta"]["gt_bbox"]
    assert obj["score"] == pytest.approx(0.8)
    assert grounding.box_iou(obj["bbox"], [x, y, x + w, y + h]) == pytest.approx(1.0, abs=1e-4)
    assert grounding.printed_answer(obj, s["request"], s["meta"]).startswith("[(<c0>, ")
    assert grounding.box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(1 / 3)


def test_precision_oracle_and_wrong(eval_reader):
    metrics, results, table = evaluate_grounding(Oracle(), eval_reader, image_size=64, batch_size=5, progress=False)
    assert set(metrics) == {"grounding_P@0.5", "grounding_P@0.5/val", "grounding_P@0.5/testA", "grounding_P@0.5/testB"}
    assert all(v == 1.0 for v in metrics.values()), table
    assert len(results) == len(eval_reader) and all(r["correct"] and r["right_rank"] == 1 for r in results)
    wrong, results, _ = evaluate_grounding(Oracle(wrong=True), eval_reader, image_size=64, batch_size=5, max_images=6, progress=False)
    assert wrong["grounding_P@0.5"] == 0.0 and all(r["right_rank"] is None for r in results)
    # the right box ranked second: wrong, and the results say where it was
    second, results, _ = evaluate_grounding(Oracle(decoy_first=True), eval_reader, image_size=64, batch_size=5, max_images=6,
                                            progress=False)
    assert second["grounding_P@0.5"] == 0.0 and all(r["right_rank"] == 2 for r in results)


def test_the_answer_can_be_picked_by_the_tokenizers_objectness():
    meta = {"canvas_scale": 100.0, "width": 100, "height": 100}
    from visionllm.tasks.instructions import Request

    req = Request(kind="boxes", classes=["the red circle"], num_points=2)
    groups = {
        "labels": torch.zeros(3, dtype=torch.long),
        "scores": torch.tensor([0.9, 0.5, 0.2]),
        "points": torch.tensor([[[0.0, 0.0], [0.1, 0.1]], [[0.5, 0.5], [0.6, 0.6]], [[0.8, 0.8], [0.9, 0.9]]]),
        "objectness": torch.tensor([0.1, 0.3, 0.95]),
    }
    assert grounding.to_box(groups, req, meta)["bbox"] == pytest.approx([0, 0, 10, 10])
    assert grounding.to_box(groups, req, meta, rank="objectness")["bbox"] == pytest.approx([80, 80, 90, 90])
    prod = grounding.to_box(groups, req, meta, rank="product")  # 0.09, 0.15, 0.19
    assert prod["bbox"] == pytest.approx([80, 80, 90, 90]) and prod["score"] == pytest.approx(0.19)
    with pytest.raises(ValueError, match="rank must be one of"):
        grounding.to_box(groups, req, meta, rank="best")
    with pytest.raises(ValueError, match="needs the tokenizer's objectness"):
        grounding.to_box({k: v for k, v in groups.items() if k != "objectness"}, req, meta, rank="product")


def test_the_class_slot_tells_expressions_apart(shapes_root, tmp_path):
    """What a class slot is scored against (the class pointer's input) moves with the
    expression as much as with the context: the name's part is as large as the LLM state's,
    and a word is the same token alone and inside a longer expression."""
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="grounding")
    model.eval()
    seen = []
    model.class_pointer.register_forward_hook(lambda m, i, o: seen.append(i[0][:, 0]))
    template = grounding.TEMPLATES[0]
    samples = []
    for expression in ("the red circle", "the blue square"):
        s = dict(ds.sets["grounding"][0])
        s["instruction"] = grounding.make_instruction(expression, template=template)
        s["request"] = parse_instruction(s["instruction"])
        samples.append(s)
    with torch.no_grad():
        model.predict(collate(samples))
    ctx = seen[0]
    change = (ctx[0] - ctx[1]).norm() / ctx.norm(dim=-1).mean()
    assert change > 0.3, f"class pointer input moved {change:.3f} between two expressions"
    tok = model.llm.tokenizer
    word = tok(" circle", add_special_tokens=False)["input_ids"]
    assert len(word) == 1 and word[0] in tok(" the red circle", add_special_tokens=False)["input_ids"]


def test_plural_templates_parse_back():
    names = ["the leftmost circle", "the star above the red square", "the child's toy"]
    assert len(grounding.PLURAL_TEMPLATES) >= 10
    for t in grounding.PLURAL_TEMPLATES:
        r = parse_instruction(grounding.make_instruction(names, template=t, coord_range=1000))
        assert (r.kind, r.classes, r.num_points, r.coord_range) == ("boxes", names, 2, 1000), t
    # a list of one is the one-expression instruction
    assert grounding.make_instruction(names[:1], template=grounding.TEMPLATES[0]) == \
        grounding.make_instruction(names[0], template=grounding.TEMPLATES[0])


def test_several_expressions_a_sample(shapes_root):
    from torch.utils.data import ConcatDataset

    train = RefCocoGrounding(root=shapes_root, splits=("train",), image_root=shapes_root)
    companions = grounding.Companions(train)
    # an object is one object however many data sets list it (a merge of refcoco with itself)
    twice = grounding.Companions(ConcatDataset([train, train]))
    boxes = {}
    for s in train.samples:
        boxes.setdefault(s["image_id"], {}).setdefault(s["expression"], s["bbox"])
    seen_several = 0
    for i in range(0, len(train), max(1, len(train) // 40)):
        rec = train[i]
        others = companions.others(rec)
        assert len(twice.others(rec)) == len(others)
        assert all(r["image_id"] == rec["image_id"] and r["bbox"] != rec["bbox"] for refs in others for r in refs)
        single = grounding.training_sample(rec, image_size=64, rng=random.Random(i))
        again = grounding.training_sample(rec, image_size=64, rng=random.Random(i), companions=companions, expressions=1)
        assert single["instruction"] == again["instruction"] and single["request"] == again["request"]
        s = grounding.training_sample(rec, image_size=64, rng=random.Random(i), companions=companions, expressions=3)
        classes, t = s["request"].classes, s["target"]
        assert parse_instruction(s["instruction"]) == s["request"]
        assert rec["expression"] in classes and len(set(classes)) == len(classes)
        assert len(classes) == min(3, 1 + len(others))
        assert t["labels"].tolist() == list(range(len(classes))) and t["referring"] is True
        assert len(t["names"]) == len(classes) == len(t["coords"]) == len(t["centers"])
        scale = s["meta"]["canvas_scale"]
        for k, name in enumerate(classes):  # each expression's box is its own object's
            x, y, w, h = boxes[rec["image_id"]][name]
            torch.testing.assert_close(t["coords"][k] * scale, torch.tensor([x, y, x + w, y + h]))
        assert len({tuple(c.tolist()) for c in t["coords"]}) == len(classes)  # distinct objects
        seen_several += len(classes) > 1
    assert seen_several > 10


def test_several_expressions_need_a_listing_reader():
    with pytest.raises(ValueError, match="does not list its samples"):
        grounding.Companions([{"image_id": 1}])
