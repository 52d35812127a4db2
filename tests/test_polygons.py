"""Polygon resampling: equal arc lengths, clockwise with y down, from the top-most point."""

import numpy as np
import pytest
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.polygon import orient

from visionllm.tasks.polygons import largest_part, object_polygon, resample_polygon, shoelace

SQUARE = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)  # TL, TR, BR, BL


def _star(cx=50.0, cy=40.0, r1=30.0, r2=12.0, k=5):
    a = np.arange(2 * k) * np.pi / k + 0.3
    r = np.where(np.arange(2 * k) % 2 == 0, r1, r2)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


@pytest.mark.parametrize("order", ["as is", "reversed", "rolled", "reversed and rolled"])
def test_square_corners_recovered(order):
    pts = SQUARE.copy()
    if "reversed" in order:
        pts = pts[::-1]
    if "rolled" in order:
        pts = np.roll(pts, 1, axis=0)
    out = resample_polygon(pts, 4)
    # clockwise as displayed (y down): top-left, top-right, bottom-right, bottom-left
    np.testing.assert_allclose(out, SQUARE, atol=1e-9)


def test_rectangle_equal_steps():
    rect = np.array([[30, 10], [0, 10], [0, 0], [30, 0]], float)
    out = resample_polygon(rect, 8)
    want = [[0, 0], [10, 0], [20, 0], [30, 0], [30, 10], [20, 10], [10, 10], [0, 10]]
    np.testing.assert_allclose(out, want, atol=1e-9)


@pytest.mark.parametrize("n", [8, 16, 24, 37])
def test_equal_arc_length_on_a_star(n):
    pts = _star()
    out = resample_polygon(pts, n)
    ring = LineString(orient(Polygon(pts), 1.0).exterior.coords)
    assert max(ring.distance(Point(p)) for p in out) < 1e-9  # every point lies on the contour
    pos = np.array([ring.project(Point(p)) for p in out])
    steps = np.diff(np.concatenate([pos, pos[:1]])) % ring.length
    np.testing.assert_allclose(steps, ring.length / n, rtol=1e-6)


def test_clockwise_from_top_most_point():
    tri = np.array([[0, 20], [10, 0], [20, 20]], float)  # apex at the top
    out = resample_polygon(tri, 12)
    np.testing.assert_allclose(out[0], [10, 0])
    assert out[1][0] > out[0][0]  # clockwise on screen: from the top it walks to the right
    assert shoelace(out) > 0
    assert out[:, 1].min() == out[0, 1]
    star = resample_polygon(_star(), 20)
    assert shoelace(star) > 0 and np.isclose(star[0, 1], _star()[:, 1].min())


def test_ties_take_the_left_most():
    trapezoid = np.array([[2, 0], [8, 0], [10, 5], [0, 5]], float)
    np.testing.assert_allclose(resample_polygon(trapezoid, 6)[0], [2, 0])


@pytest.mark.parametrize(
    "pts, fragment",
    [
        ([[0, 0], [1, 1]], "distinct points"),
        ([[0, 0], [0, 0], [0, 0], [0, 0]], "distinct points"),
        ([[0, 0], [1, 1], [1, 1], [0, 0]], "distinct points"),
        ([[0, 0], [1, 1], [2, 2]], "zero area"),
        ([[0, 0], [1, np.nan], [2, 2]], "non-finite"),
    ],
)
def test_degenerate_raises(pts, fragment):
    with pytest.raises(ValueError, match=fragment):
        resample_polygon(np.array(pts, float), 8)


def test_self_intersecting_ring_is_repaired():
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float)
    out = resample_polygon(bowtie, 8)
    assert out.shape == (8, 2) and shoelace(out) > 0


def test_largest_part_and_rle():
    small = [0, 0, 2, 0, 2, 2, 0, 2]
    big = [10, 10, 30, 10, 30, 30, 10, 30]
    np.testing.assert_allclose(largest_part([small, big, [1, 1, 2, 2]]), np.reshape(big, (-1, 2)))
    np.testing.assert_allclose(object_polygon([small, big], 4), [[10, 10], [30, 10], [30, 30], [10, 30]])
    with pytest.raises(ValueError, match="RLE"):
        largest_part({"counts": [0, 4], "size": [2, 2]})
    with pytest.raises(ValueError, match="at least 3 points"):
        largest_part([[1, 1, 2, 2]])
