"""What the image tokens know: linear probes of object shape and colour on a checkpoint.

    python tools/probe_tokens.py CHECKPOINT [--images 300] [--instruction TEXT]

For every annotated object of the first ``--images`` val images (COCO instances of the
checkpoint's data set), the image token whose location l_i lies nearest the object's centre
(within 3 % of the canvas) is taken, as the LLM receives it (v_i). Two ridge regressions,
fitted on 70 % of the objects and scored on the rest:

- shape: the object's category, one-hot, scored as accuracy (with the majority-class rate);
- colour: the mean RGB of the object's mask pixels, scored as R^2.

A token that carries shape but not colour leaves colour questions and coloured referring
expressions out of reach of the LLM however it is trained (docs/design.md, "Colour").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def collect(model, cfg, images: int, instruction: str):
    from pycocotools import mask as mask_utils

    from visionllm.data.transforms import collate, letterbox

    ann_file = Path(cfg.data.val.detection.ann_file)
    image_dir = Path(cfg.data.val.detection.image_dir)
    coco = json.loads(ann_file.read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    cats = sorted({c["id"] for c in coco["categories"]})
    infos = coco["images"][:images]
    feats, colours, labels = [], [], []
    for k in range(0, len(infos), 16):
        chunk, metas = [], []
        for info in infos[k : k + 16]:
            im = Image.open(image_dir / info["file_name"]).convert("RGB")
            canvas, mask, scale = letterbox(im, cfg.data.image_size)
            chunk.append({"image": canvas, "pixel_mask": mask, "instruction": instruction, "request": None, "meta": {}})
            metas.append((im, scale, by_image.get(info["id"], [])))
        batch = collate(chunk)
        with torch.no_grad():
            _, anchors, v = model._image_tokens(batch)
        for j, (im, scale, anns) in enumerate(metas):
            pixels = np.asarray(im).astype(np.float64) / 255
            for a in anns:
                x, y, w, h = a["bbox"]
                centre = torch.tensor([x + w / 2, y + h / 2], dtype=torch.float32) / scale
                dist = ((anchors[j] - centre) ** 2).sum(-1)
                i = int(dist.argmin())
                if dist[i] > 0.03**2 or not isinstance(a["segmentation"], list):
                    continue
                m = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], im.height, im.width)).max(-1).astype(bool)
                if m.sum() < 5:
                    continue
                feats.append(v[j, i].float().numpy())
                colours.append(pixels[m].mean(0))
                labels.append(cats.index(a["category_id"]))
    return np.array(feats), np.array(colours), np.array(labels, dtype=int), len(cats)


def ridge_predict(x, y, train, lam: float = 0.1):
    x = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(x[train].T @ x[train] + lam * np.eye(x.shape[1]), x[train].T @ y[train])
    return x[~train] @ w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--instruction", default="<image>\nWhat color is the star?")
    args = ap.parse_args()
    from visionllm.engine.checkpoint import load_model

    model, cfg = load_model(args.checkpoint)
    x, colour, label, n_cats = collect(model, cfg, args.images, args.instruction)
    if len(x) < 20:
        raise SystemExit(f"only {len(x)} objects had a token near their centre: too few to probe")
    train = np.arange(len(x)) < int(0.7 * len(x))
    pred = ridge_predict(x, colour, train)
    r2 = 1 - ((pred - colour[~train]) ** 2).sum() / ((colour[~train] - colour[train].mean(0)) ** 2).sum()
    acc = (ridge_predict(x, np.eye(n_cats)[label], train).argmax(1) == label[~train]).mean()
    majority = np.bincount(label[~train]).max() / (~train).sum()
    out = {"objects": int(len(x)), "shape_accuracy": round(float(acc), 3), "shape_majority": round(float(majority), 3),
           "colour_r2": round(float(r2), 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
