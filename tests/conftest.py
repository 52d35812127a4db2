"""Shared fixtures: a tiny generated shapes data set (about a second to build)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# datasets_prep/ is a repo-level tool, not part of the installed package; make it
# importable even when pytest is run without PYTHONPATH=.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets_prep.make_shapes import make_shapes

TINY = {"seed": 0, "train": 16, "val": 8}


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """Path of a tiny shapes set in every published layout (see datasets_prep/make_shapes.py)."""
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    return make_shapes(out, **TINY, workers=1, progress=False)
