"""Where an evaluation's errors are: grounding by expression kind, VQA by question type,
caption variety, from the files ``tools/eval.py`` writes.

    python tools/breakdown.py EVAL_DIR [--instances data/shapes/refcoco/instances.json]
                              [--caption-instances FILE] [--detection-instances FILE]

- grounding (grounding.json): P@0.5 per expression kind, told apart by their words (the
  shapes' generator, datasets_prep/shapes/language.py: ``attr`` "the red circle", ``super``
  "the largest ...", ``extreme`` "the leftmost ...", ``rel`` "... left of the ..."); and, with
  ``--instances``, the share of wrong answers whose box still covers another object of the
  image (IoU >= 0.5): the model found an object, the wrong one; and per kind the ``chance``
  P@0.5 of naming one of the image's objects at random (the mean of 1 / objects), the score
  of a model that finds objects and ignores the expression; and ``same_box_other_referent``:
  of the pairs of expressions about different objects of one image, the share answered with
  the same box (1.0: the answer does not depend on the expression); and, per kind,
  ``wrong_object``: of the wrong answers on another object, the share on a ``look_alike`` (an
  object the expression's head phrase also fits, "the leftmost circle" answered with another
  circle: the words were read, the comparison lost), on the ``anchor`` of a relation ("the star
  left of the square" answered with the square) and on ``other`` objects (the words misread);
  colour words are the instances' ``attributes``, shape words their category names; and per
  kind ``wrong_ranked``: of the wrong answers, the share where a lower-ranked group had a right
  box (the ranking lost it; the rest, no group's box was right), and of those the share second;
- VQA (vqa.json): accuracy per question type (count, exist, color, shape, position) and the
  share of the most common prediction per type (1.0: one answer whatever the image);
- captions (captions.json): distinct captions / captions (low: the text ignores the image);
  with ``--caption-instances`` (the instances of the captioned images, on shapes
  annotations/instances_val2017.json), the colour-and-shape pairs the captions name
  ("a red circle", "two blue stars"): ``mentions``, the share that is an object of the image
  (``precision``), of the rest the share whose colour and shape are each in the image on other
  objects (``bound_wrong``: two objects' words on one), pairs named again in one caption
  (``repeats``) and the mean share of an image's kinds of object its caption names
  (``coverage``);
- detection (detections.json), with ``--detection-instances`` (the val instances the detections
  answer, on shapes annotations/instances_val2017.json): per category its box AP (pycocotools,
  IoU 0.5:0.95) and, for each of its objects, which class the best-scoring detection of IoU
  >= 0.5 carries (``called``: shares per class, ``<miss>`` where none): where box AP is lost to
  naming the wrong shape rather than to boxes.

Prints one JSON object. The kinds are read off English phrasing, so on other data sets
they are a rough grouping; everything else is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from collections import Counter
from pathlib import Path

from visionllm.tasks.grounding import box_iou

EXPRESSION_KINDS = (  # first match wins: "the largest shape left of ..." does not occur
    ("rel", re.compile(r"\b(left of|right of|above|below|under)\b")),
    ("super", re.compile(r"\b(largest|biggest|smallest)\b")),
    ("extreme", re.compile(r"\b(leftmost|rightmost|topmost|highest|lowest|bottom|furthest)\b")),
)
QUESTION_TYPES = (
    ("count", re.compile(r"^how many\b")),
    ("exist", re.compile(r"^is there\b")),
    ("color", re.compile(r"^what colou?r\b")),
    ("shape", re.compile(r"^what shape\b")),
    ("position", re.compile(r"\b(left or the right|top or the bottom)\b")),
)


def expression_kind(text: str) -> str:
    text = text.lower()
    return next((k for k, pat in EXPRESSION_KINDS if pat.search(text)), "attr")


def question_type(text: str) -> str:
    text = text.lower().replace("<image>", "").strip()
    return next((k for k, pat in QUESTION_TYPES if pat.search(text)), "other")


def grounding(results: list[dict], instances: Path | None) -> dict:
    by_kind: dict[str, list[bool]] = {}
    for r in results:
        by_kind.setdefault(expression_kind(r["expression"]), []).append(bool(r["correct"]))
    out = {k: {"P@0.5": round(sum(v) / len(v), 3), "expressions": len(v)} for k, v in sorted(by_kind.items())}
    for k, shares in ranked_wrong(results).items():
        out[k]["wrong_ranked"] = shares
    if instances is not None:
        coco = json.loads(instances.read_text())
        objects = image_objects(coco)
        boxes = {i: [o[0] for o in objs] for i, objs in objects.items()}
        odds: dict[str, list[float]] = {}
        for r in results:
            n = len(boxes.get(r["image_id"], []))
            odds.setdefault(expression_kind(r["expression"]), []).append(1 / n if n else 0.0)
        for k, v in odds.items():
            out[k]["chance"] = round(sum(v) / len(v), 3)
        out["chance"] = round(sum(x for v in odds.values() for x in v) / max(1, len(results)), 3)
        wrong = [r for r in results if not r["correct"] and r["bbox"] is not None]
        other = sum(any(box_iou(r["bbox"], b) >= 0.5 for b in boxes.get(r["image_id"], [])) for r in wrong)
        out["wrong_answers_on_another_object"] = round(other / len(wrong), 3) if wrong else 0.0
        for k, shares in wrong_objects(wrong, objects, coco).items():
            out[k]["wrong_object"] = shares
    same = same_box_other_referent(results)
    if same is not None:
        out["same_box_other_referent"] = same
    return out


def ranked_wrong(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per expression kind, of the wrong answers: the share where another group had a right box
    (``right_box_lower``: the ranking lost it) and, of those, the share where it came second;
    the rest had no right box in any group (the boxes lost it). Needs each result's
    ``right_rank`` (evaluation since run 34); {} without."""
    wrong: dict[str, list[int | None]] = {}
    for r in results:
        if "right_rank" not in r:
            return {}
        if not r["correct"]:
            wrong.setdefault(expression_kind(r["expression"]), []).append(r["right_rank"])
    out = {}
    for k, ranks in wrong.items():
        lower = [x for x in ranks if x is not None]
        out[k] = {"right_box_lower": round(len(lower) / len(ranks), 3),
                  "of_which_second": round(sum(x == 2 for x in lower) / len(lower), 3) if lower else 0.0}
    return out


