"""Helpers for the built-in synthetic "shapes" data set (see ``datasets_prep/make_shapes.py``)."""
