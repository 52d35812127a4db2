"""Scene-grounded text for the shapes data set: captions, referring expressions, VQA.

Everything is derived from the scene description produced by ``scene.make_scene`` (shape,
colour, visible area, visible centroid, occluder of each object), so the text is true of
the picture. Referring expressions are built from small structured specs and each one is
re-resolved against the whole scene to check that it selects exactly its target.
"""

from __future__ import annotations

import re

import numpy as np

from .scene import BACKGROUNDS, COLOR_NAMES, SHAPES

NUM = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PLURAL = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
PLURAL["ellipse"] = "ellipses"
SIZE_RATIO = 1.35  # "largest" needs a clear margin over the runner-up
EXTREME_GAP = 0.1  # "leftmost" needs this margin (fraction of the image side)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def counted(n: int, noun: str, plural: str) -> str:
    return article(noun) if n == 1 else f"{NUM[n]} {plural}"


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def region(o: dict, w: int, h: int) -> str:
    """Where an object is, from its visible centroid, in thirds of the image."""
    col = ["left", "center", "right"][min(2, int(3 * o["cx"] / w))]
    row = ["top", "middle", "bottom"][min(2, int(3 * o["cy"] / h))]
    if row != "middle" and col != "center":
        return f"in the {row} {col} corner"
    if row != "middle":
        return f"at the {row}"
    if col != "center":
        return f"on the {col}"
    return "in the center"


def size_word(o: dict, w: int, h: int) -> str:
    rel = o["extent"] / min(w, h)
    return "large " if rel > 0.36 else "small " if rel < 0.2 else ""


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# ----------------------------------------------------------------------------- captions


def _group_phrases(objs, key):
    groups: dict = {}
    for o in objs:
        groups.setdefault(key(o), []).append(o)
    order = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return order


def captions(scene: dict, rng: np.random.Generator) -> list[str]:
    """Five captions: one brief, three medium (counts / colours / positions), one detailed."""
    objs, w, h = scene["objects"], scene["width"], scene["height"]
    bg = BACKGROUNDS[scene["background"]]
    n = len(objs)
    by_cs = _group_phrases(objs, lambda o: (o["color"], o["shape"]))
    cs_phrase = join_list([counted(len(g), f"{c} {s}", f"{c} {PLURAL[s]}")
                           for (c, s), g in by_cs])
    by_s = _group_phrases(objs, lambda o: o["shape"])
    s_phrase = join_list([counted(len(g), s, PLURAL[s]) for s, g in by_s])
    by_c = _group_phrases(objs, lambda o: o["color"])
    c_phrase = join_list([counted(len(g), f"{c} shape", f"{c} shapes") for c, g in by_c])
    what = counted(n, "shape", "shapes") if n > 1 else cs_phrase

    brief = _pick(rng, [
        f"{what} on {article(bg)} background",
        f"{article(bg)} background with {what}" if n > 1
        else f"{cs_phrase} on {article(bg)} background",
        f"a picture of {what}",
        what + ("" if n == 1 else " of different colors" if len(by_c) > 1
                else f", all {objs[0]['color']}"),
    ])

    counts = _pick(rng, [
        f"{cs_phrase} on {article(bg)} background",
        f"an image showing {cs_phrase}",
        # "there is a red circle, two stars ..." -- agrees with the first item, as spoken.
        f"there {'is' if len(by_cs[0][1]) == 1 else 'are'} {cs_phrase} in this picture",
    ]) if len(by_cs) <= 4 else _pick(rng, [
        f"{s_phrase} on {article(bg)} background",
        f"an image with {s_phrase}",
    ])
    if n == 1:
        colours = _pick(rng, [f"a single {cs_phrase.split(' ', 1)[1]}",
                              f"{cs_phrase} alone on {article(bg)} background"])
    elif len(by_c) == 1:
        colours = f"{s_phrase}, all of them {objs[0]['color']}"
    else:
        colours = _pick(rng, [f"{s_phrase} in {join_list([c for c, _ in by_c])}",
                              f"{c_phrase} on {article(bg)} background"])

    # Positional: the most visible object and its nearest neighbour.
    main = max(range(n), key=lambda i: objs[i]["area"])
    mo = objs[main]
    head = f"{article(mo['color'] + ' ' + mo['shape'])} {region(mo, w, h)}"
    if n > 1:
        d = [np.hypot(o["cx"] - mo["cx"], o["cy"] - mo["cy"]) if i != main else np.inf
             for i, o in enumerate(objs)]
        nb = objs[int(np.argmin(d))]
        rel = relation_word(nb, mo)  # where the main object is relative to the neighbour
        positional = _pick(rng, [
            f"{head} next to {article(nb['color'] + ' ' + nb['shape'])}",
            f"{head}, {rel} {article(nb['color'] + ' ' + nb['shape'])}",
        ])
    else:
        positional = f"{head} of the image on {article(bg)} background"

    parts = []
    for o in objs:
        p = f"{article(size_word(o, w, h) + o['color'] + ' ' + o['shape'])} {region(o, w, h)}"
        if o["occluder"] is not None:
            oc = objs[o["occluder"]]
            p += f" partly hidden behind {article(oc['color'] + ' ' + oc['shape'])}"
        parts.append(p)
    detailed = (f"{article(bg)} background with {NUM[n]} shape{'s' * (n > 1)}: "
                f"{join_list(parts)}")
    return [sentence(c) for c in (brief, counts, colours, positional, detailed)]


