"""What the image tokens know: linear probes of object shape and colour on a checkpoint.

    python tools/probe_tokens.py CHECKPOINT [--images 300] [--instruction TEXT]

For every annotated object of the first ``--images`` val images (COCO instances of the
checkpoint's data set), the image token whose location l_i lies nearest the object's centre
(within 3 % of the canvas) is taken, as the LLM receives it (v_i). Ridge regressions,
fitted on 70 % of the objects and scored on the rest:

- shape: the object's category, one-hot, scored as accuracy (with the majority-class rate);
- colour: the mean RGB of the object's mask pixels, scored as R^2;
- attributes (where the annotations list them: the shapes' colour names), one-hot, as accuracy.

The same probes run on what comes before the token, at the cell under each object's centre:
the projected backbone levels at strides 8 and 16 and the deformable encoder's output at
stride 8, to show where along the way something is lost. For a model trained with token
naming (``model.token_names``), also what the LLM's head says at the token, at the layer that
loss reads (no probe fitted): the share of objects whose colour word, and whose shape word,
scores highest among the colour words and among the shape words ("named"). A token that
carries shape but not colour leaves colour questions and coloured referring expressions out of reach of the LLM
however it is trained (docs/design.md, "Colour").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

STAGES = ("backbone_s8", "backbone_s16", "encoder_s8", "token")


def _at(fmap: torch.Tensor, centre: torch.Tensor) -> np.ndarray:
    """(H, W, C) map -> the C features of the cell under a canvas-normalized (x, y)."""
    H, W = fmap.shape[:2]
    return fmap[min(int(centre[1] * H), H - 1), min(int(centre[0] * W), W - 1)].float().numpy()


def collect(model, cfg, images: int, instruction: str):
    """Per stage, the features at each object: {"backbone_s8", "backbone_s16", "encoder_s8", "token"}."""
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
    attr_words = sorted({w for a in coco["annotations"] for w in a.get("attributes") or []})
    words_asked = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] + attr_words
    feats = {k: [] for k in STAGES}
    named = []  # per object, the head's logits at its token over (category words, attribute words)
    colours, labels, attrs = [], [], []
    seen = {}  # what the forward hooks saw: the backbone's levels, the encoder's output
    tok = model.image_tokenizer
    hooks = [tok.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("levels", o)),
             tok.encoder[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("memory", o))]
    for k in range(0, len(infos), 16):
        chunk, metas = [], []
        for info in infos[k : k + 16]:
            im = Image.open(image_dir / info["file_name"]).convert("RGB")
            canvas, mask, scale = letterbox(im, cfg.data.image_size)
            chunk.append({"image": canvas, "pixel_mask": mask, "instruction": instruction, "request": None, "meta": {}})
            metas.append((im, scale, by_image.get(info["id"], [])))
        batch = collate(chunk)
        with torch.no_grad():
            if hasattr(model, "_image_tokens"):
                _, anchors, v = model._image_tokens(batch)
            else:  # the specialist: its tokens as the tokenizer gives them (no head names words)
                toks = model.image_tokenizer(batch["images"], batch["pixel_mask"], batch["instructions"])
                anchors, v = toks.points, toks.embeds
            words = _named_logits(model, batch, v, words_asked) if getattr(model, "token_names", 0) > 0 else None
        s8, s16 = (lvl.permute(0, 2, 3, 1) for lvl in seen["levels"][:2])
        memory_s8 = seen["memory"][:, : s8.shape[1] * s8.shape[2]].reshape(s8.shape)
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
                feats["token"].append(v[j, i].float().numpy())
                feats["backbone_s8"].append(_at(s8[j], centre))
                feats["backbone_s16"].append(_at(s16[j], centre))
                feats["encoder_s8"].append(_at(memory_s8[j], centre))
                colours.append(pixels[m].mean(0))
                labels.append(cats.index(a["category_id"]))
                attrs.append(" ".join(a.get("attributes") or []))
                if words is not None:
                    named.append(words[j, i])
    for h in hooks:
        h.remove()
    feats = {k: np.array(f) for k, f in feats.items()}
    return feats, np.array(colours), np.array(labels, dtype=int), len(cats), attrs, (np.array(named), attr_words)


def _first_word_ids(model, words: list[str]) -> list[int]:
    return [model._word_ids(w)[0] for w in words]


def _named_logits(model, batch, v, words: list[str]) -> np.ndarray:
    """(B, M, len(words)) the LLM head's logits at each image token, at the layer token naming
    reads (its output, or the input for layer 0, normed as the loss norms it), over the first
    token of each word."""
    from visionllm.modeling.decoding import splice_image_tokens

    prefix, valid, ids = splice_image_tokens(model.llm, batch["instructions"], v)
    with model._layer_output() as seen:
        model.llm.decoder(inputs_embeds=prefix, attention_mask=valid.long(), use_cache=False)
    rows = torch.tensor(_first_word_ids(model, words), device=v.device)
    logits = model._head_words(seen.get("out", prefix))[..., rows]
    at = torch.stack([(r == model.llm.vocab.image).nonzero()[:, 0] for r in ids])  # (B, M)
    return logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1])).numpy()


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
    stages, colour, label, n_cats, attrs, (named, attr_words) = collect(model, cfg, args.images, args.instruction)
    n = len(label)
    if n < 20:
        raise SystemExit(f"only {n} objects had a token near their centre: too few to probe")
    train = np.arange(n) < int(0.7 * n)

    def accuracy(x, y):
        return round(float((ridge_predict(x, np.eye(y.max() + 1)[y], train).argmax(1) == y[~train]).mean()), 3)

    names = sorted(set(attrs)) if all(attrs) else []  # annotations naming each object's attributes
    attr = np.array([names.index(a) for a in attrs]) if names else None
    out = {"objects": n, "shape_majority": round(float(np.bincount(label[~train]).max() / (~train).sum()), 3)}
    if names:
        out["attribute_majority"] = round(float(np.bincount(attr[~train]).max() / (~train).sum()), 3)
    for stage, x in stages.items():
        pred = ridge_predict(x, colour, train)
        r2 = 1 - ((pred - colour[~train]) ** 2).sum() / ((colour[~train] - colour[train].mean(0)) ** 2).sum()
        out[stage] = {"shape_accuracy": accuracy(x, label), "colour_r2": round(float(r2), 3)}
        if names:
            out[stage]["attribute_accuracy"] = accuracy(x, attr)
    if len(named):
        out["named"] = {"shape_accuracy": round(float((named[:, :n_cats].argmax(1) == label).mean()), 3)}
        if names:
            first = np.array([attr_words.index(a.split()[0]) for a in attrs])
            out["named"]["attribute_accuracy"] = round(float((named[:, n_cats:].argmax(1) == first).mean()), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
