"""What captions written from the model's own detections would score: the caption CIDEr the
model's vision allows, whatever its language path does with it (built-in shapes only).

    python tools/caption_ceiling.py EVAL_DIR [--root data/shapes] [--thresholds 0.5 0.7]

EVAL_DIR is a ``tools/eval.py ... task=all`` output (its ``detections.json`` and
``captions.json``: the images its captions were scored on). For each image, the detections
scoring at least a threshold are written, by the shapes' own caption rules
(``datasets_prep/shapes/language.py``), into two of its five reference styles: "counts" (every
kind of object with its number: "An image showing two red stars and a green triangle.") and
"positional" (the largest object, its third of the image, and its nearest neighbour: "A red
star in the top right corner next to a green triangle."). A detection carries a shape, not a
colour, so each takes the colour of the true object it overlaps most (IoU >= 0.5) and none
where it overlaps none: the scores are an upper bound on what the detections would give with
the colours named right. A detection is placed by its box (centre, area); where EVAL_DIR also
has ``segmentations.json``, its answers are read again, placed by their masks (the centroid and
area of what is visible, as the references place objects). The same captions written from the
true objects (their visible masks) are the ceiling of the rules themselves. Printed as JSON,
with the share of images whose kept objects are exactly the true shapes, and exactly the true
number of objects.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import box_convert, box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets_prep.shapes.language import PLURAL, article, counted, join_list, region, sentence  # noqa: E402
from visionllm.evaluation.caption import caption_scores  # noqa: E402

MATCH_IOU = 0.5


def counts_caption(objects: list[dict]) -> str:
    """The counts style: kinds by number, most first; colour and shape for up to four kinds
    (and every object coloured), else shapes alone, as the shapes' references write it."""
    if not objects:
        return "An empty image."
    kinds = Counter((o["color"], o["shape"]) for o in objects)
    if len(kinds) <= 4 and all(o["color"] for o in objects):
        return sentence("an image showing " + join_list(
            [counted(n, f"{c} {s}", f"{c} {PLURAL[s]}") for (c, s), n in kinds.most_common()]))
    shapes = Counter(o["shape"] for o in objects)
    return sentence("an image with " + join_list([counted(n, s, PLURAL[s]) for s, n in shapes.most_common()]))


def _name(o: dict) -> str:
    return article(f"{o['color']} {o['shape']}" if o["color"] else o["shape"])


