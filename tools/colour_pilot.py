"""Can the LLM learn to name an object's colour from its image tokens when no search is needed?

    python tools/colour_pilot.py CHECKPOINT [--steps 300] [--lr 2e-4]

Fine-tunes a copy of the model in memory (nothing is saved) on one kind of sample only: "What
color is the <shape>?" asked of training images that hold a single object, so that the answer
is in the only object token and the LLM need not find it among others. Every 100 steps it
prints the colour-question accuracy (and the three most common answers) on val images with one
object and on val images with several. A model whose text answers ignore the image (one colour
for every question) that learns the single-object case quickly can read colour from its tokens;
what it lacks is the lookup of the object a question names (docs/results.md, run 4).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

import torch

COLOUR_QUESTION = "What color is the"


def objects_per_image(ann_file: Path) -> Counter:
    return Counter(a["image_id"] for a in json.loads(ann_file.read_text())["annotations"])


def colour_questions(reader, counts: Counter, single: bool, limit: int = 400) -> list[tuple]:
    """(record, question, answer) for colour questions of images with one object (``single``)
    or with several."""
    out = []
    for i in range(len(reader)):
        rec = reader[i]
        if (counts.get(int(rec["image_id"]), 0) == 1) != single:
            continue
        conv = rec["conversations"]
        for k in range(0, len(conv) - 1, 2):
            q = conv[k]["value"].replace("<image>", "").strip()
            if q.startswith(COLOUR_QUESTION):
                out.append((rec, q, conv[k + 1]["value"]))
        if len(out) >= limit:
            break
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from visionllm.data.transforms import collate, letterbox
    from visionllm.engine import tasks
    from visionllm.engine.checkpoint import load_model
    from visionllm.tasks.instructions import Request
    from visionllm.tasks.vqa import answers_match

    torch.manual_seed(args.seed)
    model, cfg = load_model(args.checkpoint)
    size = cfg.data.image_size

    def items(split: str, single: bool):
        counts = objects_per_image(Path(cfg.data[split].detection.ann_file))
        return colour_questions(tasks.reader(cfg, split, "vqa"), counts, single)

    train, val_one, val_many = items("train", True), items("val", True), items("val", False)
    print(f"colour questions: {len(train)} train (one object), {len(val_one)} val one object, {len(val_many)} val several")
    if not train or not val_one:
        raise SystemExit("no colour questions about single-object images in this data set")

    def sample(rec, q, a):
        canvas, mask, _ = letterbox(rec["image"], size)
        return {"image": canvas, "pixel_mask": mask, "instruction": "<image>\n" + q, "request": Request(kind="text"),
                "target": {"text": a}, "meta": {}}

    @torch.no_grad()
    def accuracy(its):
        model.eval()
        ok, preds = 0, []
        for j in range(0, len(its), 16):
            chunk = its[j : j + 16]
            for (_, _, a), o in zip(chunk, model.predict(collate([sample(*x) for x in chunk]), max_new_tokens=4)):
                ok += answers_match(o["text"], a)
                preds.append(o["text"])
        return f"{ok / len(its):.3f} {Counter(preds).most_common(3)}"

    print(f"step 0: one object {accuracy(val_one)} | several {accuracy(val_many)}", flush=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    bs = int(cfg.trainer.batch_size)
    for step in range(1, args.steps + 1):
        model.train()
        loss = model(collate([sample(*rng.choice(train)) for _ in range(bs)]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.3f}; one object {accuracy(val_one)} | several {accuracy(val_many)}", flush=True)


if __name__ == "__main__":
    main()
