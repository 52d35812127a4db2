"""Visual grounding through instructions (METHOD.md §2, §5 "Grounding", §7).

The class set holds the referring expression alone, ``{'the rightmost blue shape': <c0>}``,
with the box format; the answer is the top-scoring group's box.

No horizontal flip in training [ours]: expressions say "left", "rightmost", "top left
corner", and swapping words is brittle (compound words, "left" as a verb, other languages);
the box task's flip already teaches the image side of mirroring.

Several expressions a sample [ours] (``task.grounding.expressions`` = k > 1): a training sample
also names, as further classes of its set, up to k - 1 other objects of the same image, each by
one of its own expressions, and the answer is one box per expression. Each sample then teaches
that many referents, and each expression's group is taught against groups that other
expressions of the image win (docs/design.md, "Several expressions a sample"). Evaluation keeps
one expression an instruction, the benchmarks' form.
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch
from torch.utils.data import ConcatDataset

from visionllm.data.transforms import letterbox
from visionllm.tasks import detection, sample_meta
from visionllm.tasks.instructions import DEFAULT_RANGE, Request, format_classes, format_slots

# {classes}, {format}, {range} are filled in.
TEMPLATES = [
    "Find the object in <image> described by {classes} and output its bounding box as {format} with coordinates from 0 to {range}.",
    "In the image <image>, locate {classes}. Answer with one box {format}, coordinates in the range 0 to {range}.",
    "<image> Which region does the expression {classes} refer to? Give its box as {format}, from 0 to {range}.",
    "Ground the referring expression {classes} in <image> and return the box {format} with values from 0 to {range}.",
    "Given the image <image>, draw a bounding box around the object that matches {classes}. Use {format}, range 0 to {range}.",
    "Please point out {classes} in <image> by its bounding box in the format {format}, coordinates between 0 and {range}.",
    "Look at <image> and identify the one object referred to by {classes}; write it as {format} with numbers from 0 to {range}.",
    "Where is {classes} in <image>? Output the box {format} in the range 0 to {range}.",
    "Image: <image>. Expression: {classes}. Return the matching object's box as {format}, coordinates from 0 to {range}.",
    "Localize the object that the phrase {classes} describes in the picture <image>, formatted as {format}, from 0 to {range}.",
    "Detect the object referred to as {classes} in <image> and report its box {format}; coordinates range from 0 to {range}.",
]

# Several expressions in one class set, one box each.
PLURAL_TEMPLATES = [
    "Find the objects in <image> described by {classes}, one bounding box each as {format} with coordinates from 0 to {range}.",
    "In the image <image>, locate each of {classes}. Answer with one box apiece, {format}, coordinates in the range 0 to {range}.",
    "<image> Which regions do the expressions {classes} refer to? Give a box for each as {format}, from 0 to {range}.",
    "Ground each referring expression of {classes} in <image> and return one box per expression, {format}, with values from 0 to {range}.",
    "Given the image <image>, draw a bounding box around each object that matches one of {classes}. Use {format}, range 0 to {range}.",
    "Please point out {classes} in <image>, each by its bounding box in the format {format}, coordinates between 0 and {range}.",
    "Look at <image> and identify the objects referred to by {classes}, one each; write them as {format} with numbers from 0 to {range}.",
    "Where are {classes} in <image>? Output a box {format} for each, in the range 0 to {range}.",
    "Image: <image>. Expressions: {classes}. Return each matching object's box as {format}, coordinates from 0 to {range}.",
    "Localize the objects that the phrases {classes} describe in the picture <image>, each formatted as {format}, from 0 to {range}.",
]


def expression_classes(expression: str) -> list[str]:
    """The one-entry class set. A name holding both quote kinds cannot be written inside
    either, so double quotes become single ones."""
    text = " ".join(expression.split())
    if "'" in text and '"' in text:
        text = text.replace('"', "'")
    return [text or "the object"]


def make_instruction(
    expression: str | list[str], *, template: str | None = None, rng: random.Random | None = None,
    coord_range: int = DEFAULT_RANGE
) -> str:
    """The instruction for one expression, or for several (a list of more than one: the plural
    templates)."""
    expressions = [expression] if isinstance(expression, str) else list(expression)
    names = [expression_classes(e)[0] for e in expressions]
    template = template or (rng or random).choice(TEMPLATES if len(names) == 1 else PLURAL_TEMPLATES)
    return template.format(classes=format_classes(names), format=format_slots(2), range=coord_range)


def box_target(bbox_xywh, canvas_scale: float, name: str | None = None) -> dict:
    """The referred box -> labels [0], coords (1, 4) canvas xyxy, centers (1, 2), and names
    [the object in words] where the reader knows them."""
    x, y, w, h = bbox_xywh
    coords = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32) / canvas_scale
    target = {"labels": torch.zeros(1, dtype=torch.long), "coords": coords, "centers": (coords[:, :2] + coords[:, 2:]) / 2}
    if name:
        target["names"] = [name]
    return target


def _listed(reader) -> list[dict]:
    """Every sample's description (image_id, bbox, expression, object_name) without its image:
    a :class:`RefCocoGrounding`'s ``samples``, or those of each part of a merged set."""
    if isinstance(reader, ConcatDataset):
        return [s for part in reader.datasets for s in _listed(part)]
    samples = getattr(reader, "samples", None)
    if not isinstance(samples, list):
        raise ValueError(f"task.grounding.expressions > 1: the grounding reader ({type(reader).__name__}) does not "
                         "list its samples, so the other objects of an image cannot be found; use RefCocoGrounding "
                         "(or merged_grounding) or set task.grounding.expressions=1")
    return samples


