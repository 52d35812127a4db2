"""Tasks (METHOD.md §2, §7). Each task module owns its text format: instruction templates,
ground truth -> answer targets, model output -> results, and its metric.

The sample a task builds (and ``visionllm.data.transforms.collate`` batches)::

    {"image": (3, S, S) float, "pixel_mask": (S, S) bool (True = padding),
     "instruction": str with one <image>, "request": tasks.instructions.Request,
     "target": structured: {"labels": (n,) long (class index k of <ck>),
                            "coords": (n, 2N) float, canvas-normalized, interleaved x, y
                                      (boxes: x1, y1, x2, y2; polygons: N points),
                            "centers": (n, 2) float or None (tokenizer targets),
                            "names": n str, what each object is in words ("red circle";
                                     the token-naming loss, docs/design.md)}
               text:       {"text": str}
               evaluation: None
     "meta": {"image_id", "width", "height", "canvas_scale", ...}}

``VisionLLM.predict`` answers, per sample: structured -> {"labels" (M,), "scores" (M,),
"points" (M, N, 2) canvas-normalized, "probs" (M, K)}; text -> {"text": str}.
"""


def sample_meta(record: dict, canvas_scale: float) -> dict:
    """What every sample carries to map the canvas back to the original image."""
    return {"image_id": record["image_id"], "width": record["width"], "height": record["height"],
            "canvas_scale": canvas_scale}


def chunked_samples(record: dict, class_names: list[str], *, image_size: int, chunk: int, instruction, request) -> list[dict]:
    """One evaluation sample per chunk of the class list: class sets longer than an instruction
    holds are asked in chunks and merged (METHOD.md §7). ``instruction(names) -> str`` and
    ``request(names) -> Request`` give each chunk its text and format."""
    from visionllm.data.transforms import letterbox

    canvas, mask, scale = letterbox(record["image"], image_size)
    out = []
    for start in range(0, len(class_names), chunk):
        names = class_names[start : start + chunk]
        out.append({"image": canvas, "pixel_mask": mask, "instruction": instruction(names),
                    "request": request(names), "meta": sample_meta(record, scale)})
    return out


def group_answers(groups: dict, classes_per_group: int = 1):
    """(class index, score, points) of each answer in a structured output: each group's likeliest
    class, or with ``classes_per_group`` k > 1 its k likeliest (from ``groups["probs"]``), each
    with its own probability as the score and the group's points. More than one class a group is
    the ranking Deformable DETR's evaluation uses (the best query-class pairs): a group unsure
    between two look-alike classes then answers with both, the second at its lower score, and
    COCO AP, which ranks by score, counts whichever is right."""
    if classes_per_group < 1:
        raise ValueError(f"classes_per_group must be at least 1, not {classes_per_group}")
    if classes_per_group == 1 or "probs" not in groups:
        yield from zip(groups["labels"].tolist(), groups["scores"].tolist(), groups["points"])
        return
    scores, labels = groups["probs"].topk(min(classes_per_group, groups["probs"].shape[-1]), dim=-1)
    for pts, ks, ss in zip(groups["points"], labels.tolist(), scores.tolist()):
        for k, score in zip(ks, ss):
            yield k, score, pts
