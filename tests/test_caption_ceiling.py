"""tools/caption_ceiling.py: captions written by the shapes' rules from detections score as
those from the truth when the detections are the truth, and lower when they miss objects."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "caption_ceiling", Path(__file__).resolve().parents[1] / "tools" / "caption_ceiling.py")
caption_ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(caption_ceiling)


def _obj(shape, color, cx, cy, area):
    return {"shape": shape, "color": color, "cx": cx, "cy": cy, "area": area}


def test_the_styles_follow_the_references_rules():
    objs = [_obj("star", "red", 90, 10, 50), _obj("star", "red", 60, 50, 400), _obj("triangle", "green", 70, 60, 30)]
    assert caption_ceiling.counts_caption(objs) == "An image showing two red stars and a green triangle."
    assert caption_ceiling.positional_caption(objs, 100, 100) == "A red star in the center next to a green triangle."
    # a detection matched to no true object has no colour: the list falls back to shapes
    objs[2]["color"] = None
    assert caption_ceiling.counts_caption(objs) == "An image with two stars and a triangle."
    assert caption_ceiling.positional_caption(objs[1:], 100, 100) == "A red star in the center next to a triangle."


def test_detections_equal_to_the_truth_reach_its_ceiling_and_misses_fall_short(shapes_root, tmp_path):
    instances, refs = caption_ceiling.load_val(shapes_root)
    ids = sorted({a["image_id"] for a in instances["annotations"]})[:6]
    truth = [a for a in instances["annotations"] if a["image_id"] in ids]
    (tmp_path / "captions.json").write_text(json.dumps([{"image_id": i, "caption": "x"} for i in ids]))

    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                "segmentation": a["segmentation"]} for a in truth]
    (tmp_path / "detections.json").write_text(json.dumps(perfect))
    (tmp_path / "segmentations.json").write_text(json.dumps(perfect))
    out = caption_ceiling.ceiling(tmp_path, instances, refs, [0.5, 0.95])
    assert out["images"] == len(ids)
    assert out["detections@0.5"]["exact_shapes"] == 1.0 and out["detections@0.5"]["exact_number"] == 1.0
    assert out["detections@0.5"]["counts"] == pytest.approx(out["truth"]["counts"])
    # placed by their masks, the true objects' answers write the truth's captions word for word
    assert out["segmentations@0.5"]["positional"] == pytest.approx(out["truth"]["positional"])
    assert out["truth"]["counts"] > 1.0
    assert out["detections@0.95"]["exact_number"] == 0.0  # nothing kept at 0.95

    first = {}
    for d in perfect:
        first.setdefault(d["image_id"], d)
    missing = [d for d in perfect if d is not first[d["image_id"]]]  # each image loses one object
    (tmp_path / "detections.json").write_text(json.dumps(missing))
    (tmp_path / "segmentations.json").unlink()
    worse = caption_ceiling.ceiling(tmp_path, instances, refs, [0.5])["detections@0.5"]
    assert worse["exact_number"] == 0.0
    assert worse["counts"] < out["truth"]["counts"]


def test_images_without_references_are_an_error(shapes_root, tmp_path):
    instances, refs = caption_ceiling.load_val(shapes_root)
    (tmp_path / "captions.json").write_text(json.dumps([{"image_id": -5, "caption": "x"}]))
    (tmp_path / "detections.json").write_text("[]")
    with pytest.raises(ValueError, match="without references"):
        caption_ceiling.ceiling(tmp_path, instances, refs, [0.5])