def phrase(words: list[str], colours: set[str], shapes: set[str]) -> tuple[str | None, str | None]:
    """The (colour, shape) a noun phrase names, None for a word it does not say ("the blue shape")."""
    return next((w for w in words if w in colours), None), next((w for w in words if w in shapes), None)


def image_objects(instances: dict) -> dict[int, list[tuple[list[float], set[str], str | None]]]:
    """Per image id, its objects as (xyxy box, attribute words, category name)."""
    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    objects: dict[int, list] = {}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        objects.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], set(a.get("attributes", [])), names.get(a.get("category_id"))))
    return objects


def wrong_objects(wrong: list[dict], objects: dict, instances: dict) -> dict[str, dict[str, float]]:
    """Per expression kind, where wrong answers that sit on another object (IoU >= 0.5) landed:
    {"look_alike", "anchor", "other"} shares (see the module's doc); ``objects`` from
    ``image_objects(instances)``."""
    colours = {c for objs in objects.values() for _, attrs, _ in objs for c in attrs}
    shapes = {c["name"] for c in instances.get("categories", [])}

    def fits(obj, named) -> bool:
        colour, shape = named
        return (colour is not None or shape is not None) and colour in obj[1] | {None} and shape in (obj[2], None)

    landed: dict[str, Counter] = {}
    for r in wrong:
        overlaps = [(box_iou(r["bbox"], o[0]), o) for o in objects.get(r["image_id"], [])]
        best = max(overlaps, key=lambda t: t[0], default=(0.0, None))
        if best[0] < 0.5:
            continue
        text = r["expression"].lower()
        kind = expression_kind(text)
        cut = EXPRESSION_KINDS[0][1].search(text) if kind == "rel" else None
        head = phrase(re.findall(r"[a-z]+", text[: cut.start()] if cut else text), colours, shapes)
        anchor = phrase(re.findall(r"[a-z]+", text[cut.end():]), colours, shapes) if cut else (None, None)
        # the anchor first: "the circle left of the red circle" answered with the red circle
        where = "anchor" if fits(best[1], anchor) else "look_alike" if fits(best[1], head) else "other"
        landed.setdefault(kind, Counter())[where] += 1
    return {k: {w: round(c[w] / sum(c.values()), 3) for w in ("look_alike", "anchor", "other")} for k, c in landed.items()}