def relation_word(o: dict, anchor: dict) -> str:
    """Dominant-axis spatial relation of ``anchor`` as seen from ``o`` ("left of" ...)."""
    dx, dy = anchor["cx"] - o["cx"], anchor["cy"] - o["cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


# -------------------------------------------------------------------- referring exprs
# A spec is a small tuple that can be both verbalised and resolved against the scene:
#   ("attr", color|None, shape|None)
#   ("super", "largest"|"smallest", attr)
#   ("extreme", "left"|"right"|"top"|"bottom", attr)
#   ("rel", "left"|"right"|"above"|"below", attr, anchor_attr)


def _matches(o, attr):
    _, color, shape = attr
    return (color is None or o["color"] == color) and (shape is None or o["shape"] == shape)


def _noun(attr):
    _, color, shape = attr
    return " ".join(x for x in (color, shape or "shape") if x)


def _loose(rel, o, a):
    return {"left": o["cx"] < a["cx"], "right": o["cx"] > a["cx"],
            "above": o["cy"] < a["cy"], "below": o["cy"] > a["cy"]}[rel]


def _strict(rel, o, a):
    x, y, bw, bh = a["bbox"]
    return {"left": o["cx"] < x, "right": o["cx"] > x + bw,
            "above": o["cy"] < y, "below": o["cy"] > y + bh}[rel]


def resolve(spec, objs, w, h, cache=None) -> list[int]:
    """Indices of the objects a spec refers to (a valid expression yields exactly one)."""
    if cache is not None:
        if spec not in cache:
            cache[spec] = _resolve(spec, objs, w, h, cache)
        return cache[spec]
    return _resolve(spec, objs, w, h, None)


def _resolve(spec, objs, w, h, cache) -> list[int]:
    kind = spec[0]
    if kind == "attr":
        return [i for i, o in enumerate(objs) if _matches(o, spec)]
    if kind == "super":
        cand = resolve(spec[2], objs, w, h, cache)
        if len(cand) < 2:
            return []
        sign = 1 if spec[1] == "largest" else -1
        full = sorted(cand, key=lambda i: -sign * objs[i]["full_area"])
        vis = max(cand, key=lambda i: sign * objs[i]["area"])
        a, b = objs[full[0]]["full_area"], objs[full[1]]["full_area"]
        clear = (a >= SIZE_RATIO * b) if sign > 0 else (b >= SIZE_RATIO * a)
        return [full[0]] if clear and vis == full[0] else []
    if kind == "extreme":
        cand = resolve(spec[2], objs, w, h, cache)
        if len(cand) < 2:
            return []
        axis, sign, side = {"left": ("cx", 1, w), "right": ("cx", -1, w),
                            "top": ("cy", 1, h), "bottom": ("cy", -1, h)}[spec[1]]
        order = sorted(cand, key=lambda i: sign * objs[i][axis])
        gap = abs(objs[order[0]][axis] - objs[order[1]][axis])
        return [order[0]] if gap >= EXTREME_GAP * side else []
    if kind == "rel":
        _, rel, attr, anchor_attr = spec
        anchors = resolve(anchor_attr, objs, w, h, cache)
        if len(anchors) != 1:
            return []
        a = objs[anchors[0]]
        loose = [i for i in resolve(attr, objs, w, h, cache)
                 if i != anchors[0] and _loose(rel, objs[i], a)]
        return [i for i in loose if _strict(rel, objs[i], a)] if len(loose) == 1 else []
    raise ValueError(spec)


def verbalize(spec, rng) -> str:
    kind = spec[0]
    if kind == "attr":
        return _pick(rng, ["the ", "", "the "]) + _noun(spec)
    if kind == "super":
        word = {"largest": ["largest", "biggest"], "smallest": ["smallest"]}[spec[1]]
        return f"the {_pick(rng, word)} {_noun(spec[2])}"
    if kind == "extreme":
        side = spec[1]
        opts = {"left": ["the leftmost {n}", "the {n} furthest to the left"],
                "right": ["the rightmost {n}", "the {n} furthest to the right"],
                "top": ["the topmost {n}", "the highest {n}"],
                "bottom": ["the bottom {n}", "the lowest {n}"]}[side]
        return _pick(rng, opts).format(n=_noun(spec[2]))
    _, rel, attr, anchor = spec
    word = _pick(rng, {"left": ["left of", "to the left of"],
                       "right": ["right of", "to the right of"],
                       "above": ["above"], "below": ["below", "under"]}[rel])
    return f"the {_noun(attr)} {word} the {_noun(anchor)}"


def _candidate_specs(objs, target: int) -> list[tuple]:
    o = objs[target]
    attrs = [("attr", o["color"], o["shape"]), ("attr", None, o["shape"]),
             ("attr", o["color"], None)]
    specs = list(attrs)
    specs += [("super", s, a) for s in ("largest", "smallest") for a in attrs[:2]]
    specs += [("extreme", s, a) for s in ("left", "right", "top", "bottom") for a in attrs]
    anchors = [("attr", a["color"], a["shape"]) for a in objs if a is not o]
    anchors += [("attr", None, a["shape"]) for a in objs if a is not o]
    for anchor in dict.fromkeys(anchors):  # dedupe, keep order
        for rel in ("left", "right", "above", "below"):
            specs += [("rel", rel, attrs[1], anchor), ("rel", rel, attrs[0], anchor)]
    return specs


def referring_expressions(scene: dict, rng: np.random.Generator) -> list[dict]:
    """1-3 refs per image, each ``{"object": index, "sentences": [1-2 str]}``."""
    objs, w, h = scene["objects"], scene["width"], scene["height"]
    options, cache = {}, {}
    for t in range(len(objs)):
        valid = [s for s in _candidate_specs(objs, t) if resolve(s, objs, w, h, cache) == [t]]
        if valid:
            options[t] = valid
    if not options:
        return []
    targets = list(options)
    rng.shuffle(targets)
    refs = []
    for t in targets[: int(rng.integers(1, 4))]:
        # Pick expression kinds uniformly first so that relational and superlative
        # expressions are not swamped by the (more numerous) attribute ones.
        by_kind: dict = {}
        for s in options[t]:
            by_kind.setdefault(s[0], []).append(s)
        kinds = list(by_kind)
        rng.shuffle(kinds)
        texts: list[str] = []
        for k in kinds[: int(rng.integers(1, 3))]:
            spec = _pick(rng, by_kind[k])
            assert resolve(spec, objs, w, h) == [t], spec
            text = verbalize(spec, rng)
            if text not in texts:
                texts.append(text)
        refs.append({"object": t, "sentences": texts})
    return refs


# ------------------------------------------------------------------------------- VQA


def vqa_pairs(scene: dict, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Candidate (type, question, short answer) triples, all true of the scene."""
    objs, w, h = scene["objects"], scene["width"], scene["height"]
    qs = []
    shape = _pick(rng, SHAPES)
    qs.append(("count", f"How many {PLURAL[shape]} are there?",
               str(sum(o["shape"] == shape for o in objs))))
    color = _pick(rng, COLOR_NAMES)
    qs.append(("count", f"How many {color} shapes are there?",
               str(sum(o["color"] == color for o in objs))))
    qs.append(("count", _pick(rng, ["How many shapes are there?",
                                    "How many shapes are in the image?"]), str(len(objs))))
    o = _pick(rng, objs)
    qs.append(("count", f"How many {o['color']} {PLURAL[o['shape']]} are there?",
               str(sum(p["color"] == o["color"] and p["shape"] == o["shape"] for p in objs))))
    # Existence, balanced between yes and no where the scene allows it.
    present = sorted({p["shape"] for p in objs})
    absent = [s for s in SHAPES if s not in present]
    if absent and (rng.random() < 0.5 or not present):
        s = _pick(rng, absent)
        qs.append(("exist", f"Is there {article(s)}?", "no"))
    else:
        s = _pick(rng, present)
        qs.append(("exist", f"Is there {article(s)}?", "yes"))
    pairs = sorted({(p["color"], p["shape"]) for p in objs})
    if rng.random() < 0.5:
        c, s = pairs[int(rng.integers(len(pairs)))]
    else:
        c, s = _pick(rng, COLOR_NAMES), _pick(rng, SHAPES)
    qs.append(("exist", f"Is there {article(c + ' ' + s)} in the image?",
               "yes" if (c, s) in pairs else "no"))
    # Attribute questions only about objects that are unique by the asked-about property.
    uniq_shape = [p for p in objs if sum(q["shape"] == p["shape"] for q in objs) == 1]
    if uniq_shape:
        p = _pick(rng, uniq_shape)
        qs.append(("color", f"What color is the {p['shape']}?", p["color"]))
    uniq_color = [p for p in objs if sum(q["color"] == p["color"] for q in objs) == 1]
    if uniq_color:
        p = _pick(rng, uniq_color)
        qs.append(("shape", f"What shape is the {p['color']} object?", p["shape"]))
    uniq = uniq_shape + [p for p in uniq_color if p not in uniq_shape]
    sided = [p for p in uniq if abs(p["cx"] / w - 0.5) > 0.1]
    if sided:
        p = _pick(rng, sided)
        noun = p["shape"] if p in uniq_shape else f"{p['color']} shape"
        qs.append(("position", f"Is the {noun} on the left or the right side of the image?",
                   "left" if p["cx"] < w / 2 else "right"))
    tiered = [p for p in uniq if abs(p["cy"] / h - 0.5) > 0.1]
    if tiered:
        p = _pick(rng, tiered)
        noun = p["shape"] if p in uniq_shape else f"{p['color']} shape"
        qs.append(("position", f"Is the {noun} in the top or the bottom half of the image?",
                   "top" if p["cy"] < h / 2 else "bottom"))
    return qs


def conversation(scene: dict, rng: np.random.Generator, detailed_caption: str,
                 max_short: int = 3) -> list[dict]:
    """A LLaVA-style multi-turn conversation: 2 to ``max_short`` short QA pairs (as many as the
    scene has questions for, past 3), maybe one long answer."""
    qs = vqa_pairs(scene, rng)
    # Prefer distinct question types so a conversation is not three counting questions.
    order = rng.permutation(len(qs))
    chosen, seen = [], set()
    for i in order:
        if qs[i][0] not in seen:
            chosen.append(qs[i])
            seen.add(qs[i][0])
    if max_short <= 3:
        chosen = chosen[: int(rng.integers(2, max_short + 1))]
    else:  # every type first, then more of each, up to max_short
        chosen = (chosen + [qs[i] for i in order if qs[i] not in chosen])[:max_short]
    turns = [(q, a) for _, q, a in chosen]
    if rng.random() < 0.3:
        ask = _pick(rng, ["Describe the image in detail.", "What is in this picture?",
                          "Can you describe this image?"])
        turns.insert(int(rng.integers(len(turns) + 1)), (ask, detailed_caption))
    conv = []
    for k, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv
