"""tools/breakdown.py: the expression kinds and question types it reads off the shapes'
English are the generator's own, for every spec the generator can write."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from datasets_prep.shapes.language import _candidate_specs, verbalize, vqa_pairs
from datasets_prep.shapes.scene import make_scene

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("breakdown", ROOT / "tools" / "breakdown.py")
breakdown = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(breakdown)


def test_kinds_and_types_match_the_generator():
    n_specs = n_questions = 0
    for i in range(30):
        rng = np.random.default_rng([11, i])
        _, scene = make_scene(rng)
        for t in range(len(scene["objects"])):
            for spec in _candidate_specs(scene["objects"], t):
                text = verbalize(spec, rng)
                assert breakdown.expression_kind(text) == spec[0], text
                n_specs += 1
        for qtype, question, _ in vqa_pairs(scene, rng):
            assert breakdown.question_type("<image>\n" + question) == qtype, question
            n_questions += 1
    assert n_specs > 500 and n_questions > 100


def test_breakdown_of_an_eval_dir(tmp_path):
    (tmp_path / "grounding.json").write_text(json.dumps([
        {"image_id": 1, "expression": "the red circle", "bbox": [0, 0, 10, 10], "correct": True},
        {"image_id": 1, "expression": "the leftmost star", "bbox": [20, 20, 30, 30], "correct": False},
        {"image_id": 1, "expression": "the star left of the red circle", "bbox": [50, 50, 60, 60], "correct": False},
    ]))
    (tmp_path / "vqa.json").write_text(json.dumps([
        {"question": "How many stars are there?", "prediction": "2", "short": True, "correct": True},
        {"question": "How many shapes are there?", "prediction": "2", "short": True, "correct": False},
        {"question": "Describe the image in detail.", "prediction": "A star.", "short": False, "correct": None},
    ]))
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps({"annotations": [{"image_id": 1, "bbox": [0, 0, 10, 10]}, {"image_id": 1, "bbox": [20, 20, 10, 10]}]}))
    g = breakdown.grounding(json.loads((tmp_path / "grounding.json").read_text()), inst)
    assert g["attr"]["P@0.5"] == 1.0 and g["extreme"]["P@0.5"] == 0.0 and g["rel"]["expressions"] == 1
    assert g["wrong_answers_on_another_object"] == 0.5  # the leftmost star's box is another object's
    assert g["chance"] == 0.5 and g["rel"]["chance"] == 0.5  # two objects in the image
    assert "same_box_other_referent" not in g  # no ref ids to tell referents apart
    refs = [{"image_id": 1, "ref_id": r, "bbox": b} for r, b in ((1, [0, 0, 10, 10]), (2, [0, 0, 10, 11]), (2, [20, 20, 30, 30]), (3, [40, 40, 50, 50]))]
    # pairs with different referents: (1,2a) same box, (1,2b), (1,3), (2a,3), (2b,3) differ
    assert breakdown.same_box_other_referent(refs) == 0.2
    # where wrong answers land: on a look-alike, on a relation's anchor, elsewhere
    inst.write_text(json.dumps({
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}],
        "annotations": [{"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1, "attributes": ["red"]},
                        {"image_id": 1, "bbox": [20, 20, 10, 10], "category_id": 2, "attributes": ["blue"]},
                        {"image_id": 1, "bbox": [40, 40, 10, 10], "category_id": 2, "attributes": ["red"]},
                        {"image_id": 1, "bbox": [60, 60, 10, 10], "category_id": 1, "attributes": ["blue"]}]}))
    wrong = [{"image_id": 1, "expression": "the leftmost star", "bbox": [40, 40, 50, 50], "correct": False},
             {"image_id": 1, "expression": "the star left of the red circle", "bbox": [0, 0, 10, 10], "correct": False},
             {"image_id": 1, "expression": "the blue star left of the circle", "bbox": [40, 40, 50, 50], "correct": False},
             {"image_id": 1, "expression": "the circle below the blue circle", "bbox": [60, 60, 70, 70], "correct": False},
             {"image_id": 1, "expression": "the red shape", "bbox": [60, 60, 70, 70], "correct": False},
             {"image_id": 1, "expression": "the red circle", "bbox": [100, 100, 120, 120], "correct": False}]
    g = breakdown.grounding(wrong, inst)
    assert g["extreme"]["wrong_object"] == {"look_alike": 1.0, "anchor": 0.0, "other": 0.0}
    assert g["rel"]["wrong_object"] == {"look_alike": 0.0, "anchor": 0.667, "other": 0.333}
    assert g["attr"]["wrong_object"] == {"look_alike": 0.0, "anchor": 0.0, "other": 1.0}  # the box on nothing is not counted
    v = breakdown.vqa(json.loads((tmp_path / "vqa.json").read_text()))
    assert v == {"count": {"accuracy": 0.5, "questions": 2, "most_common_prediction": "2", "its_share": 1.0}}


def test_what_captions_name():
    instances = {"categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}],
                 "annotations": [{"image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 1, "attributes": ["red"]},
                                 {"image_id": 7, "bbox": [2, 2, 1, 1], "category_id": 2, "attributes": ["blue"]},
                                 {"image_id": 7, "bbox": [4, 4, 1, 1], "category_id": 2, "attributes": ["blue"]}]}
    # right, right again (a repeat), colour and shape of two objects on one, a colour on a shape
    # the image lacks... and a plural of a right pair
    out = breakdown.caption_mentions([{"image_id": 7, "caption": "A red circle, a red circle, a red star, "
                                                                  "a blue hexagon and two blue stars."}], instances)
    assert out == {"mentions": 4, "precision": 0.75, "bound_wrong": 1.0, "repeats": 1, "coverage": 1.0}
    out = breakdown.caption_mentions([{"image_id": 7, "caption": "A blue square."}], instances)
    assert out == {"mentions": 0, "precision": None, "bound_wrong": None, "repeats": 0, "coverage": 0.0}


def test_wrong_answers_by_where_the_right_box_ranked():
    results = [{"expression": "the red circle", "correct": True, "right_rank": 1},
               {"expression": "the blue star", "correct": False, "right_rank": 2},
               {"expression": "the star", "correct": False, "right_rank": 5},
               {"expression": "the red star", "correct": False, "right_rank": None},
               {"expression": "the leftmost star", "correct": False, "right_rank": None}]
    out = breakdown.ranked_wrong(results)
    assert out == {"attr": {"right_box_lower": 0.667, "of_which_second": 0.5},
                   "extreme": {"right_box_lower": 0.0, "of_which_second": 0.0}}
    assert breakdown.ranked_wrong([{"expression": "the star", "correct": False}]) == {}  # an older grounding.json


def test_detection_classes_per_category():
    instances = {"images": [{"id": 1, "width": 100, "height": 100}],
                 "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "hexagon"}],
                 "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "category_id": 1, "iscrowd": 0},
                                 {"id": 2, "image_id": 1, "bbox": [20, 20, 10, 10], "area": 100, "category_id": 1, "iscrowd": 0},
                                 {"id": 3, "image_id": 1, "bbox": [50, 50, 10, 10], "area": 100, "category_id": 2, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},   # the first circle, right
            {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.8},  # the second, called a hexagon
            {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.3},  # ... a circle only below it
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "score": 0.7}]  # the hexagon, right
    out = breakdown.detection_classes(dets, instances)
    assert out["circle"]["called"] == {"circle": 0.5, "hexagon": 0.5} and out["circle"]["objects"] == 2
    assert out["hexagon"]["called"] == {"hexagon": 1.0}
    # AP is per class: both circle detections are right (AP 1); the hexagon is found only behind a
    # higher-scoring false hexagon on the second circle (precision 1/2 at full recall)
    assert out["circle"]["AP"] == 1.0 and out["hexagon"]["AP"] == 0.5
    out = breakdown.detection_classes([{"image_id": 1, "category_id": 1, "bbox": [80, 80, 5, 5], "score": 0.5}], instances)
    assert out["hexagon"]["called"] == {"<miss>": 1.0} and out["hexagon"]["AP"] == 0.0
