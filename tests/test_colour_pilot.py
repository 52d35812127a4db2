"""tools/colour_pilot.py picks colour questions by how many objects their image holds."""

import importlib.util
from pathlib import Path

from visionllm.data.llava import LlavaInstruct

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("colour_pilot", ROOT / "tools" / "colour_pilot.py")
colour_pilot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colour_pilot)


def test_colour_questions_split_by_object_count(shapes_root):
    reader = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_train.json", image_root=shapes_root)
    counts = colour_pilot.objects_per_image(shapes_root / "annotations/instances_train2017.json")
    one = colour_pilot.colour_questions(reader, counts, single=True)
    many = colour_pilot.colour_questions(reader, counts, single=False)
    assert one or many
    for items, single in ((one, True), (many, False)):
        for rec, q, a in items:
            assert q.startswith(colour_pilot.COLOUR_QUESTION) and "<image>" not in q and a
            assert (counts[int(rec["image_id"])] == 1) == single
