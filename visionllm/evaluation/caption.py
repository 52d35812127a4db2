"""Captioning metrics (METHOD.md §7): BLEU-4 and CIDEr from pycocoevalcap (PTB tokenizer,
Java), as fractions (the paper prints them x100), plus how well the length wish is kept.

Two passes over the images: one with the evaluation instruction (scored against all the
references of the image), one asking image i for about ``lengths[i % len(lengths)]`` words,
scored by the mean absolute difference between words written and words asked.

The first pass writes greedily, or with ``candidates`` > 1 by minimum Bayes risk: the greedy
caption and ``candidates`` - 1 captions sampled at ``temperature`` are written, and the one
that agrees best with the others (CIDEr against them as references) is kept: the caption the
model's own distribution puts most weight around, in place of its single most likely path.
"""

from __future__ import annotations

import contextlib
import io

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from tqdm import tqdm

from visionllm.evaluation.loop import num_images, predict_batches
from visionllm.tasks import caption

LENGTHS = (5, 10, 15)


def caption_scores(references: dict, predictions: dict) -> dict:
    """{image_id: [reference, ...]}, {image_id: caption} -> BLEU-1..4 and CIDEr."""
    if not predictions:
        return {"caption_BLEU-4": 0.0, "caption_CIDEr": 0.0}

    def clean(text: str) -> str:
        # one caption per line for the Java tokenizer: a "\r" or "\u2028" inside a caption
        # would split it in two and shift every later caption onto the wrong image
        return " ".join(text.split())

    gts = {k: [{"caption": clean(r)} for r in references[k]] for k in predictions}
    res = {k: [{"caption": clean(predictions[k])}] for k in predictions}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their progress
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"caption_BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["caption_CIDEr"] = float(cider)
    return out


def consensus(pool: dict) -> dict:
    """{image_id: [caption, ...]} -> {image_id: the caption with the highest CIDEr against the
    image's other captions} (the first among equals)."""
    size = min(len(c) for c in pool.values())
    if size < 2:
        return {k: c[0] for k, c in pool.items()}
    keys = list(pool)
    tok = PTBTokenizer()
    agreement = {k: [] for k in keys}
    for j in range(size):
        gts = {k: [{"caption": " ".join(x.split())} for i, x in enumerate(pool[k][:size]) if i != j] for k in keys}
        res = {k: [{"caption": " ".join(pool[k][j].split())}] for k in keys}
        with contextlib.redirect_stdout(io.StringIO()):
            gts, res = tok.tokenize(gts), tok.tokenize(res)
            _, scores = Cider().compute_score(gts, res)
        for k, score in zip(gts, scores):  # the scorer's order is its references' keys
            agreement[k].append(float(score))
    return {k: pool[k][max(range(size), key=lambda j: (agreement[k][j], -j))] for k in keys}


def evaluate_caption(
    model,
    reader,
    *,
    image_size: int,
    batch_size: int = 8,
    max_images=None,
    progress=True,
    instruction: str | None = None,
    lengths=LENGTHS,
    candidates: int = 1,
    temperature: float = 0.7,
    seed: int = 0,
    no_repeat_ngram: int = 0,
) -> tuple[dict, list[dict], str]:
    """-> ({"caption_BLEU-4", "caption_CIDEr", "caption_length_error", ...},
    [{"image_id", "caption"}] (COCO caption results), printed table)."""
    n = num_images(reader, max_images)
    references: dict = {}

    def samples(length_pass: bool):
        desc = "eval caption length" if length_pass else "eval caption"
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
            record = reader[i]
            references[record["image_id"]] = record["captions"]
            text = None
            if length_pass:
                text = caption.make_instruction("about", n=lengths[i % len(lengths)], template=caption.ABOUT_TEMPLATES[0])
            yield from caption.eval_samples(record, image_size=image_size, instruction=text or instruction)

    if candidates < 1:
        raise ValueError(f"candidates must be 1 (greedy) or more, not {candidates}")
    if instruction is not None and "<image>" not in instruction:
        raise ValueError(f"the caption evaluation instruction must hold <image> where the image goes, as in "
                         f"'Describe <image> in detail.'; got {instruction!r}")
    opts = {"no_repeat_ngram": no_repeat_ngram} if no_repeat_ngram else {}  # the Oracles of the tests take none
    predictions = {s["meta"]["image_id"]: out["text"]
                   for s, out in predict_batches(model, samples(False), batch_size, **opts)}
    if candidates > 1:
        pool = {k: [v] for k, v in predictions.items()}
        generator = torch.Generator().manual_seed(seed)
        for _ in range(candidates - 1):
            for s, out in predict_batches(model, samples(False), batch_size, temperature=temperature, generator=generator,
                                          **opts):
                pool[s["meta"]["image_id"]].append(out["text"])
        predictions = consensus(pool)
    metrics = caption_scores(references, predictions)
    errors = []
    if lengths:
        for s, out in predict_batches(model, samples(True), batch_size, **opts):
            errors.append(abs(caption.num_words(out["text"]) - s["meta"]["requested_length"]))
    metrics["caption_length_error"] = sum(errors) / len(errors) if errors else 0.0
    results = [{"image_id": k, "caption": v} for k, v in predictions.items()]
    table = "\n".join(f"{k:<24} {v:8.3f}" for k, v in metrics.items())
    return metrics, results, table
