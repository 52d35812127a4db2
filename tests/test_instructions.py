import random

import pytest

from visionllm.tasks import detection
from visionllm.tasks.instructions import InstructionError, format_classes, parse_instruction

PAPER = [
    # the paper's own examples, as a user would type them
    "For each object in <image> that is a member of {'motorbike': <c0>}, output a tuple with the class label and "
    "the coordinates of a polygon with 16 points that encloses the object. (c, x1, y1, ..., x16, y16) from 0 to 1024.",
    "Identify the objects in <image> that belong to {'what is the child eating?': <c0>, 'red gamepad': <c1>} and draw a "
    "bounding box around each one. The output should be a list of tuples (c, x1, y1, x2, y2) in the range 0 to 1024.",
]


def test_paper_examples():
    poly = parse_instruction(PAPER[0])
    assert poly.kind == "polygons" and poly.num_points == 16 and poly.classes == ["motorbike"]
    box = parse_instruction(PAPER[1])
    assert box.kind == "boxes" and box.classes == ["what is the child eating?", "red gamepad"]
    assert box.coord_range == 1024


def test_every_template_round_trips():
    rng = random.Random(0)
    names = ["circle", "a person's hat", "star"]
    for t in detection.TEMPLATES:
        r = parse_instruction(detection.make_instruction(names, template=t, coord_range=512, rng=rng))
        assert (r.kind, r.classes, r.num_points, r.coord_range) == ("boxes", names, 2, 512)
    assert len(detection.TEMPLATES) >= 10


def test_text_request():
    r = parse_instruction("Describe <image> briefly.")
    assert r.kind == "text" and not r.structured


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("find {'a': <c0>} as (c, x1, y1, x2, y2)", "<image>"),
        ("<image> <image> {'a': <c0>} (c, x1, y1, x2, y2)", "exactly one"),
        ("{'a': <c0>} in <image>", "no output format"),
        ("{'a': <c1>} in <image> (c, x1, y1, x2, y2)", "<c0>"),
        ("{'a': <c0>} in <image> (c, x1, y1, x3, y3)", "cannot read the output format"),
        ("in <image> give (c, x1, y1, x2, y2)", "names no classes"),
        ("{'a': <c0>} <image> (c, x1, y1, ..., x99, y99)", "maximum"),
    ],
)
def test_clear_errors(text, fragment):
    with pytest.raises(InstructionError, match=None) as e:
        parse_instruction(text)
    assert fragment in str(e.value)


def test_class_names_with_quotes():
    names = ["the child's toy", "plain"]
    r = parse_instruction(f"find {format_classes(names)} in <image> as (c, x1, y1, x2, y2)")
    assert r.classes == names
