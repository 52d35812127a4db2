"""Detection and segmentation class sets: plain category names and described ones."""

from __future__ import annotations

import random

import pytest

from visionllm.data.coco import CocoDetection
from visionllm.tasks import detection, segmentation


@pytest.fixture(scope="module")
def reader(shapes_root):
    return CocoDetection(image_dir=shapes_root / "val2017", ann_file=shapes_root / "annotations/instances_val2017.json")


def _vocabulary(reader):
    return [c["name"] for c in reader.categories]


def test_described_names_ask_for_colour_and_label_the_right_objects(reader):
    described = detection.DescribedNames.from_reader(reader, 1.0)
    assert described.attributes == ("blue", "green", "orange", "purple", "red", "yellow")
    assert described.supercategories == ("shape",)
    kinds = set()
    for i in range(12):
        record = reader[i % 4]
        s = detection.training_sample(record, vocabulary=_vocabulary(reader), image_size=96, rng=random.Random(i),
                                      described=described, flip=False)
        names, labels = s["request"].classes, s["target"]["labels"].tolist()
        assert all(len(n.split()) == 2 and n.split()[0] in described.attributes for n in names), names
        kinds.add(names[0].split()[1] == "shape")
        # every object whose description is asked for is a target under that name, and only those
        wanted = sorted(names.index(f"{o['attributes'][0]} {o[key]}") for o in record["objects"]
                        for key in ("category_name", "supercategory") if f"{o['attributes'][0]} {o[key]}" in names)
        assert sorted(labels) == wanted
    assert kinds == {True, False}  # both "red circle" and "red shape" sets were drawn


def test_plain_names_without_the_option_or_without_attributes(reader):
    plain = set(_vocabulary(reader))
    assert detection.DescribedNames.from_reader(reader, 0.0) is None
    described = detection.DescribedNames.from_reader(reader, 1.0)
    record = dict(reader[0])
    record["objects"] = [dict(o, attributes=[]) for o in record["objects"]]  # one object without: plain names
    record["objects"][0]["attributes"] = ["red"]
    for i in range(4):
        s = segmentation.training_sample(record, vocabulary=_vocabulary(reader), image_size=96, rng=random.Random(i),
                                         described=described)
        assert set(s["request"].classes) <= plain
