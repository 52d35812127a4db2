"""Unified language instructions (METHOD.md §2): writing and reading them.

An instruction names the class set inline, ``{'person': <c0>, 'red gamepad': <c1>}``, and the
answer's format, ``(c, x1, y1, x2, y2)`` for boxes or ``(c, x1, y1, ..., xN, yN)`` for an
N-point polygon, and optionally the printed range (``0 to 1024``). The format is parsed
deterministically from the text [ours], so a user may phrase the rest in their own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from visionllm.vocab import MAX_POINTS, NUM_CLASS_TOKENS, class_token

DEFAULT_RANGE = 1024

_CLASS_ITEM = re.compile(r"""(['"])(.*?)\1\s*:\s*<c(\d+)>""")
_FORMAT = re.compile(r"\(\s*c\s*,((?:\s*[xy]\d+\s*,?)+)\)")
_FORMAT_ELLIPSIS = re.compile(r"\(\s*c\s*,\s*x1\s*,\s*y1\s*,\s*(?:\.\.\.|…)\s*,\s*x(\d+)\s*,\s*y(\d+)\s*\)")
_RANGE = re.compile(r"(?:from|between|range(?:\s+of)?|in)\s*\[?\s*0\s*(?:to|and|-|–|\.\.|,)\s*(\d+)", re.IGNORECASE)


class InstructionError(ValueError):
    """An instruction that cannot be read; the message says what was expected."""


@dataclass
class Request:
    """What an instruction asks for."""

    kind: str  # "boxes" | "polygons" | "text"
    classes: list[str] = field(default_factory=list)  # classes[k] is the name mapped to <ck>
    num_points: int = 0  # 2 for boxes, N for polygons
    coord_range: int = DEFAULT_RANGE

    @property
    def structured(self) -> bool:
        return self.kind in ("boxes", "polygons")


def format_classes(names: list[str]) -> str:
    """['circle', 'star'] -> "{'circle': <c0>, 'star': <c1>}"."""
    if len(names) > NUM_CLASS_TOKENS:
        raise InstructionError(f"{len(names)} classes exceed the {NUM_CLASS_TOKENS} class tokens; run them in chunks")
    items = []
    for k, n in enumerate(names):
        if "'" in n:
            items.append(f'"{n}": {class_token(k)}')
        else:
            items.append(f"'{n}': {class_token(k)}")
    return "{" + ", ".join(items) + "}"


def format_slots(num_points: int) -> str:
    """2 -> '(c, x1, y1, x2, y2)'; N -> '(c, x1, y1, ..., xN, yN)' written out in full."""
    return "(c, " + ", ".join(f"x{i}, y{i}" for i in range(1, num_points + 1)) + ")"


def parse_instruction(text: str) -> Request:
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("the instruction is empty")
    if text.count("<image>") != 1:
        raise InstructionError(f"an instruction needs exactly one '<image>' placeholder, found {text.count('<image>')}")
    m = _RANGE.search(text)
    coord_range = int(m.group(1)) if m else DEFAULT_RANGE
    if coord_range <= 0:
        raise InstructionError("the coordinate range must be positive, e.g. 'from 0 to 1024'")
    items = _CLASS_ITEM.findall(text)
    fmt = _FORMAT_ELLIPSIS.search(text) or _FORMAT.search(text)
    if not items and not fmt:
        return Request(kind="text", coord_range=coord_range)
    if not items:
        raise InstructionError(
            "the instruction asks for an output format but names no classes; write them as "
            "{'name': <c0>, 'other name': <c1>}"
        )
    indices = [int(k) for _, _, k in items]
    if sorted(indices) != list(range(len(indices))):
        raise InstructionError(f"class tokens must be <c0>..<c{len(indices) - 1}>, each once; got {indices}")
    classes = [""] * len(items)
    for _, name, k in items:
        if not name.strip():
            raise InstructionError(f"class <c{k}> has an empty name")
        classes[int(k)] = name
    if not fmt:
        raise InstructionError(
            "the instruction names classes but no output format; expected '(c, x1, y1, x2, y2)' for boxes "
            "or '(c, x1, y1, ..., xN, yN)' for an N-point polygon"
        )
    if fmt.re is _FORMAT_ELLIPSIS:
        n = int(fmt.group(1))
        slots, expected = [fmt.group(1)], [fmt.group(2)]
    else:
        slots = [s.strip() for s in fmt.group(1).split(",") if s.strip()]
        n = len(slots) // 2
        expected = [f"{a}{i}" for i in range(1, n + 1) for a in "xy"]
    if slots != expected or n < 2:
        raise InstructionError(
            f"cannot read the output format {fmt.group(0)!r}: expected (c, x1, y1, x2, y2) or (c, x1, y1, ..., xN, yN)"
        )
    if n > MAX_POINTS:
        raise InstructionError(f"{n} points exceed the maximum of {MAX_POINTS}")
    kind = "boxes" if n == 2 else "polygons"
    return Request(kind=kind, classes=classes, num_points=n, coord_range=coord_range)


def answer_text(objects: list[dict], request: Request, meta: dict, points: list) -> str:
    """The paper's printed answer ``[(<c0>, x1, y1, ...), ...]``: each object's class token and
    its points (pixels of the original image) in the instruction's range of width and height."""
    r, W, H = request.coord_range, meta["width"], meta["height"]
    items = []
    for o, pts in zip(objects, points):
        nums = ", ".join(f"{x / W * r:.1f}, {y / H * r:.1f}" for x, y in pts)
        items.append(f"(<c{o['class_index']}>, {nums})")
    return "[" + ", ".join(items) + "]"


def question_line(text: str) -> str:
    """What ``text`` (an instruction, or one cut just before an earlier answer) asks last: its
    last non-empty line without <image> and a conversation's "Q:" and "A:" marks."""
    line = next((ln for ln in reversed(text.replace("<image>", "").splitlines()) if ln.strip()), " ")
    return re.sub(r"^\s*Q:\s*|\s*A:\s*$", "", line) or " "
