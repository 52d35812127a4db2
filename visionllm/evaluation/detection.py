"""COCO box AP of a model over a detection reader (METHOD.md §7), with pycocotools.

Class sets longer than ``chunk`` are asked in several instructions and the answers merged;
class indices are mapped back to the file's (possibly non-contiguous) category ids.
"""

from __future__ import annotations

import contextlib
import io

from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from visionllm.evaluation.loop import location_options, num_images, predict_batches
from visionllm.tasks import detection

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def predict_detections(model, reader, *, image_size: int, chunk: int, batch_size: int, max_images=None, progress=True,
                       classes_per_group: int = 1, location_window: int = 0):
    """Run the model over the reader; return COCO results (a list of dicts) and the image ids seen.
    ``classes_per_group`` > 1: each group answers with its that many likeliest classes
    (``tasks.group_answers``); COCO keeps the 100 best answers of an image. ``location_window``
    > 0: coordinates read around the likeliest bin (``VisionLLM.predict``)."""
    cats = reader.categories
    names = [c["name"] for c in cats]
    name_to_cat = {c["name"]: c["id"] for c in cats}
    image_ids: list[int] = []

    def samples():
        for i in tqdm(range(num_images(reader, max_images)), desc="eval detection", disable=not progress, leave=False):
            record = reader[i]
            image_ids.append(record["image_id"])
            yield from detection.eval_samples(record, class_names=names, image_size=image_size, chunk=chunk)

    results = []
    for s, out in predict_batches(model, samples(), batch_size, **location_options(location_window)):
        objs = detection.to_objects(out, s["request"], s["meta"], classes_per_group=classes_per_group)
        results.extend(detection.to_coco_results(objs[:100], s["meta"]["image_id"], name_to_cat))
    return results, image_ids


def coco_box_metrics(coco_gt, results: list[dict], image_ids: list[int], prefix: str = "bbox") -> tuple[dict, str]:
    """pycocotools' 12 numbers as a flat dict, plus the printed table."""
    if not results:
        return {f"{prefix}_{k}": 0.0 for k in STAT_NAMES}, "(no detections)"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, dt, "bbox" if prefix == "bbox" else "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {f"{prefix}_{k}": float(v) for k, v in zip(STAT_NAMES, ev.stats)}, buf.getvalue()


def evaluate_detection(model, reader, **kw) -> tuple[dict, list[dict], str]:
    results, image_ids = predict_detections(model, reader, **kw)
    metrics, table = coco_box_metrics(reader.coco, results, image_ids)
    return metrics, results, table
