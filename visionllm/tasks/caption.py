"""Image captioning with a length wish (METHOD.md §2, §7): brief, about N words, or detailed.

Training picks one reference caption and then the instruction kind that is true of it
(brief if at most 8 words, detailed if at least 16, otherwise "about N words" with N its
word count), so the model learns to follow the wish rather than to ignore it. Words are
whitespace-separated tokens, here and in the length metric.

With ``task.caption.target: consensus`` the drawn reference decides only the kind; the target
is then the image's reference of that kind that agrees best with its other references
(CIDEr-D, :class:`Consensus`), so each image and wish teach one caption, the one its
annotators shared most (docs/design.md, "Consensus targets").

With ``task.caption.references`` (a list of positions) training learns only from the
references at those positions of each image's list, where the data set writes each style at
one position (the built-in shapes: brief, counts, colours, positional, detailed); the
evaluation still scores against all of them (docs/design.md, "One style a wish").
"""

from __future__ import annotations

import random
import re

from visionllm.data.transforms import letterbox
from visionllm.evaluation.cider import CiderD
from visionllm.tasks import sample_meta
from visionllm.tasks.instructions import Request

BRIEF_MAX_WORDS = 8
DETAILED_MIN_WORDS = 16
EVAL_WORDS = 10  # COCO captions average about ten words

BRIEF_TEMPLATES = [
    "Describe <image> briefly.",
    "Give a short caption for <image>.",
    "<image> Summarize this image in a few words.",
    "Write a brief description of the image <image>.",
    "What does <image> show? Answer in one short sentence.",
    "Caption <image> concisely.",
    "In a few words, describe the picture <image>.",
    "Provide a one-line caption of <image>.",
    "Briefly, what is in <image>?",
    "Image: <image>. A short caption, please.",
]
ABOUT_TEMPLATES = [
    "Describe <image> in about {n} words.",
    "Write a caption of roughly {n} words for <image>.",
    "<image> Describe this image using around {n} words.",
    "Give a description of the image <image> that is about {n} words long.",
    "Caption <image> in approximately {n} words.",
    "In about {n} words, what does <image> show?",
    "Provide a {n}-word caption of <image>.",
    "Summarize the picture <image> in around {n} words.",
    "Image: <image>. Describe it in roughly {n} words.",
    "Tell me what is in <image>, using about {n} words.",
]
DETAILED_TEMPLATES = [
    "Describe <image> in detail.",
    "Give a detailed description of the image <image>.",
    "<image> Describe everything you see in this image.",
    "Write a thorough, detailed caption for <image>.",
    "Describe the picture <image> as completely as you can.",
    "What is in <image>? Describe it in detail, with positions, colors and sizes.",
    "Provide a long and detailed description of <image>.",
    "Explain in detail what the image <image> shows.",
    "Image: <image>. A detailed description, please.",
    "Look at <image> carefully and describe all of its contents.",
]

_LENGTH = re.compile(r"\b(\d+)(?:\s+|-)words?\b", re.IGNORECASE)


def num_words(text: str) -> int:
    return len(text.split())


def length_kind(caption: str) -> str:
    """'brief' | 'about' | 'detailed': the wish this caption fulfils."""
    n = num_words(caption)
    return "brief" if n <= BRIEF_MAX_WORDS else "detailed" if n >= DETAILED_MIN_WORDS else "about"


def make_instruction(kind: str, *, n: int | None = None, template: str | None = None, rng: random.Random | None = None) -> str:
    bank = {"brief": BRIEF_TEMPLATES, "about": ABOUT_TEMPLATES, "detailed": DETAILED_TEMPLATES}.get(kind)
    if bank is None:
        raise ValueError(f"unknown caption kind {kind!r}; expected 'brief', 'about' or 'detailed'")
    if kind == "about" and not n:
        raise ValueError("an 'about N words' caption needs n")
    template = template or (rng or random).choice(bank)
    return template.format(n=n) if kind == "about" else template


def requested_length(instruction: str) -> int | None:
    """The N of an "about N words" wish ("in about 12 words", "a 12-word caption"), or None."""
    m = _LENGTH.search(instruction)
    return int(m.group(1)) if m else None


TARGETS = ("random", "consensus")


