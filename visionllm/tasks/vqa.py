"""Visual question answering on LLaVA-Instruct conversations (METHOD.md §2, §7, §8).

A conversation of T turns gives T questions. Turn t > 0 is asked with the earlier turns
written before it as context, ``Q: ... A: ...`` one per line, then the question itself; the
single ``<image>`` stays where the first human turn had it. Evaluation feeds the
ground-truth earlier answers as context (teacher forcing), so every turn is scored on its
own.

Loss on every answer: a training sample asks turn t and also marks where the earlier
answers stand in its instruction (``target["context_spans"]``, character spans); the model
learns those tokens too, in the same causal pass, so a sample of a T-turn conversation
teaches up to T answers at the cost of one (LLaVA's loss on every gpt turn, in our layout).
"""

from __future__ import annotations

import random
import re

import torch

from visionllm.data.llava import IMAGE_TOKEN
from visionllm.data.transforms import letterbox
from visionllm.tasks import sample_meta
from visionllm.tasks.instructions import Request

SHORT_ANSWER_WORDS = 3

_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")  # keeps the point of 1.5


def turns(record: dict) -> list[tuple[str, str]]:
    """The conversation as (question, answer) pairs, human then gpt."""
    conv = record["conversations"]
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]


def _one_image(text: str, first: str) -> str:
    """``text`` with exactly one <image>: kept where ``first`` (the first question) had it,
    or put in front when the data lacked it."""
    if text.count(IMAGE_TOKEN) == 1 and IMAGE_TOKEN in first:
        return text
    return IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()


def question_text(pairs: list[tuple[str, str]], t: int) -> str:
    """The instruction that asks question t, with turns 0..t-1 as context."""
    first = pairs[0][0]
    if t == 0:
        return _one_image(first, first)
    # later turns never hold <image> in valid data; strip it in case they do
    lines = [f"Q: {q if i == 0 else q.replace(IMAGE_TOKEN, '')} A: {a}".strip() for i, (q, a) in enumerate(pairs[:t])]
    lines.append(pairs[t][0].replace(IMAGE_TOKEN, "").strip())
    return _one_image("\n".join(lines), first)


def answer_spans(text: str, pairs: list[tuple[str, str]], t: int) -> list[tuple[int, int]]:
    """Character spans of the answers of turns 0..t-1 inside ``question_text(pairs, t)``."""
    spans, cursor = [], 0
    for _, a in pairs[:t]:
        a = a.strip()
        if not a:
            continue
        at = text.find(f"A: {a}", cursor)
        if at < 0:
            raise ValueError(f"answer {a!r} not found in the instruction {text!r}")
        spans.append((at + 3, at + 3 + len(a)))
        cursor = spans[-1][1]
    return spans


def training_sample(record: dict, *, image_size: int, rng: random.Random) -> dict:
    pairs = turns(record)
    if not pairs:
        raise ValueError(f"conversation {record['image_id']!r} has no question-answer turn")
    t = rng.randrange(len(pairs))
    canvas, mask, scale = letterbox(record["image"], image_size)
    text = question_text(pairs, t)
    target = {"text": pairs[t][1].strip(), "context_spans": answer_spans(text, pairs, t)}
    if record.get("object_boxes") is not None:
        # every object of the image, for the image tokenizer (its objectness under a question):
        # what a count without names counts [ours, docs/design.md "Objects under a question"]
        boxes = torch.tensor(record["object_boxes"], dtype=torch.float32).view(-1, 4) / scale
        target["centers"] = boxes[:, :2] + boxes[:, 2:] / 2
    return {
        "image": canvas,
        "pixel_mask": mask,
        "instruction": text,
        "request": Request(kind="text"),
        "target": target,
        "meta": sample_meta(record, scale),
    }


def eval_samples(record: dict, *, image_size: int) -> list[dict]:
    """One sample per human turn; meta holds "question_id", "turn", "question" (without
    <image>) and the ground-truth "answer"."""
    canvas, mask, scale = letterbox(record["image"], image_size)
    pairs, out = turns(record), []
    for t, (q, a) in enumerate(pairs):
        meta = sample_meta(record, scale)
        meta.update(
            {"question_id": f"{record['image_id']}/{t}", "turn": t, "question": q.replace(IMAGE_TOKEN, "").strip(), "answer": a.strip()}
        )
        out.append(
            {"image": canvas, "pixel_mask": mask, "instruction": question_text(pairs, t), "request": Request(kind="text"), "meta": meta}
        )
    return out


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, number words as digits: "Two." -> "2"."""
    text = _PUNCT.sub(" ", text.lower())
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def is_short(answer: str) -> bool:
    """Answers of at most three words are scored by exact match; longer ones are free text."""
    return 0 < len(answer.split()) <= SHORT_ANSWER_WORDS


def answers_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)
