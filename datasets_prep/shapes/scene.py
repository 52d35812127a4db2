"""Scene sampling and rendering for the synthetic shapes data set.

A scene is a textured background with 1-8 coloured shapes drawn in order. Each shape is
a shapely polygon in continuous pixel coordinates (pixel ``(i, j)`` covers
``[i, i+1] x [j, j+1]``, the COCO convention), so the *visible* region of an object is
exact geometry: its polygon minus the union of the polygons drawn after it. The same
polygons are rasterised (4x supersampled per object) to draw the picture, so the
annotations line up with the pixels to within anti-aliasing.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box

# COCO ids are deliberately non-contiguous (like COCO's 1..90 with gaps) so that code
# mapping category ids to class indices gets exercised.
CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 7, "name": "hexagon", "supercategory": "shape"},
    {"id": 9, "name": "ellipse", "supercategory": "shape"},
]
SHAPE_TO_ID = {c["name"]: c["id"] for c in CATEGORIES}
SHAPES = [c["name"] for c in CATEGORIES]

# Saturated and far apart in hue so that a colour name is never ambiguous, even on the
# muted (low-saturation) backgrounds below.
COLORS = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 50, 175),
    "orange": (245, 130, 20),
}
COLOR_NAMES = list(COLORS)

# Background kind -> adjective used in captions.
BACKGROUNDS = {
    "plain": "plain",
    "gradient": "gradient",
    "stripes": "striped",
    "noise": "mottled",
    "blobs": "spotted",
    "checker": "checkered",
}

MIN_SIDE, MAX_SIDE = 96, 320
MIN_VISIBLE = 0.5  # every object keeps at least this fraction of its area visible
SUPERSAMPLE = 4
MIN_PART_AREA = 4.0  # px^2; smaller visible fragments are not annotated


# --------------------------------------------------------------------------- geometry


def _regular(n, radius, phase=0.0):
    t = phase + np.arange(n) * 2 * math.pi / n
    return Polygon(np.stack([radius * np.cos(t), radius * np.sin(t)], 1))


def shape_polygon(shape: str, size: float, rng: np.random.Generator) -> Polygon:
    """Polygon of ``shape`` centred on the origin; ``size`` is roughly its diameter."""
    r = size / 2
    if shape == "circle":
        return _regular(48, r)
    if shape == "ellipse":
        # Clearly elongated so that it is never mistaken for a circle.
        poly = affinity.scale(_regular(48, r), 1.0, rng.uniform(0.45, 0.65))
        angle = rng.choice([0.0, 90.0]) + rng.uniform(-25, 25)
        return affinity.rotate(poly, angle, origin=(0, 0))
    if shape == "square":
        s = r * 0.85
        return affinity.rotate(box(-s, -s, s, s), rng.uniform(-15, 15), origin=(0, 0))
    if shape == "triangle":
        # Pointing up (negative y is up in image coordinates).
        poly = _regular(3, r * 1.1, -math.pi / 2)
        return affinity.rotate(poly, rng.uniform(-15, 15), origin=(0, 0))
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.48)
        poly = Polygon(np.stack([rad * np.cos(t), rad * np.sin(t)], 1))
        return affinity.rotate(poly, rng.uniform(-15, 15), origin=(0, 0))
    if shape == "hexagon":
        phase = rng.choice([0.0, math.pi / 6]) + math.radians(rng.uniform(-8, 8))
        return _regular(6, r, phase)
    raise ValueError(f"unknown shape {shape!r}")


def _polygons(geom):
    """The polygon parts of a shapely geometry (differences can yield collections)."""
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    return [p for sub in getattr(geom, "geoms", []) for p in _polygons(sub)]


def _acceptable_visible(visible, full_area: float) -> bool:
    parts = _polygons(visible)
    if sum(p.area for p in parts) < MIN_VISIBLE * full_area:
        return False
    for p in parts:
        # COCO polygons cannot express holes, so scenes that would need one are rejected;
        # slivers are rejected because they would be unlabelled (yet visible) pixels.
        if len(p.interiors) or p.area < max(MIN_PART_AREA, 0.03 * full_area):
            return False
    return True


def sample_objects(rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """Place 1-8 shapes so that each keeps >= 50% of its area visible, without holes."""
    short = min(width, height)
    target = int(rng.integers(1, 9))
    objs: list[dict] = []
    for _ in range(target):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        size = rng.uniform(0.12, 0.45) * short
        for attempt in range(25):
            if attempt and attempt % 5 == 0:
                size = max(0.12 * short, size * 0.85)  # crowded scene: try smaller
            base = shape_polygon(shape, size, rng)
            x0, y0, x1, y1 = base.bounds
            if x1 - x0 > width - 2 or y1 - y0 > height - 2:
                continue
            dx = rng.uniform(1 - x0, width - 1 - x1)
            dy = rng.uniform(1 - y0, height - 1 - y1)
            poly = affinity.translate(base, dx, dy)
            new_visible = []
            ok = True
            for o in objs:
                if not o["visible"].intersects(poly):
                    new_visible.append(o["visible"])
                    continue
                # Same-coloured overlapping shapes would merge into one blob on screen.
                if o["color"] == color:
                    ok = False
                    break
                vis = o["visible"].difference(poly)
                if not _acceptable_visible(vis, o["full_area"]):
                    ok = False
                    break
                new_visible.append(vis)
            if not ok:
                continue
            for o, vis in zip(objs, new_visible, strict=True):
                if vis is not o["visible"]:
                    o["occluders"].append(len(objs))
                o["visible"] = vis
            objs.append({
                "shape": shape, "color": color, "poly": poly, "visible": poly,
                "full_area": poly.area, "occluders": [],
                # A little per-object tint so colours are not perfectly flat.
                "rgb": tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255))
                             for c in COLORS[color]),
            })
            break
    return objs


def coco_geometry(visible) -> tuple[list[list[float]], list[float], float]:
    """COCO ``segmentation`` (one flat list per part), ``bbox`` and ``area`` of a geometry.

    bbox and area are computed from the rounded coordinates actually written, so that
    they agree exactly with the segmentation a reader sees.
    """
    segs, areas = [], []
    for part in _polygons(visible):
        coords = np.round(np.asarray(part.exterior.coords)[:-1], 2)
        # Rounding can collapse neighbouring vertices.
        keep = np.any(coords != np.roll(coords, 1, axis=0), axis=1)
        coords = coords[keep]
        if len(coords) < 3:
            continue
        area = Polygon(coords).area
        if area < MIN_PART_AREA:
            continue
        segs.append(coords)
        areas.append(area)
    if not segs:
        return [], [0.0, 0.0, 0.0, 0.0], 0.0
    allc = np.concatenate(segs)
    x0, y0 = allc.min(0)
    x1, y1 = allc.max(0)
    bbox = [round(float(x0), 2), round(float(y0), 2),
            round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
    return [[float(v) for v in c.reshape(-1)] for c in segs], bbox, round(float(sum(areas)), 2)


# ------------------------------------------------------------------------- rendering


def _muted(rng, lo, hi):
    g = rng.uniform(lo, hi)
    return np.clip(g + rng.uniform(-18, 18, 3), 0, 255)


def background(rng: np.random.Generator, width: int, height: int) -> tuple[str, np.ndarray]:
    """A low-contrast, low-saturation texture (float32 HxWx3) and its kind."""
    kind = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    # Mostly light backgrounds, sometimes dark ones, never saturated.
    lo, hi = (150, 230) if rng.random() < 0.8 else (35, 90)
    base = _muted(rng, lo, hi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "plain":
        field = np.zeros((height, width), np.float32)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / max(width, height)
        other = _muted(rng, lo, hi)
        img = base + (other - base) * (t - t.min())[..., None] / max(float(np.ptp(t)), 1e-6)
        return kind, img.astype(np.float32)
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(8, 26)
        t = (xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period
        field = rng.uniform(8, 16) * np.tanh(2.5 * np.sin(t))
    elif kind == "noise":
        gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        grid = Image.fromarray(rng.uniform(0, 255, (gh, gw)).astype(np.uint8))
        smooth = np.asarray(grid.resize((width, height), Image.BICUBIC), np.float32)
        field = (smooth / 255.0 - 0.5) * rng.uniform(30, 50)
    elif kind == "blobs":
        field = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(4, 12))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            s = rng.uniform(0.05, 0.2) * min(width, height)
            amp = rng.uniform(-25, 25)
            field += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    elif kind == "checker":
        cell = rng.uniform(10, 30)
        field = np.where((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0, 1.0, -1.0)
        field = (field * rng.uniform(6, 12)).astype(np.float32)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return kind, base[None, None, :].astype(np.float32) + field[..., None]


def render(bg: np.ndarray, objs: list[dict]) -> Image.Image:
    """Composite the shapes, in order, onto the background with per-object anti-aliasing."""
    img = bg.copy()
    height, width = img.shape[:2]
    ss = SUPERSAMPLE
    for o in objs:
        x0, y0, x1, y1 = o["poly"].bounds
        cx0, cy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        cx1, cy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
        cw, ch = cx1 - cx0, cy1 - cy0
        if cw <= 0 or ch <= 0:
            continue
        mask = Image.new("L", (cw * ss, ch * ss), 0)
        # PIL fills sub-pixels whose integer coordinate lies inside the polygon, i.e. it
        # samples at sub-pixel centres once shifted by half a sub-pixel.
        pts = [((x - cx0) * ss - 0.5, (y - cy0) * ss - 0.5) for x, y in o["poly"].exterior.coords]
        ImageDraw.Draw(mask).polygon(pts, fill=255)
        alpha = np.asarray(mask.resize((cw, ch), Image.BOX), np.float32)[..., None] / 255.0
        region = img[cy0:cy1, cx0:cx1]
        img[cy0:cy1, cx0:cx1] = region * (1 - alpha) + np.asarray(o["rgb"], np.float32) * alpha
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    while True:
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
        if max(w, h) <= 2 * min(w, h):
            return w, h


def make_scene(rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Sample and draw one scene; returns the image and a plain-data description of it."""
    width, height = sample_size(rng)
    kind, bg = background(rng, width, height)
    objs = sample_objects(rng, width, height)
    image = render(bg, objs)
    frame = box(0, 0, width, height)
    out = []
    for i, o in enumerate(objs):
        vis = o["visible"].intersection(frame)
        seg, bbox, area = coco_geometry(vis)
        if not seg:
            continue
        c = vis.centroid if not isinstance(vis, Point) else vis
        # The occluder that hides most of this object, for "partly hidden behind" captions.
        occluder = None
        if o["occluders"]:
            occluder = max(o["occluders"],
                           key=lambda j: o["poly"].intersection(objs[j]["poly"]).area)
        out.append({
            "index": i, "shape": o["shape"], "color": o["color"],
            "category_id": SHAPE_TO_ID[o["shape"]],
            "segmentation": seg, "bbox": bbox, "area": area,
            "full_area": round(float(o["full_area"]), 2),
            # Apparent size (bounding extent of the whole shape): area under-rates stars.
            "extent": round(float(max(b1 - b0 for b0, b1 in zip(o["poly"].bounds[:2],
                                                                o["poly"].bounds[2:],
                                                                strict=True))), 2),
            "cx": float(c.x), "cy": float(c.y), "occluder": occluder,
        })
    # Occluder indices refer to drawing order; keep them valid after any dropped object.
    pos = {o["index"]: k for k, o in enumerate(out)}
    for o in out:
        o["occluder"] = pos.get(o["occluder"]) if o["occluder"] is not None else None
        del o["index"]
    return image, {"width": width, "height": height, "background": kind, "objects": out}
