"""Which loss moves which part of the model: the gradient norm each loss term gives each part,
on batches drawn as training draws them.

    python tools/grad_share.py CKPT [--batches 8] [--seed 0] [--json OUT.json]

A multi-task model shares its parts. Adam scales each weight's step by the running size of its
whole gradient, so a loss term whose gradient on a shared part is small next to the others'
moves that part little, whatever the term's own value: its effective learning rate there is
about its share of the gradient norm. This prints, per part (backbone, the rest of the image
tokenizer, the projections into the LLM, the LLM, the class pointer), each term's gradient
norm (root mean square over the batches, with the run's loss weights applied) and its share
of the sum of the terms' norms. Batches come from the checkpoint's own training mixture.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

import torch

PARTS = (  # first prefix that matches wins
    ("backbone", "image_tokenizer.backbone."),
    ("text encoder", "image_tokenizer.text_encoder."),
    ("image tokenizer", "image_tokenizer."),
    ("projections", ("token_proj.", "loc_embed.")),
    ("class pointer", "class_pointer."),
    ("LLM", "llm."),
)


def part_of(name: str) -> str:
    for part, prefix in PARTS:
        if name.startswith(prefix):
            return part
    return "other"


def term_norms(model, batch: dict) -> dict[str, dict[str, float]]:
    """{loss term: {part: squared gradient norm}} for one batch (weights applied, as trained)."""
    losses = model(batch)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out: dict[str, dict[str, float]] = {}
    terms = [k for k, v in losses.items() if k != "loss" and torch.is_tensor(v) and v.requires_grad]
    for i, k in enumerate(terms):
        grads = torch.autograd.grad(losses[k], [p for _, p in params], retain_graph=i < len(terms) - 1, allow_unused=True)
        sq: dict[str, float] = defaultdict(float)
        for (n, _), g in zip(params, grads):
            if g is not None:
                sq[part_of(n)] += float(g.float().pow(2).sum())
        out[k] = dict(sq)
    return out


def shares(per_batch: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{part: {term: {"norm": rms over batches, "share": norm / sum of the part's norms}}}; a
    term absent from a batch (no text sample in it) counts zero there, as in training."""
    parts = sorted({p for b in per_batch for t in b.values() for p in t})
    terms = sorted({t for b in per_batch for t in b})
    table = {}
    for part in parts:
        norms = {t: math.sqrt(sum(b.get(t, {}).get(part, 0.0) for b in per_batch) / len(per_batch)) for t in terms}
        total = sum(norms.values()) or 1.0
        table[part] = {t: {"norm": n, "share": n / total} for t, n in norms.items() if n > 0}
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tqdm import tqdm

    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.checkpoint import load_model

    torch.manual_seed(args.seed)
    model, cfg = load_model(args.checkpoint)
    model.train()
    ds, _ = tasks.training_set(cfg)
    rng = random.Random(args.seed)
    bs = int(cfg.trainer.batch_size)
    per_batch = []
    for _ in tqdm(range(args.batches), desc="batches"):
        per_batch.append(term_norms(model, collate([ds[rng.randrange(len(ds))] for _ in range(bs)])))
    table = shares(per_batch)
    terms = sorted({t for row in table.values() for t in row})
    print(f"gradient norm (share of the part's sum) over {args.batches} batches of {bs}:")
    print("| part | " + " | ".join(terms) + " |")
    print("|---|" + "---|" * len(terms))
    for part, row in table.items():
        cells = [f"{row[t]['norm']:.3g} ({row[t]['share']:.0%})" if t in row else "" for t in terms]
        print(f"| {part} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
