"""What a checkpoint's whole-image vector (``ImageTokens.scene``: each level's encoder memory
averaged over the image) tells of the scene: a linear probe (softmax regression, fitted on
training images, scored on val images) for which one of WORDS the image's captions use, and,
for a first stage with ``model.concepts``, its own word head's guess (docs/design.md, "Words of
the scene").

    python tools/probe_scene.py CKPT [CKPT ...] [--root data/shapes] [--train 600] [--val 300]
                                [--words plain gradient striped mottled spotted checkered]

Images whose captions use none or several of the words are left out.
"""

from __future__ import annotations

import argparse
import json

import torch

from visionllm.data.coco import CocoDetection
from visionllm.data.transforms import collate
from visionllm.engine.checkpoint import load_model
from visionllm.tasks import detection

BACKGROUNDS = ["plain", "gradient", "striped", "mottled", "spotted", "checkered"]


def scene_vectors(model, reader, n: int, words: list[str], image_size: int):
    """(images, L*C) scene vectors, the index of each image's word (-1: none or several), and the
    word head's logits where the model has one."""
    classes = [c["name"] for c in reader.categories]
    X, y, head = [], [], []
    for s in range(0, min(n, len(reader)), 16):
        recs = [reader[i] for i in range(s, min(s + 16, n, len(reader)))]
        b = collate([detection.eval_samples(r, class_names=classes, image_size=image_size)[0] for r in recs])
        with torch.no_grad():
            toks = model.image_tokenizer(b["images"], b["pixel_mask"], b["instructions"])
            X.append(toks.scene)
            if getattr(model, "concept_head", None) is not None and list(model.concepts) == words:
                head.append(model.concept_head(toks.scene))
        for r in recs:
            hits = [i for i, w in enumerate(words) if w in (r["caption_words"] or ())]
            y.append(hits[0] if len(hits) == 1 else -1)
    return torch.cat(X), torch.tensor(y), (torch.cat(head) if head else None)


def _fit(X, y, classes: int, wd: float) -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.zeros(X.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + bias, y) + wd * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), bias.detach()


def linear_probe(Xtr, ytr, Xva, yva, classes: int) -> dict:
    """Softmax regression on standardised features, the best of three weight decays on val."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xva = (Xtr - mu) / sd, (Xva - mu) / sd
    best = None
    for wd in (1e-3, 1e-2, 1e-1):
        W, bias = _fit(Xtr, ytr, classes, wd)
        val = ((Xva @ W + bias).argmax(1) == yva).float().mean().item()
        train = ((Xtr @ W + bias).argmax(1) == ytr).float().mean().item()
        if best is None or val > best["probe_val"]:
            best = {"probe_val": round(val, 3), "probe_train": round(train, 3), "weight_decay": wd}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--root", default="data/shapes")
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--words", nargs="+", default=BACKGROUNDS)
    args = ap.parse_args()

    def reader(split):
        return CocoDetection(image_dir=f"{args.root}/{split}2017",
                             ann_file=f"{args.root}/annotations/instances_{split}2017.json",
                             captions_file=f"{args.root}/annotations/captions_{split}2017.json")

    train_reader, val_reader = reader("train"), reader("val")
    for ckpt in args.checkpoints:
        torch.manual_seed(0)
        model, cfg = load_model(ckpt)
        size = int(cfg.data.image_size)
        Xtr, ytr, _ = scene_vectors(model, train_reader, args.train, args.words, size)
        Xva, yva, head = scene_vectors(model, val_reader, args.val, args.words, size)
        k, kv = ytr >= 0, yva >= 0
        out = {"checkpoint": ckpt, **linear_probe(Xtr[k], ytr[k], Xva[kv], yva[kv], len(args.words)),
               "majority": round(torch.bincount(yva[kv]).max().item() / max(int(kv.sum()), 1), 3),
               "val_images": int(kv.sum())}
        if head is not None:
            out["word_head_val"] = round((head[kv].argmax(1) == yva[kv]).float().mean().item(), 3)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
