"""Instance segmentation through instructions (METHOD.md §2, §5, §7).

The same class-set instructions as detection, with an N-point polygon format
``(c, x1, y1, ..., xN, yN)``. N is free: training draws it per sample from a list, evaluation
asks for one N. Targets are each object's outer contour resampled by ``tasks.polygons``
(largest part, clockwise from the top-most point); masks are scored as COCO RLE.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from pycocotools import mask as mask_utils

from visionllm.data.coco import object_name
from visionllm.data.transforms import hflip_objects, letterbox
from visionllm.tasks import chunked_samples, group_answers, sample_meta
from visionllm.tasks.detection import DescribedNames, class_set
from visionllm.tasks.instructions import DEFAULT_RANGE, Request, answer_text, format_classes
from visionllm.tasks.polygons import object_polygon

NUM_POINTS_CHOICES = (8, 12, 16, 20, 24)
EVAL_NUM_POINTS = 16

# {classes}, {n}, {format} (the short polygon form), {range} are filled in.
TEMPLATES = [
    "For each object in <image> that is a member of {classes}, output a tuple with the class label and the coordinates of a polygon with {n} points that encloses the object. {format} from 0 to {range}.",
    "Segment every instance of {classes} in <image>. Answer each one as a polygon of {n} points, {format}, coordinates in the range 0 to {range}.",
    "<image> Find all objects of the categories {classes} and outline each with {n} boundary points in the format {format}, from 0 to {range}.",
    "Trace the outline of each {classes} object in <image> with {n} points; write one {format} per object with values from 0 to {range}.",
    "Given the image <image>, give the {n}-point polygon of every object among {classes}. Use {format}, range 0 to {range}.",
    "Please segment {classes} in <image> and report every instance as {format}, a {n}-vertex contour with coordinates between 0 and {range}.",
    "Which objects of {classes} appear in <image>? Outline each as {format} with {n} points, numbers from 0 to {range}.",
    "In <image>, identify the objects belonging to {classes} and return their contours as {format} in the range 0 to {range}.",
    "Look at <image> and draw a polygon of {n} points around every object from the class set {classes}, formatted as {format}, coordinates from 0 to {range}.",
    "Return the instance mask of each object of {classes} in the picture <image> as a polygon {format} with {n} points, from 0 to {range}.",
    "Image: <image>. Classes: {classes}. Output every object's {n}-point boundary as {format} with coordinates from 0 to {range}.",
    "Delineate all instances of {classes} in <image> and write them as {format}; coordinates range from 0 to {range}.",
]


def polygon_format(num_points: int) -> str:
    """16 -> '(c, x1, y1, ..., x16, y16)': the short form, since 2N written-out slots would
    crowd the instruction (parse_instruction reads both)."""
    if num_points < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {num_points}")
    return f"(c, x1, y1, ..., x{num_points}, y{num_points})"


def make_instruction(
    class_names: list[str],
    num_points: int,
    *,
    template: str | None = None,
    rng: random.Random | None = None,
    coord_range: int = DEFAULT_RANGE,
) -> str:
    template = template or (rng or random).choice(TEMPLATES)
    return template.format(
        classes=format_classes(class_names), n=num_points, format=polygon_format(num_points), range=coord_range
    )


def polygons_target(objects: list[dict], class_names: list[str], canvas_scale: float, num_points: int) -> tuple[dict, int]:
    """Objects of the asked classes -> (target, number skipped). Target: labels (n,), coords
    (n, 2N) canvas-normalized interleaved x, y, centres (n, 2) of the boxes, names (n, in
    words). Objects without a usable polygon (RLE, degenerate) are skipped and counted."""
    index = {n: k for k, n in enumerate(class_names)}
    labels, polys, centers, names, skipped = [], [], [], [], 0
    for o in objects:
        if o["category_name"] not in index:
            continue
        try:
            poly = object_polygon(o.get("segmentation"), num_points)
        except ValueError:
            skipped += 1
            continue
        x, y, w, h = o["bbox"]
        labels.append(index[o["category_name"]])
        polys.append(poly.reshape(-1))
        centers.append([x + w / 2, y + h / 2])
        names.append(object_name(o))
    coords = torch.as_tensor(np.array(polys, dtype=np.float32)).view(-1, 2 * num_points) / canvas_scale
    target = {
        "labels": torch.tensor(labels, dtype=torch.long),
        "coords": coords,
        "centers": torch.tensor(centers, dtype=torch.float32).view(-1, 2) / canvas_scale,
        "names": names,
    }
    return target, skipped


def training_sample(
    record: dict,
    *,
    vocabulary: list[str],
    image_size: int,
    rng: random.Random,
    max_classes: int = 32,
    flip: bool = True,
    num_points_choices=NUM_POINTS_CHOICES,
    described: DescribedNames | None = None,
) -> dict:
    """meta["skipped_objects"] counts asked-for objects left out for want of a polygon."""
    image, objects = record["image"], record["objects"]
    if flip and rng.random() < 0.5:
        image = image.transpose(0)  # PIL FLIP_LEFT_RIGHT; resampling restores clockwise order
        objects = hflip_objects(objects, record["width"])
    canvas, mask, scale = letterbox(image, image_size)
    objects, names = class_set(objects, vocabulary, rng, max_classes, described)
    n = rng.choice(list(num_points_choices))
    target, skipped = polygons_target(objects, names, scale, n)
    return {
        "image": canvas,
        "pixel_mask": mask,
        "instruction": make_instruction(names, n, rng=rng),
        "request": Request(kind="polygons", classes=names, num_points=n),
        "target": target,
        "meta": {**sample_meta(record, scale), "skipped_objects": skipped},
    }


def eval_samples(
    record: dict,
    *,
    class_names: list[str],
    image_size: int,
    chunk: int = 32,
    num_points: int = EVAL_NUM_POINTS,
    template: str | None = None,
) -> list[dict]:
    """One sample per chunk of the class list (METHOD.md §7), all asking for ``num_points``."""
    return chunked_samples(
        record, class_names, image_size=image_size, chunk=chunk,
        instruction=lambda names: make_instruction(names, num_points, template=template or TEMPLATES[0]),
        request=lambda names: Request(kind="polygons", classes=names, num_points=num_points),
    )


def to_objects(groups: dict, request: Request, meta: dict, score_threshold: float = 0.0, classes_per_group: int = 1) -> list[dict]:
    """The model's groups of one sample -> objects with a pixel polygon [[x, y], ...] of the
    original image (clipped to it) and its bounds as ``bbox`` xyxy."""
    scale, W, H = meta["canvas_scale"], meta["width"], meta["height"]
    objs = []
    for k, score, pts in group_answers(groups, classes_per_group):
        if score < score_threshold:
            continue
        p = pts.detach().float().cpu().numpy().reshape(-1, 2) * scale
        p[:, 0] = p[:, 0].clip(0, W)
        p[:, 1] = p[:, 1].clip(0, H)
        bbox = [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]
        objs.append({"label": request.classes[k], "class_index": k, "polygon": p.tolist(), "bbox": bbox, "score": score})
    objs.sort(key=lambda o: -o["score"])
    return objs


def printed_answer(objects: list[dict], request: Request, meta: dict) -> str:
    """``[(<c0>, x1, y1, ..., xN, yN), ...]`` in the instruction's range of width/height."""
    return answer_text(objects, request, meta, [o["polygon"] for o in objects])


def polygon_rle(polygon: list[list[float]], height: int, width: int) -> dict:
    """Pixel polygon -> COCO RLE with ``counts`` as str, so results can be JSON-dumped."""
    flat = [float(v) for xy in polygon for v in xy]
    if len(flat) == 4:  # pycocotools reads a 4-number "polygon" as a box; repeat a point
        flat += flat[-2:]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_coco_results(
    objects: list[dict], image_id: int, name_to_category: dict[str, int], *, height: int, width: int
) -> list[dict]:
    res = []
    for o in objects:
        x1, y1, x2, y2 = o["bbox"]
        res.append(
            {
                "image_id": image_id,
                "category_id": name_to_category[o["label"]],
                "segmentation": polygon_rle(o["polygon"], height, width),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": o["score"],
            }
        )
    return res
