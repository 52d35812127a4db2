"""Query a trained VisionLLM in one line:

    from visionllm.api import VisionLLM
    model = VisionLLM.from_pretrained("runs/demo/checkpoint")
    answer = model.predict("photo.jpg", "Find {'star': <c0>} in <image> as (c, x1, y1, x2, y2) from 0 to 1024.")
    # {"text": "[(<c0>, 12.0, ...)]", "objects": [{"label": "star", "bbox": [x1, y1, x2, y2], "score": 0.93}]}

Polygon requests add "polygon": [[x, y], ...] to each object; text requests (captions,
questions) answer in "text" with no objects.

Boxes are pixels of the original image, whatever its size or mode (grayscale, RGBA, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from visionllm.data.io import load_image
from visionllm.data.transforms import collate, letterbox
from visionllm.engine.checkpoint import load_model
from visionllm.tasks import detection, segmentation
from visionllm.tasks.instructions import parse_instruction


def check_per_class(n) -> None:
    """``per_class``: None, or a whole number >= 1; anything else is a clear error."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"per_class: expected a whole number >= 1 (objects kept per class) or null, got {n!r}")


def best_per_class(objects: list[dict], n: int | None) -> list[dict]:
    """``objects`` (each with "label" and "score") less all but the ``n`` best of each label, in
    order of score; ``objects`` as they are where ``n`` is None."""
    if n is None:
        return objects
    ranked = sorted(objects, key=lambda o: -o["score"])
    seen: dict[str, int] = {}
    kept = []
    for o in ranked:
        seen[o["label"]] = seen.get(o["label"], 0) + 1
        if seen[o["label"]] <= n:
            kept.append(o)
    return kept


class VisionLLM:
    def __init__(self, model, cfg, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, device: str = "auto") -> VisionLLM:
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        model, cfg = load_model(ckpt_dir, dev)
        return cls(model, cfg, dev)

    @torch.no_grad()
    def predict(self, image: str | Path | Image.Image, instruction: str, *, score_threshold: float = 0.3,
                max_objects: int = 100, per_class: int | None = None) -> dict:
        """The answer to ``instruction`` about ``image``: {"text", "objects"}. Objects scoring under
        ``score_threshold`` are dropped, at most ``max_objects`` kept, and with ``per_class`` n at
        most the n best of each class (1 for referring expressions: one object each)."""
        check_per_class(per_class)
        request = parse_instruction(instruction)  # clear error before any work
        if isinstance(image, (str, Path)):
            image = load_image(image)
        image = image.convert("RGB")
        canvas, mask, scale = letterbox(image, self.cfg.data.image_size)
        meta = {"image_id": 0, "width": image.width, "height": image.height, "canvas_scale": scale}
        sample = {"image": canvas, "pixel_mask": mask, "instruction": instruction, "request": request, "meta": meta}
        batch = collate([sample])
        batch["images"], batch["pixel_mask"] = batch["images"].to(self.device), batch["pixel_mask"].to(self.device)
        out = self.model.predict(batch)[0]
        if not request.structured:
            return {"text": out["text"], "objects": []}
        task = segmentation if request.kind == "polygons" else detection
        objects = best_per_class(task.to_objects(out, request, meta, score_threshold), per_class)[:max_objects]
        text = task.printed_answer(objects, request, meta)
        keys = ("label", "bbox", "score", "polygon")
        return {"text": text, "objects": [{k: o[k] for k in keys if k in o} for o in objects]}
