"""How a group's answer is read at evaluation: several classes a group (tasks.group_answers, the
Deformable DETR ranking) and coordinates around the likeliest bin (losses.read_offsets)."""

import pytest
import torch

from visionllm.data.coco import CocoDetection
from visionllm.evaluation.detection import evaluate_detection
from visionllm.evaluation.segmentation import evaluate_segmentation
from visionllm.modeling.losses import expected_offsets, read_offsets
from visionllm.tasks import group_answers
from visionllm.tasks.polygons import object_polygon
from visionllm.vocab import LOC_HALF


@pytest.fixture(scope="module")
def val_reader(shapes_root):
    return CocoDetection(image_dir=shapes_root / "val2017", ann_file=shapes_root / "annotations/instances_val2017.json")


def test_group_answers():
    probs = torch.tensor([[0.5, 0.3, 0.1], [0.05, 0.15, 0.7]])
    pts = torch.arange(8.0).view(2, 2, 2)
    groups = {"labels": probs.argmax(-1), "scores": probs.max(-1).values, "points": pts, "probs": probs}
    one = list(group_answers(groups))
    assert [(k, round(s, 2)) for k, s, _ in one] == [(0, 0.5), (2, 0.7)]
    two = list(group_answers(groups, 2))
    assert [(k, round(s, 2)) for k, s, _ in two] == [(0, 0.5), (1, 0.3), (2, 0.7), (1, 0.15)]
    assert all(torch.equal(p, pts[i // 2]) for i, (_, _, p) in enumerate(two))  # a group's points for each class
    assert len(list(group_answers(groups, 9))) == 6  # no more than the classes asked
    del groups["probs"]  # an output without probabilities answers with its labels
    assert [k for k, _, _ in group_answers(groups, 3)] == [0, 2]
    with pytest.raises(ValueError, match="at least 1"):
        list(group_answers(groups, 0))


class Unsure(torch.nn.Module):
    """Every object's group from the ground truth (box or polygon), sure of the wrong class (0.6)
    and giving the right one 0.3; one empty group beside each, unsure of everything."""

    def __init__(self, coco):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.coco = coco
        self.names = {c["id"]: c["name"] for c in coco.dataset["categories"]}

    def predict(self, batch):
        out = []
        for req, meta in zip(batch["requests"], batch["meta"]):
            n, K = req.num_points, len(req.classes)
            probs, points = [], []
            for a in self.coco.imgToAnns.get(meta["image_id"], []):
                name = self.names[a["category_id"]]
                if name not in req.classes:
                    continue
                if req.kind == "boxes":
                    x, y, w, h = a["bbox"]
                    p = torch.tensor([[x, y], [x + w, y + h]])
                else:
                    p = torch.tensor(object_polygon(a["segmentation"], n), dtype=torch.float32)
                right = req.classes.index(name)
                row = torch.full((K,), 0.1 / max(K - 2, 1))
                row[right], row[(right + 1) % K] = 0.3, 0.6
                probs += [row, torch.full((K,), 0.05)]
                points += [p / meta["canvas_scale"], torch.zeros(n, 2)]
            probs = torch.stack(probs) if probs else torch.zeros(0, K)
            points = torch.stack(points) if points else torch.zeros(0, n, 2)
            scores, labels = probs.max(-1)
            out.append({"labels": labels, "scores": scores, "points": points, "probs": probs})
        return out


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_second_class_is_counted(val_reader, task):
    kw = dict(image_size=64, chunk=6, batch_size=4, max_images=20, progress=False)
    if task == "detection":
        run = lambda k: evaluate_detection(Unsure(val_reader.coco), val_reader, classes_per_group=k, **kw)  # noqa: E731
        key = "bbox_AP"
    else:
        run = lambda k: evaluate_segmentation(Unsure(val_reader.coco), val_reader, num_points=16,  # noqa: E731
                                              classes_per_group=k, **kw)
        key = "segm_AP"
    m1, res1, _ = run(1)
    m2, res2, table = run(2)
    assert m1[key] < 0.05  # every object under the wrong class
    assert m2[key] > 0.4, table  # the second class names each one (below its wrong first class)
    assert len(res2) == 2 * len(res1)


def test_read_offsets():
    logits = torch.full((2, 2 * LOC_HALF + 1), -30.0)
    # a mode split between bins 100 and 101 (0.6 / 0.4), and a second, smaller mode far away
    logits[0, LOC_HALF + 100], logits[0, LOC_HALF + 101], logits[0, LOC_HALF - 300] = 0.0, torch.tensor(0.4 / 0.6).log(), -0.5
    logits[1, LOC_HALF - 7] = 0.0
    assert read_offsets(logits).tolist() == [100 / LOC_HALF, -7 / LOC_HALF]  # the likeliest bin
    near = read_offsets(logits, 3)
    assert abs(near[0].item() - 100.4 / LOC_HALF) < 1e-5 and abs(near[1].item() + 7 / LOC_HALF) < 1e-6
    # a window over every bin is the plain expectation, which the far mode drags away
    assert torch.allclose(read_offsets(logits, 2 * LOC_HALF), expected_offsets(logits), atol=1e-6)
    assert expected_offsets(logits)[0] < 0.1
    with pytest.raises(ValueError, match="at least 0"):
        read_offsets(logits, -1)
