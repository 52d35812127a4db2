"""Tasks (METHOD.md §2, §7). Each task module owns its text format: instruction templates,
ground truth -> answer targets, model output -> results, and its metric.

The sample a task builds (and ``visionllm.data.transforms.collate`` batches)::

    {"image": (3, S, S) float, "pixel_mask": (S, S) bool (True = padding),
     "instruction": str with one <image>, "request": tasks.instructions.Request,
     "target": structured: {"labels": (n,) long (class index k of <ck>),
                            "coords": (n, 2N) float, canvas-normalized, interleaved x, y
                                      (boxes: x1, y1, x2, y2; polygons: N points),
                            "centers": (n, 2) float or None (tokenizer targets)}
               text:       {"text": str}
               evaluation: None
     "meta": {"image_id", "width", "height", "canvas_scale", ...}}

``VisionLLM.predict`` answers, per sample: structured -> {"labels" (M,), "scores" (M,),
"points" (M, N, 2) canvas-normalized}; text -> {"text": str}.
"""
