"""COCO mask AP of a model over an instance segmentation reader (METHOD.md §7).

Every image is asked for ``num_points``-point polygons of all categories (in chunks of
``chunk`` classes); the answers become RLE masks and pycocotools scores them with
``iouType="segm"``.
"""

from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO
from tqdm import tqdm

from visionllm.evaluation.detection import coco_box_metrics
from visionllm.evaluation.loop import location_options, num_images, predict_batches
from visionllm.tasks import segmentation


def _annotation_copy(coco: COCO) -> COCO:
    """COCOeval's "segm" mode overwrites each ground-truth polygon with its RLE in place; a
    copy keeps the reader's polygons for training targets and later evaluations."""
    copy = COCO()
    copy.dataset = dict(coco.dataset, annotations=[dict(a) for a in coco.dataset["annotations"]])
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return copy


def predict_segments(
    model, reader, *, image_size: int, chunk: int, batch_size: int, max_images=None, num_points: int = 16, progress=True,
    classes_per_group: int = 1, location_window: int = 0,
) -> tuple[list[dict], list[int]]:
    """COCO segmentation results (RLE, at most 100 per image) and the image ids seen;
    ``classes_per_group`` and ``location_window`` as for ``predict_detections``."""
    cats = reader.categories
    names = [c["name"] for c in cats]
    name_to_cat = {c["name"]: c["id"] for c in cats}
    image_ids: list[int] = []
    per_image: dict[int, list[dict]] = {}

    def samples():
        for i in tqdm(range(num_images(reader, max_images)), desc="eval segmentation", disable=not progress, leave=False):
            record = reader[i]
            image_ids.append(record["image_id"])
            yield from segmentation.eval_samples(
                record, class_names=names, image_size=image_size, chunk=chunk, num_points=num_points
            )

    sizes: dict[int, tuple[int, int]] = {}
    for s, out in predict_batches(model, samples(), batch_size, **location_options(location_window)):
        meta = s["meta"]
        objs = segmentation.to_objects(out, s["request"], meta, classes_per_group=classes_per_group)
        per_image.setdefault(meta["image_id"], []).extend(objs)
        sizes[meta["image_id"]] = (meta["height"], meta["width"])
    results = []
    for image_id, objs in per_image.items():
        h, w = sizes[image_id]
        # chunks of classes answer separately; COCO keeps the 100 best per image
        objs = sorted(objs, key=lambda o: -o["score"])[:100]
        results.extend(segmentation.to_coco_results(objs, image_id, name_to_cat, height=h, width=w))
    return results, image_ids


def evaluate_segmentation(model, reader, **kw) -> tuple[dict, list[dict], str]:
    """-> ({"segm_AP", "segm_AP50", ... the 12 COCO numbers}, results, the printed table); ``kw``
    as for ``predict_segments``."""
    results, image_ids = predict_segments(model, reader, **kw)
    metrics, table = coco_box_metrics(_annotation_copy(reader.coco), results, image_ids, prefix="segm")
    return metrics, results, table