class Consensus:
    """Each reference's CIDEr-D against the other references of its image, with document
    frequencies from ``corpus`` (the training captions, one list per image). Scores are computed
    when an image is first asked for and kept."""

    def __init__(self, corpus: list[list[str]]):
        self.cider = CiderD([[c.strip() for c in refs if c.strip()] for refs in corpus])
        self._cache: dict[tuple[str, ...], list[float]] = {}

    def scores(self, captions: list[str]) -> list[float]:
        key = tuple(captions)
        if key not in self._cache:
            self._cache[key] = [self.cider.score(c, captions[:i] + captions[i + 1:]) if len(captions) > 1 else 0.0
                                for i, c in enumerate(captions)]
        return self._cache[key]

    def pick(self, captions: list[str], kind: str) -> str:
        """The reference of this length kind that its image's other references agree with most."""
        scores = self.scores(captions)
        return max((c for c in captions if length_kind(c) == kind), key=lambda c: scores[captions.index(c)])


def consensus_from_reader(target: str, reader) -> Consensus | None:
    """``task.caption.target``: 'random' (None) or 'consensus' (a :class:`Consensus` over the
    reader's captions)."""
    if target not in TARGETS:
        raise ValueError(f"task.caption.target: unknown value {target!r}; expected one of {', '.join(TARGETS)}")
    if target == "random":
        return None
    if not hasattr(reader, "reference_captions"):
        raise ValueError(f"task.caption.target=consensus: the caption reader ({type(reader).__name__}) cannot list its captions")
    return Consensus(reader.reference_captions())


def check_positions(positions) -> tuple[int, ...] | None:
    """``task.caption.references``: None (every reference) or a non-empty list of distinct
    positions >= 0 in each image's reference list."""
    if positions is None:
        return None
    if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
        raise ValueError(f"task.caption.references: expected null or a list of positions such as [0, 1, 4], "
                         f"got {positions!r}")
    out = tuple(positions)
    if not out or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in out) or len(set(out)) < len(out):
        raise ValueError(f"task.caption.references: expected distinct whole numbers >= 0 (positions in each image's "
                         f"list of references, e.g. [0, 1, 4]), got {list(out)!r}")
    return out


def learned_references(record: dict, positions: tuple[int, ...] | None = None) -> list[str]:
    """The references training learns from: every non-empty one, or those at ``positions``."""
    captions = [c.strip() for c in record["captions"]]
    if positions is not None:
        captions = [captions[i] for i in positions if i < len(captions)]
    captions = [c for c in captions if c]
    if not captions:
        where = "" if positions is None else f" at positions {list(positions)} (task.caption.references)"
        raise ValueError(f"image {record['image_id']} has no caption to learn from{where}; "
                         f"it has {len(record['captions'])} reference(s)")
    return captions


def training_sample(record: dict, *, image_size: int, rng: random.Random, consensus: Consensus | None = None,
                    positions: tuple[int, ...] | None = None) -> dict:
    captions = learned_references(record, positions)
    caption = rng.choice(captions)
    kind = length_kind(caption)
    if consensus is not None:
        caption = consensus.pick(captions, kind)
    canvas, mask, scale = letterbox(record["image"], image_size)
    return {
        "image": canvas,
        "pixel_mask": mask,
        "instruction": make_instruction(kind, n=num_words(caption), rng=rng),
        "request": Request(kind="text"),
        # the image's references and the wish, for self-critical training (engine/scst.py)
        "target": {"text": caption, "references": learned_references(record), "wish": (kind, num_words(caption))},
        "meta": sample_meta(record, scale),
    }


def eval_samples(record: dict, *, image_size: int, instruction: str | None = None) -> list[dict]:
    """One sample; the default asks for about ``EVAL_WORDS`` words, the length of COCO's
    references. meta["requested_length"] is the N the instruction asks for, if any."""
    instruction = instruction or make_instruction("about", n=EVAL_WORDS, template=ABOUT_TEMPLATES[0])
    canvas, mask, scale = letterbox(record["image"], image_size)
    return [
        {
            "image": canvas,
            "pixel_mask": mask,
            "instruction": instruction,
            "request": Request(kind="text"),
            "meta": {**sample_meta(record, scale), "requested_length": requested_length(instruction)},
        }
    ]


def length_miss(kind: str, asked: int, written: int) -> float:
    """How far ``written`` words miss the wish, as a fraction of its length: for "about N", |written -
    N| / N; for brief, the words past ``BRIEF_MAX_WORDS``; for detailed, those short of
    ``DETAILED_MIN_WORDS`` (each over that bound). 0 where the wish is kept."""
    if kind == "about":
        return abs(written - asked) / max(asked, 1)
    if kind == "brief":
        return max(0, written - BRIEF_MAX_WORDS) / BRIEF_MAX_WORDS
    if kind == "detailed":
        return max(0, DETAILED_MIN_WORDS - written) / DETAILED_MIN_WORDS
    raise ValueError(f"unknown caption kind {kind!r}; expected 'brief', 'about' or 'detailed'")