def positional_caption(objects: list[dict], width: int, height: int) -> str:
    """The positional style: the largest object, where it is, and its nearest neighbour."""
    if not objects:
        return "An empty image."
    main = max(objects, key=lambda o: o["area"])
    head = f"{_name(main)} {region(main, width, height)}"
    others = [o for o in objects if o is not main]
    if not others:
        return sentence(f"{head} of the image")
    near = min(others, key=lambda o: math.hypot(o["cx"] - main["cx"], o["cy"] - main["cy"]))
    return sentence(f"{head} next to {_name(near)}")


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    return box_convert(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")


def _object(box, shape: str, color: str | None, area: float) -> dict:
    return {"cx": box[0] + box[2] / 2, "cy": box[1] + box[3] / 2, "area": area, "shape": shape, "color": color}


def _colour(annotation: dict) -> str | None:
    return (annotation.get("attributes") or [None])[0]


def _placed(o: dict, segmentation, height: int, width: int) -> dict:
    """``o`` placed by a mask (COCO polygons or RLE): its visible centroid and area."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = segmentation if isinstance(segmentation["counts"], (str, bytes)) else mask_utils.frPyObjects(
            segmentation, height, width)
    ys, xs = np.nonzero(mask_utils.decode(rle))
    if len(xs):
        o = {**o, "cx": float(xs.mean()) + 0.5, "cy": float(ys.mean()) + 0.5, "area": float(len(xs))}
    return o


def detected_objects(detections: list[dict], truth: list[dict], names: dict[int, str], threshold: float,
                     size: tuple[int, int] | None = None) -> list[dict]:
    """Detections scoring >= threshold, each with the colour of the true object it overlaps most
    (at IoU >= MATCH_IOU; none otherwise), placed by its box, or with ``size`` (width, height)
    by its mask."""
    kept = [d for d in detections if d["score"] >= threshold]
    if not kept:
        return []
    iou = box_iou(_xyxy([d["bbox"] for d in kept]), _xyxy([a["bbox"] for a in truth])) if truth else None
    out = []
    for k, d in enumerate(kept):
        color = None
        if iou is not None and float(iou[k].max()) >= MATCH_IOU:
            color = _colour(truth[int(iou[k].argmax())])
        o = _object(d["bbox"], names[d["category_id"]], color, d["bbox"][2] * d["bbox"][3])
        out.append(_placed(o, d["segmentation"], size[1], size[0]) if size else o)
    return out


def ceiling(eval_dir: Path, instances: dict, references: dict[int, list[str]], thresholds: list[float]) -> dict:
    names = {c["id"]: c["name"] for c in instances["categories"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in instances["images"]}
    truth = defaultdict(list)
    for a in instances["annotations"]:
        truth[a["image_id"]].append(a)
    answers = {}
    for kind in ("detections", "segmentations"):
        if (eval_dir / f"{kind}.json").exists():
            answers[kind] = defaultdict(list)
            for d in json.loads((eval_dir / f"{kind}.json").read_text()):
                answers[kind][d["image_id"]].append(d)
    if "detections" not in answers:
        raise ValueError(f"{eval_dir} has no detections.json: give the output of tools/eval.py ... task=all")
    ids = sorted({c["image_id"] for c in json.loads((eval_dir / "captions.json").read_text())})
    missing = [i for i in ids if i not in references or i not in sizes]
    if not ids or missing:
        raise ValueError(f"{eval_dir}: {len(ids)} captioned images, {len(missing)} of them without references or "
                         f"instances (e.g. {missing[:3]}); give the --root the evaluation used")
    refs = {i: references[i] for i in ids}

    def score(objects_of) -> dict:
        written = {i: objects_of(i) for i in ids}
        return {
            "counts": caption_scores(refs, {i: counts_caption(o) for i, o in written.items()})["caption_CIDEr"],
            "positional": caption_scores(refs, {i: positional_caption(o, *sizes[i]) for i, o in written.items()})[
                "caption_CIDEr"],
        }

    out = {"images": len(ids), "truth": score(lambda i: [
        _placed(_object(a["bbox"], names[a["category_id"]], _colour(a), a["area"]),
                a["segmentation"], sizes[i][1], sizes[i][0]) for a in truth[i]])}
    for kind, of_image in answers.items():
        for t in thresholds:
            by_mask = kind == "segmentations"
            row = score(lambda i, t=t, of=of_image, m=by_mask: detected_objects(of[i], truth[i], names, t,
                                                                                sizes[i] if m else None))
            kept = {i: [d for d in of_image[i] if d["score"] >= t] for i in ids}
            row["exact_shapes"] = sum(Counter(names[d["category_id"]] for d in kept[i])
                                      == Counter(names[a["category_id"]] for a in truth[i]) for i in ids) / len(ids)
            row["exact_number"] = sum(len(kept[i]) == len(truth[i]) for i in ids) / len(ids)
            out[f"{kind}@{t:g}"] = row
    return out


def load_val(root: Path) -> tuple[dict, dict[int, list[str]]]:
    """The val split's instances and each image's reference captions, from ROOT/annotations."""
    ann = root / "annotations"
    references = defaultdict(list)
    for c in json.loads((ann / "captions_val2017.json").read_text())["annotations"]:
        references[c["image_id"]].append(c["caption"])
    return json.loads((ann / "instances_val2017.json").read_text()), dict(references)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/shapes"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7])
    args = ap.parse_args()
    print(json.dumps(ceiling(args.eval_dir, *load_val(args.root), args.thresholds), indent=1))


if __name__ == "__main__":
    main()
