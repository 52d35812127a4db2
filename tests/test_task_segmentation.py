"""Instance segmentation task: templates, polygon targets, results, and mask AP with an oracle."""

import json
import random

import numpy as np
import pytest
import torch
from shapely.geometry import LineString, Point

from visionllm.data.coco import CocoDetection
from visionllm.evaluation.detection import STAT_NAMES
from visionllm.evaluation.segmentation import evaluate_segmentation
from visionllm.tasks import segmentation
from visionllm.tasks.instructions import parse_instruction
from visionllm.tasks.polygons import largest_part, object_polygon, shoelace


@pytest.fixture(scope="module")
def val_reader(shapes_root):
    return CocoDetection(image_dir=shapes_root / "val2017", ann_file=shapes_root / "annotations/instances_val2017.json")


class Oracle(torch.nn.Module):
    """Answers every polygon request from the ground truth, in the model's output format."""

    def __init__(self, coco, *, shift: float = 0.0, num_points: int | None = None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.coco, self.shift, self.num_points = coco, shift, num_points
        self.names = {c["id"]: c["name"] for c in coco.dataset["categories"]}

    def predict(self, batch):
        out = []
        for req, meta in zip(batch["requests"], batch["meta"]):
            n = req.num_points
            labels, points = [], []
            for a in self.coco.imgToAnns.get(meta["image_id"], []):
                name = self.names[a["category_id"]]
                if name in req.classes:
                    p = object_polygon(a["segmentation"], self.num_points or n)
                    if len(p) != n:  # a coarser polygon, padded to the asked number of points
                        p = p[np.linspace(0, len(p) - 1, n).round().astype(int)]
                    labels.append(req.classes.index(name))
                    points.append((p + self.shift * a["bbox"][2]) / meta["canvas_scale"])
            out.append(
                {
                    "labels": torch.tensor(labels, dtype=torch.long),
                    "scores": torch.full((len(labels),), 0.9),
                    "points": torch.tensor(np.array(points), dtype=torch.float32).view(-1, n, 2),
                }
            )
        return out


def test_templates_parse_back():
    names = ["circle", "a person's hat", "star"]
    assert len(segmentation.TEMPLATES) >= 10
    for t in segmentation.TEMPLATES:
        for n in (3, 8, 16, 24, 64):
            r = parse_instruction(segmentation.make_instruction(names, n, template=t, coord_range=512))
            assert (r.kind, r.classes, r.num_points, r.coord_range) == ("polygons", names, n, 512), t
    with pytest.raises(ValueError):
        segmentation.polygon_format(2)


def test_training_targets(val_reader):
    vocab = [c["name"] for c in val_reader.categories]
    rng = random.Random(0)
    seen_n = set()
    for i in range(len(val_reader)):
        rec = val_reader[i]
        s = segmentation.training_sample(rec, vocabulary=vocab, image_size=64, rng=rng, max_classes=4, flip=False)
        assert set(s) == {"image", "pixel_mask", "instruction", "request", "target", "meta"}
        assert s["image"].shape == (3, 64, 64) and s["pixel_mask"].shape == (64, 64)
        req, t, meta = s["request"], s["target"], s["meta"]
        assert parse_instruction(s["instruction"]) == req
        n = req.num_points
        seen_n.add(n)
        assert n in segmentation.NUM_POINTS_CHOICES
        asked = [o for o in rec["objects"] if o["category_name"] in req.classes]
        assert meta["skipped_objects"] == 0 and meta["canvas_scale"] == max(rec["width"], rec["height"])
        assert t["labels"].tolist() == [req.classes.index(o["category_name"]) for o in asked]
        assert t["coords"].shape == (len(asked), 2 * n) and t["centers"].shape == (len(asked), 2)
        for o, coords, c in zip(asked, t["coords"], t["centers"]):
            pix = coords.view(n, 2).numpy() * meta["canvas_scale"]
            contour = LineString(np.vstack([largest_part(o["segmentation"])] * 2))
            assert max(contour.distance(Point(p)) for p in pix) < 1e-3
            assert shoelace(pix) > 0
            x, y, w, h = o["bbox"]
            np.testing.assert_allclose(c.numpy() * meta["canvas_scale"], [x + w / 2, y + h / 2], rtol=1e-5)
    assert len(seen_n) > 1


def test_flip_keeps_clockwise_and_counts_degenerate(val_reader):
    rec = dict(val_reader[0])
    bad = {"bbox": [1, 1, 5, 5], "category_id": 1, "category_name": "circle", "segmentation": [[1, 1, 3, 3, 5, 5]], "area": 0, "iscrowd": 0}
    rec["objects"] = rec["objects"] + [bad]
    vocab = [c["name"] for c in val_reader.categories]
    for seed in range(6):
        s = segmentation.training_sample(rec, vocabulary=vocab, image_size=64, rng=random.Random(seed), max_classes=6, num_points_choices=[12])
        n_asked = sum(o["category_name"] in s["request"].classes for o in rec["objects"])
        assert s["meta"]["skipped_objects"] == ("circle" in s["request"].classes)
        assert len(s["target"]["labels"]) == n_asked - s["meta"]["skipped_objects"]
        for coords in s["target"]["coords"]:
            assert shoelace(coords.view(12, 2).numpy()) > 0


def test_eval_samples_results_and_printed_answer(val_reader):
    rec = val_reader[0]
    names = [c["name"] for c in val_reader.categories]
    samples = segmentation.eval_samples(rec, class_names=names, image_size=64, chunk=4, num_points=20)
    assert [s["request"].classes for s in samples] == [names[:4], names[4:]]
    assert all(parse_instruction(s["instruction"]).num_points == 20 for s in samples)
    out = Oracle(val_reader.coco).predict({"requests": [samples[0]["request"]], "meta": [samples[0]["meta"]]})[0]
    objs = segmentation.to_objects(out, samples[0]["request"], samples[0]["meta"])
    assert objs and all(len(o["polygon"]) == 20 for o in objs)
    for o in objs:
        xs, ys = [p[0] for p in o["polygon"]], [p[1] for p in o["polygon"]]
        assert o["bbox"] == [min(xs), min(ys), max(xs), max(ys)]
    text = segmentation.printed_answer(objs[:1], samples[0]["request"], samples[0]["meta"])
    assert text.startswith(f"[(<c{objs[0]['class_index']}>, ") and text.count(",") == 40
    cats = {c["name"]: c["id"] for c in val_reader.categories}
    res = segmentation.to_coco_results(objs, rec["image_id"], cats, height=rec["height"], width=rec["width"])
    json.dumps(res)
    assert isinstance(res[0]["segmentation"]["counts"], str) and res[0]["segmentation"]["size"] == [rec["height"], rec["width"]]


def test_mask_ap_oracle_and_wrong(val_reader):
    metrics, results, table = evaluate_segmentation(
        Oracle(val_reader.coco), val_reader, image_size=64, chunk=3, batch_size=4, num_points=24, progress=False
    )
    assert set(metrics) == {f"segm_{k}" for k in STAT_NAMES}
    assert metrics["segm_AP"] >= 0.8, table
    assert results and {"segmentation", "score", "category_id", "image_id"} <= set(results[0])
    json.dumps(results)
    # COCOeval writes RLE into the ground truth it is given; the reader keeps its polygons
    assert all(isinstance(a["segmentation"], list) for a in val_reader.coco.dataset["annotations"])
    wrong, _, _ = evaluate_segmentation(
        Oracle(val_reader.coco, shift=1.5), val_reader, image_size=64, chunk=3, batch_size=4, num_points=24, progress=False
    )
    assert wrong["segm_AP"] < 0.1
