"""VQA on LLaVA conversations: one turn per sample with earlier turns as context, accuracy."""

import random

import pytest
import torch

from visionllm.data.llava import LlavaInstruct
from visionllm.evaluation.vqa import evaluate_vqa
from visionllm.tasks import vqa
from visionllm.tasks.instructions import Request, parse_instruction


@pytest.fixture(scope="module")
def val_reader(shapes_root):
    return LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_val.json", image_root=shapes_root)


class Oracle(torch.nn.Module):
    """Answers with the ground truth from meta (or "purple" when ``wrong``)."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.wrong = wrong

    def predict(self, batch):
        return [{"text": "purple" if self.wrong else m["answer"].upper() + "!"} for m in batch["meta"]]


@pytest.mark.parametrize(
    "text, norm",
    [
        ("Two.", "2"),
        ("The red circle!", "red circle"),
        ("An apple", "apple"),
        ("Yes", "yes"),
        ("1.5 inches", "1.5 inches"),
        ("No, ", "no"),
        ("  It's   a STAR ", "it s star"),
        ("zero", "0"),
    ],
)
def test_normalize(text, norm):
    assert vqa.normalize_answer(text) == norm


def test_matching_and_short():
    assert vqa.answers_match("Three.", "3") and vqa.answers_match("the square", "Square")
    assert not vqa.answers_match("two", "3")
    assert vqa.is_short("a red circle") and not vqa.is_short("a red circle on the left") and not vqa.is_short(" ")


def _conversation():
    conv = [("What is this?\n<image>", "a circle"), ("What color is it?", "red"), ("How many?", "one")]
    return {"image_id": "x", "conversations": [{"from": f, "value": v} for q, a in conv for f, v in (("human", q), ("gpt", a))]}


def test_context_keeps_one_image_in_first_place():
    pairs = vqa.turns(_conversation())
    assert vqa.question_text(pairs, 0) == "What is this?\n<image>"
    text = vqa.question_text(pairs, 2)
    assert text == "Q: What is this?\n<image> A: a circle\nQ: What color is it? A: red\nHow many?"
    assert [text[a:b] for a, b in vqa.answer_spans(text, pairs, 2)] == ["a circle", "red"]
    assert vqa.answer_spans(vqa.question_text(pairs, 0), pairs, 0) == []
    # an <image> missing from the first turn or repeated later still gives exactly one, in front
    odd = [("What is this?", "a circle"), ("<image> And now?", "red")]
    assert vqa.question_text(odd, 1) == "<image>\nQ: What is this? A: a circle\nAnd now?"
    assert vqa.question_text(odd, 0).startswith("<image>\n")


def test_training_samples(val_reader):
    rng = random.Random(0)
    turns_seen = set()
    for i in range(len(val_reader)):
        rec = val_reader[i]
        pairs = vqa.turns(rec)
        for _ in range(3):
            s = vqa.training_sample(rec, image_size=64, rng=rng)
            assert set(s) == {"image", "pixel_mask", "instruction", "request", "target", "meta"}
            assert s["request"] == Request(kind="text") == parse_instruction(s["instruction"])
            ins = s["instruction"]
            t = next(k for k, (q, a) in enumerate(pairs) if ins.endswith(q.replace("<image>", "").strip()) and s["target"]["text"] == a.strip())
            turns_seen.add(t)
            assert ins.count("\nQ: ") + ins.startswith("Q: ") == t  # the earlier turns, one line each
            # every earlier answer is marked for the loss, where it stands in the instruction
            spans = s["target"]["context_spans"]
            assert [ins[a:b] for a, b in spans] == [a.strip() for _, a in pairs[:t] if a.strip()]
            # exactly one <image>, where the first question had it
            assert ins.count("<image>") == 1
            assert ins.split("<image>")[0] == ("Q: " if t else "") + pairs[0][0].split("<image>")[0]
    assert len(turns_seen) > 1


def test_eval_samples(val_reader):
    rec = val_reader[0]
    samples = vqa.eval_samples(rec, image_size=64)
    pairs = vqa.turns(rec)
    assert len(samples) == len(pairs)
    for t, (s, (q, a)) in enumerate(zip(samples, pairs)):
        assert s["meta"]["answer"] == a and s["meta"]["turn"] == t
        assert s["meta"]["question"] == q.replace("<image>", "").strip()
        assert s["instruction"] == vqa.question_text(pairs, t) and "target" not in s


def test_accuracy_oracle_and_wrong(val_reader):
    metrics, results, table = evaluate_vqa(Oracle(), val_reader, image_size=32, batch_size=4, progress=False)
    assert metrics["vqa_accuracy"] == 1.0, table
    n_turns = sum(len(vqa.turns(val_reader[i])) for i in range(len(val_reader)))
    assert len(results) == n_turns == metrics["vqa_short_answers"] + metrics["vqa_free_answers"]
    assert all(r["correct"] is None for r in results if not r["short"])
    wrong, _, _ = evaluate_vqa(Oracle(wrong=True), val_reader, image_size=32, batch_size=4, progress=False)
    assert wrong["vqa_accuracy"] < 0.3


def test_objects_of_the_image_teach_the_tokenizer(shapes_root, tmp_path):
    """With the instances of the same images, a VQA sample also holds the centre of every
    object of its image on the canvas (for the tokenizer's objectness); without, none."""
    import json

    ann = shapes_root / "annotations/instances_val2017.json"
    reader = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_val.json", image_root=shapes_root,
                           instances_file=ann)
    coco = json.loads(ann.read_text())
    record = reader[0]
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == int(record["image_id"])]
    assert record["object_boxes"] == boxes and boxes
    s = vqa.training_sample(record, image_size=64, rng=random.Random(0))
    scale = max(record["width"], record["height"])
    x, y, w, h = boxes[0]
    torch.testing.assert_close(s["target"]["centers"][0], torch.tensor([(x + w / 2) / scale, (y + h / 2) / scale]))
    assert s["target"]["centers"].shape == (len(boxes), 2)
    plain = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_val.json", image_root=shapes_root)
    assert "centers" not in vqa.training_sample(plain[0], image_size=64, rng=random.Random(0))["target"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match="COCO instances"):
        LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_val.json", image_root=shapes_root, instances_file=bad)
