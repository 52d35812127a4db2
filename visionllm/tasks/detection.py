"""Object detection through instructions (METHOD.md §2, §5, §7).

This task owns its text: the instruction templates, the ground truth turned into answer
targets, the model's groups turned into objects and the paper's printed answer
``[(<c0>, 226.4, 229.8, 363.1, 347.4), ...]``, and results in COCO's format for pycocotools.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from visionllm.data.coco import object_name
from visionllm.data.transforms import hflip_objects, letterbox
from visionllm.tasks import chunked_samples, group_answers, sample_meta
from visionllm.tasks.instructions import (
    DEFAULT_RANGE,
    Request,
    answer_text,
    format_classes,
    format_slots,
)

# Paraphrases; one is drawn per training sample. {classes}, {format}, {range} are filled in.
TEMPLATES = [
    "For each object in <image> that belongs to {classes}, output (class, box) as {format} with coordinates from 0 to {range}.",
    "Detect every instance of {classes} in the image <image>. Answer each one as {format}, coordinates in the range 0 to {range}.",
    "<image> Find all objects of the categories {classes} and give their bounding boxes in the format {format}, from 0 to {range}.",
    "Locate each {classes} object in <image>; write one {format} per object with values from 0 to {range}.",
    "Given the image <image>, list the boxes of all objects among {classes}. Use {format}, range 0 to {range}.",
    "Please detect {classes} in <image> and report every detection as {format} with coordinates between 0 and {range}.",
    "Which objects of {classes} appear in <image>? Give each as {format}, numbers from 0 to {range}.",
    "In <image>, identify the objects belonging to {classes} and return their boxes as {format} in the range 0 to {range}.",
    "Look at <image> and mark every object from the class set {classes} with a box {format}, coordinates from 0 to {range}.",
    "Return the bounding box of each object of {classes} in the picture <image>, formatted as {format}, from 0 to {range}.",
    "Image: <image>. Classes: {classes}. Output every object as {format} with coordinates from 0 to {range}.",
    "Spot all instances of {classes} in <image> and write them as {format}; coordinates range from 0 to {range}.",
]


def make_instruction(
    class_names: list[str], *, template: str | None = None, rng: random.Random | None = None, coord_range: int = DEFAULT_RANGE
) -> str:
    template = template or (rng or random).choice(TEMPLATES)
    return template.format(classes=format_classes(class_names), format=format_slots(2), range=coord_range)


def choose_classes(
    present: list[str], vocabulary: list[str], rng: random.Random, max_classes: int
) -> list[str]:
    """Training class set: positives (mostly all) plus random negatives, shuffled [METHOD §2]."""
    pos = sorted(set(present))
    if pos and rng.random() < 0.2:
        pos = rng.sample(pos, rng.randint(1, len(pos)))
    pos = pos[:max_classes]
    neg = [c for c in vocabulary if c not in present]
    k = rng.randint(0, min(len(neg), max_classes - len(pos))) if neg and len(pos) < max_classes else 0
    names = pos + rng.sample(neg, k)
    if not names:  # an image with nothing to ask about still asks about something
        names = [rng.choice(vocabulary)]
    rng.shuffle(names)
    return names


@dataclass(frozen=True)
class DescribedNames:
    """[ours] Class sets of described objects: with probability ``prob`` a training sample's
    names are ``"<attributes> <category>"`` ("red circle") or, as often,
    ``"<attributes> <supercategory>"`` ("red shape"), from the annotations' ``attributes``
    lists, with negatives drawn from every such combination. The box and class losses then
    ask each image token for its object's attributes too, which plain category names never
    do: a random backbone trained on categories alone drops colour (docs/design.md,
    "Colour"). Images with an object lacking attributes keep plain names.
    """

    prob: float
    attributes: tuple[str, ...]
    categories: tuple[str, ...]
    supercategories: tuple[str, ...]

    @classmethod
    def from_reader(cls, reader, prob: float) -> DescribedNames | None:
        attrs = tuple(getattr(reader, "attribute_names", ()))
        if prob <= 0 or not attrs:
            return None
        cats = tuple(c["name"] for c in reader.categories)
        return cls(prob, attrs, cats, tuple(reader.supercategory_names))

    def pick(self, objects: list[dict], rng: random.Random) -> tuple[list[dict], list[str]] | None:
        """(renamed objects, name vocabulary) for this sample, or None for plain names."""
        if rng.random() >= self.prob or not objects or not all(o.get("attributes") for o in objects):
            return None
        key, nouns = ("supercategory", self.supercategories) if rng.random() < 0.5 else ("category_name", self.categories)
        renamed = [dict(o, category_name=" ".join([*o["attributes"], o[key]])) for o in objects]
        return renamed, [f"{a} {n}" for a in self.attributes for n in nouns]


def class_set(
    objects: list[dict], vocabulary: list[str], rng: random.Random, max_classes: int, described: DescribedNames | None = None
) -> tuple[list[dict], list[str]]:
    """A training sample's (objects named as asked, class names), plain or described."""
    picked = described.pick(objects, rng) if described else None
    if picked:
        objects, vocabulary = picked
    return objects, choose_classes([o["category_name"] for o in objects], vocabulary, rng, max_classes)