def same_box_other_referent(results: list[dict]) -> float | None:
    """Share of pairs (two expressions, one image, different referred objects) whose answers
    are the same box (IoU >= 0.5); None without ``ref_id``s or such pairs."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r.get("ref_id") is not None and r.get("bbox") is not None:
            by_image.setdefault(r["image_id"], []).append(r)
    pairs = same = 0
    for rs in by_image.values():
        for i, a in enumerate(rs):
            for b in rs[i + 1:]:
                if a["ref_id"] != b["ref_id"]:
                    pairs += 1
                    same += box_iou(a["bbox"], b["bbox"]) >= 0.5
    return round(same / pairs, 3) if pairs else None


def vqa(results: list[dict]) -> dict:
    by_type: dict[str, list[dict]] = {}
    for r in results:
        if r["short"]:
            by_type.setdefault(question_type(r["question"]), []).append(r)
    out = {}
    for t, rs in sorted(by_type.items()):
        top = Counter(r["prediction"].strip().lower() for r in rs).most_common(1)[0]
        out[t] = {
            "accuracy": round(sum(bool(r["correct"]) for r in rs) / len(rs), 3),
            "questions": len(rs),
            "most_common_prediction": top[0],
            "its_share": round(top[1] / len(rs), 3),
        }
    return out


def captions(results: list[dict]) -> dict:
    texts = [r["caption"].strip().lower() for r in results]
    return {"captions": len(texts), "distinct": len(set(texts)), "distinct_share": round(len(set(texts)) / max(len(texts), 1), 3)}


def caption_mentions(results: list[dict], instances: dict) -> dict:
    """The colour-and-shape pairs the captions name, against the images' objects (the module's doc)."""
    objects = image_objects(instances)
    colours = {c for objs in objects.values() for _, attrs, _ in objs for c in attrs}
    shapes = {c["name"] for c in instances.get("categories", [])}

    def shape_of(word: str) -> str | None:
        return next((w for w in (word, word[:-1], word[:-2]) if w in shapes), None)

    mentions = right = bound_wrong = repeats = 0
    coverage = []
    for r in results:
        kinds = {(c, o[2]) for o in objects.get(r["image_id"], []) for c in o[1]}
        words = re.findall(r"[a-z]+", r["caption"].lower())
        named = [(a, shape_of(b)) for a, b in zip(words, words[1:]) if a in colours and shape_of(b)]
        mentions += len(named)
        right += sum(n in kinds for n in named)
        bound_wrong += sum(n not in kinds and any(c == n[0] for c, _ in kinds) and any(o == n[1] for _, o in kinds)
                           for n in named)
        repeats += len(named) - len(set(named))
        coverage.append(len(set(named) & kinds) / len(kinds) if kinds else 1.0)
    wrong = mentions - right
    return {"mentions": mentions, "precision": round(right / mentions, 3) if mentions else None,
            "bound_wrong": round(bound_wrong / wrong, 3) if wrong else None, "repeats": repeats,
            "coverage": round(sum(coverage) / len(coverage), 3) if coverage else None}


def detection_classes(results: list[dict], instances: dict) -> dict[str, dict]:
    """Per category: box AP and what its objects' best detections call them (the module's doc)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {c["id"]: c["name"] for c in instances.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    called: dict[str, Counter] = {n: Counter() for n in names.values()}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        gt = [x, y, x + w, y + h]
        hits = [r for r in by_image.get(a["image_id"], [])
                if box_iou(gt, [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]) >= 0.5]
        best = max(hits, key=lambda r: r["score"]) if hits else None
        called[names[a["category_id"]]][names.get(best["category_id"], "?") if best else "<miss>"] += 1
    ap: dict[int, float] = {}
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            gt_api = COCO()
            gt_api.dataset = {k: instances.get(k, []) for k in ("images", "annotations", "categories")}
            gt_api.createIndex()
            ev = COCOeval(gt_api, gt_api.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]), "bbox")
            ev.evaluate()
            ev.accumulate()
        prec = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class) at all areas, 100 detections
        for k, cid in enumerate(ev.params.catIds):
            p = prec[:, :, k]
            ap[cid] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    out = {}
    for cid, name in names.items():
        n = sum(called[name].values())
        out[name] = {"AP": round(ap[cid], 3) if cid in ap else None, "objects": n,
                     "called": {k: round(v / n, 3) for k, v in called[name].most_common()} if n else {}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--instances", type=Path, help="the COCO instances the expressions refer to (refcoco/instances.json), for wrong-object counts")
    ap.add_argument("--caption-instances", type=Path,
                    help="the instances of the captioned images (annotations/instances_val2017.json), for what captions name")
    ap.add_argument("--detection-instances", type=Path,
                    help="the instances the detections answer (annotations/instances_val2017.json), for AP and classes per category")
    args = ap.parse_args()
    out = {}
    if args.detection_instances and (args.eval_dir / "detections.json").exists():
        out["detection"] = detection_classes(json.loads((args.eval_dir / "detections.json").read_text()),
                                             json.loads(args.detection_instances.read_text()))
    files = {"grounding": "grounding.json", "vqa": "vqa.json", "caption": "captions.json"}
    for name, fname in files.items():
        path = args.eval_dir / fname
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        out[name] = grounding(results, args.instances) if name == "grounding" else vqa(results) if name == "vqa" else captions(results)
        if name == "caption" and args.caption_instances:
            out[name]["named"] = caption_mentions(results, json.loads(args.caption_instances.read_text()))
    if not out:
        raise SystemExit(f"{args.eval_dir}: none of {', '.join(files.values())} (write them with tools/eval.py output_dir=...)")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
