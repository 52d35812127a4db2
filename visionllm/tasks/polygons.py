"""Polygon targets for instance segmentation (METHOD.md §5, "Polygons" [ours]).

An object's answer is its outer contour resampled to N points at equal arc length.

Convention, stated once: points are (x, y) in image coordinates, x right and **y down**. The
walk is **clockwise as the image is displayed**: from the top-most point it heads right, then
down the right side. In numbers, the shoelace sum ``Σ (x_i y_{i+1} - x_{i+1} y_i)`` of the
returned points is positive (a ring that a y-up textbook would call counter-clockwise). The
walk starts at the top-most contour vertex, the left-most one among ties, so the first
resampled point is that vertex.

A COCO object whose polygon segmentation has several parts (an occluded object seen in two
pieces) is answered by its **largest part by area**: one polygon per object is what the
output format holds, and the largest piece carries most of the mask. Holes are ignored.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient


def _clean_polygon(points) -> Polygon:
    """(K, 2) points -> a valid shapely polygon (its largest piece), or ValueError if degenerate."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"a polygon is a (K, 2) array of points, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("polygon has non-finite coordinates")
    if len(np.unique(p, axis=0)) < 3:
        raise ValueError(f"degenerate polygon: {len(np.unique(p, axis=0))} distinct points, need at least 3")
    poly = Polygon(p)
    if not poly.is_valid:
        # Self-intersecting rings (a bow-tie, a contour that touches itself) are common in
        # annotation files; make_valid splits them and the largest piece is the object.
        fixed = shapely.make_valid(poly)
        pieces = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon)]
        pieces += [q for g in getattr(fixed, "geoms", []) if g.geom_type == "MultiPolygon" for q in g.geoms]
        poly = max(pieces, key=lambda g: g.area, default=Polygon())
    if poly.is_empty or poly.area <= 0 or poly.exterior.length <= 0:
        raise ValueError("degenerate polygon: zero area or zero perimeter")
    return poly


def resample_polygon(points, n: int) -> np.ndarray:
    """Outer contour of ``points`` (K, 2) -> (n, 2) points at equal arc length, clockwise in
    image coordinates (y down), starting at the top-most vertex (ties: left-most).

    Raises ValueError for fewer than 3 distinct points, zero area or zero perimeter.
    """
    if n < 1:
        raise ValueError(f"cannot resample to {n} points")
    poly = orient(_clean_polygon(points), sign=1.0)  # positive shoelace = clockwise with y down
    ring = np.asarray(poly.exterior.coords)[:-1]  # drop the closing repeat
    ymin = ring[:, 1].min()
    eps = 1e-9 * max(1.0, float(np.ptp(ring, axis=0).max()))
    tops = np.flatnonzero(ring[:, 1] <= ymin + eps)
    start = tops[np.argmin(ring[tops, 0])]
    ring = np.roll(ring, -start, axis=0)
    closed = np.vstack([ring, ring[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(n) * (cum[-1] / n)
    return np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], axis=1)


def largest_part(segmentation) -> np.ndarray:
    """COCO polygon segmentation ``[[x1, y1, x2, y2, ...], ...]`` -> the (K, 2) points of its
    largest part by area. RLE masks (crowd regions) hold no polygon: ValueError."""
    if not isinstance(segmentation, list) or not segmentation:
        raise ValueError("segmentation is not a COCO polygon list (RLE or empty)")
    best, best_area = None, -1.0
    for part in segmentation:
        p = np.asarray(part, dtype=np.float64)
        if p.size < 6 or p.size % 2:
            continue
        p = p.reshape(-1, 2)
        area = abs(shoelace(p))
        if area > best_area:
            best, best_area = p, area
    if best is None:
        raise ValueError("segmentation has no polygon with at least 3 points")
    return best


def object_polygon(segmentation, n: int) -> np.ndarray:
    """A COCO object's segmentation -> its (n, 2) answer polygon in pixels (largest part)."""
    return resample_polygon(largest_part(segmentation), n)


def shoelace(points) -> float:
    """Signed area; positive means clockwise as displayed (y down), see the module docstring."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
