"""Visual grounding precision (METHOD.md §7): the top box is right when its IoU with the
referred box is at least 0.5; reported overall and per split of the reader (RefCOCO val,
testA, testB).
"""

from __future__ import annotations

from tqdm import tqdm

from visionllm.evaluation.loop import num_images, predict_batches
from visionllm.tasks import grounding

IOU_THRESHOLD = 0.5


def evaluate_grounding(
    model, reader, *, image_size: int, batch_size: int = 8, max_images=None, progress=True, rank: str = "class"
) -> tuple[dict, list[dict], str]:
    """-> ({"grounding_P@0.5", "grounding_P@0.5/<split>" ...}, results, printed table).
    ``max_images`` caps the number of expressions (each is one sample of the reader); ``rank``
    which score picks the answer (``grounding.to_box``)."""

    def samples():
        for i in tqdm(range(num_images(reader, max_images)), desc="eval grounding", disable=not progress, leave=False):
            yield from grounding.eval_samples(reader[i], image_size=image_size)

    results = []
    for s, out in predict_batches(model, samples(), batch_size):
        meta = s["meta"]
        ranked = grounding.ranked_boxes(out, s["request"], meta, rank=rank)
        obj = ranked[0] if ranked else None
        x, y, w, h = meta["gt_bbox"]
        ious = [grounding.box_iou(o["bbox"], [x, y, x + w, y + h]) for o in ranked]
        iou = ious[0] if ious else 0.0
        # where the first right box was among the groups (1: the answer; None: no group had one)
        right_rank = next((i + 1 for i, v in enumerate(ious) if v >= IOU_THRESHOLD), None)
        results.append(
            {
                "image_id": meta["image_id"],
                "ref_id": meta.get("ref_id"),
                "sent_id": meta.get("sent_id"),
                "split": meta.get("split"),
                "expression": meta["expression"],
                "bbox": obj["bbox"] if obj else None,  # xyxy pixels
                "score": obj["score"] if obj else 0.0,
                "iou": iou,
                "correct": iou >= IOU_THRESHOLD,
                "right_rank": right_rank,
            }
        )
    metrics, table = grounding_metrics(results)
    return metrics, results, table


def grounding_metrics(results: list[dict]) -> tuple[dict, str]:
    """P@0.5 overall and per split present in the results, plus a printed table."""
    groups = {"grounding_P@0.5": results}
    for split in sorted({r["split"] for r in results if r["split"] is not None}):
        groups[f"grounding_P@0.5/{split}"] = [r for r in results if r["split"] == split]
    metrics = {k: sum(r["correct"] for r in rs) / len(rs) if rs else 0.0 for k, rs in groups.items()}
    table = "\n".join(f"{k:<28} {metrics[k]:6.3f}  ({len(rs)} expressions)" for k, rs in groups.items())
    return metrics, table