def _object_key(bbox) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in bbox)


def check_expressions(k) -> int:
    """``task.grounding.expressions``: a whole number >= 1, returned; anything else is a clear error."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"task.grounding.expressions: expected a whole number >= 1 (expressions a training "
                         f"sample names), got {k!r}")
    return k


class Companions:
    """The other referred objects of each image, with their expressions [ours]: for a record,
    one list of expressions per other object of its image (objects told apart by their boxes,
    so the same object under several merged data sets counts once)."""

    def __init__(self, reader):
        self.objects: dict[int, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for s in _listed(reader):
            self.objects[int(s["image_id"])][_object_key(s["bbox"])].append(s)

    def others(self, record: dict) -> list[list[dict]]:
        own = _object_key(record["bbox"])
        return [refs for key, refs in self.objects.get(int(record["image_id"]), {}).items() if key != own]


def training_sample(record: dict, *, image_size: int, rng: random.Random, companions: Companions | None = None,
                    expressions: int = 1) -> dict:
    """The record's expression, and with ``companions`` and ``expressions`` k > 1 up to k - 1 other
    objects of its image, each by one of its expressions, in a random order."""
    canvas, mask, scale = letterbox(record["image"], image_size)
    chosen = [record]
    if companions is not None and expressions > 1:
        others = companions.others(record)
        seen = {expression_classes(record["expression"])[0]}
        for refs in rng.sample(others, min(expressions - 1, len(others))):
            pick = rng.choice(refs)
            name = expression_classes(pick["expression"])[0]
            if name not in seen:  # two objects the same words cannot both be answered
                seen.add(name)
                chosen.append(pick)
        rng.shuffle(chosen)
    parts = [box_target(r["bbox"], scale, r.get("object_name")) for r in chosen]
    target = {k: torch.cat([p[k] for p in parts]) for k in ("coords", "centers")}
    target["labels"] = torch.arange(len(chosen))
    if all("names" in p for p in parts):
        target["names"] = [n for p in parts for n in p["names"]]
    target["referring"] = True  # one object an expression: the referent loss for each (losses.answer_loss)
    texts = [r["expression"] for r in chosen]
    return {
        "image": canvas,
        "pixel_mask": mask,
        "instruction": make_instruction(texts if len(texts) > 1 else texts[0], rng=rng),
        "request": Request(kind="boxes", classes=[expression_classes(t)[0] for t in texts], num_points=2),
        "target": target,
        "meta": sample_meta(record, scale),
    }


def eval_samples(record: dict, *, image_size: int, template: str | None = None) -> list[dict]:
    """One sample; meta carries the ground truth (``gt_bbox`` xywh) and the ref's ids/split."""
    canvas, mask, scale = letterbox(record["image"], image_size)
    meta = sample_meta(record, scale)
    meta.update({"gt_bbox": list(record["bbox"]), "expression": record["expression"]})
    meta.update({k: record[k] for k in ("ref_id", "sent_id", "split") if k in record})
    return [
        {
            "image": canvas,
            "pixel_mask": mask,
            "instruction": make_instruction(record["expression"], template=template or TEMPLATES[0]),
            "request": Request(kind="boxes", classes=expression_classes(record["expression"]), num_points=2),
            "meta": meta,
        }
    ]


RANKS = ("class", "objectness", "product")


def to_box(groups: dict, request: Request, meta: dict, rank: str = "class") -> dict | None:
    """The answer: the top group as {"label", "class_index", "bbox" xyxy pixels, "score"}.

    ``rank``: which score picks it: the LLM's class slot (``class``, the paper's), the image
    tokenizer's objectness of the group's token (``objectness``: in training, a grounding
    instruction's tokenizer target is the referred object alone, with the expression fused
    into the encoder), or their ``product``."""
    ranked = ranked_boxes(groups, request, meta, rank)
    return ranked[0] if ranked else None


def ranked_boxes(groups: dict, request: Request, meta: dict, rank: str = "class") -> list[dict]:
    """Every group's box, best first by ``rank`` (as ``to_box``): the answer and the ones it
    was preferred to."""
    if rank not in RANKS:
        raise ValueError(f"grounding rank must be one of {RANKS}, not {rank!r}")
    if rank != "class":
        if groups.get("objectness") is None:
            raise ValueError(f"grounding rank {rank!r} needs the tokenizer's objectness, which this model does not give")
        obj = groups["objectness"].to(groups["scores"].dtype)
        groups = {**groups, "scores": obj if rank == "objectness" else obj * groups["scores"]}
    return detection.to_objects(groups, request, meta)


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def printed_answer(obj: dict | None, request: Request, meta: dict) -> str:
    return detection.printed_answer([obj] if obj else [], request, meta)
