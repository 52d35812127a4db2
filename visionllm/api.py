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
                max_objects: int = 100) -> dict:
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
        objects = task.to_objects(out, request, meta, score_threshold)[:max_objects]
        text = task.printed_answer(objects, request, meta)
        keys = ("label", "bbox", "score", "polygon")
        return {"text": text, "objects": [{k: o[k] for k in keys if k in o} for o in objects]}