def boxes_target(objects: list[dict], class_names: list[str], canvas_scale: float) -> dict:
    """Objects of the asked classes -> labels (n,), coords (n, 4) canvas xyxy, centres (n, 2),
    names (n, in words)."""
    index = {n: k for k, n in enumerate(class_names)}
    labels, boxes, names = [], [], []
    for o in objects:
        if o["category_name"] in index:
            x, y, w, h = o["bbox"]
            labels.append(index[o["category_name"]])
            boxes.append([x, y, x + w, y + h])
            names.append(object_name(o))
    coords = torch.tensor(boxes, dtype=torch.float32).view(-1, 4) / canvas_scale
    return {
        "labels": torch.tensor(labels, dtype=torch.long),
        "coords": coords,
        "centers": (coords[:, :2] + coords[:, 2:]) / 2,
        "names": names,
    }


def training_sample(
    record: dict,
    *,
    vocabulary: list[str],
    image_size: int,
    rng: random.Random,
    max_classes: int = 32,
    flip: bool = True,
    described: DescribedNames | None = None,
) -> dict:
    image, objects = record["image"], record["objects"]
    flipped = flip and rng.random() < 0.5
    if flipped:
        image = image.transpose(0)  # PIL FLIP_LEFT_RIGHT
        objects = hflip_objects(objects, record["width"])
    canvas, mask, scale = letterbox(image, image_size)
    objects, names = class_set(objects, vocabulary, rng, max_classes, described)
    instruction = make_instruction(names, rng=rng)
    target = boxes_target(objects, names, scale)
    if "caption_words" in record:  # the reader's captions_file: image-level words (model.concepts)
        target["caption_words"] = flipped_words(record["caption_words"]) if flipped else record["caption_words"]
    return {
        "image": canvas,
        "pixel_mask": mask,
        "instruction": instruction,
        "request": Request(kind="boxes", classes=names, num_points=2),
        "target": target,
        "meta": sample_meta(record, scale),
    }


def flipped_words(words: list[str] | None) -> list[str] | None:
    """An image's caption words after a left-right flip: "left" and "right" trade places."""
    if words is None:
        return None
    swap = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
    return sorted({swap.get(w, w) for w in words})


def eval_samples(record: dict, *, class_names: list[str], image_size: int, chunk: int = 32, template: str | None = None) -> list[dict]:
    return chunked_samples(
        record, class_names, image_size=image_size, chunk=chunk,
        instruction=lambda names: make_instruction(names, template=template or TEMPLATES[0]),
        request=lambda names: Request(kind="boxes", classes=names, num_points=2),
    )


def to_objects(groups: dict, request: Request, meta: dict, score_threshold: float = 0.0, classes_per_group: int = 1) -> list[dict]:
    """The model's groups of one sample -> objects with pixel boxes of the original image."""
    objs = []
    scale, W, H = meta["canvas_scale"], meta["width"], meta["height"]
    for k, score, pts in group_answers(groups, classes_per_group):
        if score < score_threshold:
            continue
        x1, y1, x2, y2 = (pts.flatten() * scale).tolist()
        x1, x2 = sorted((min(max(x1, 0.0), W), min(max(x2, 0.0), W)))
        y1, y2 = sorted((min(max(y1, 0.0), H), min(max(y2, 0.0), H)))
        objs.append({"label": request.classes[k], "class_index": k, "bbox": [x1, y1, x2, y2], "score": score})
    objs.sort(key=lambda o: -o["score"])
    return objs


def printed_answer(objects: list[dict], request: Request, meta: dict) -> str:
    """``[(<c0>, x1, y1, x2, y2), ...]`` in the instruction's range of the image's width/height."""
    return answer_text(objects, request, meta, [[o["bbox"][:2], o["bbox"][2:]] for o in objects])


def to_coco_results(objects: list[dict], image_id: int, name_to_category: dict[str, int]) -> list[dict]:
    res = []
    for o in objects:
        x1, y1, x2, y2 = o["bbox"]
        res.append(
            {"image_id": image_id, "category_id": name_to_category[o["label"]], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": o["score"]}
        )
    return res
