"""tools/probe_scene.py: the linear probe reads a word that the features carry and not one they
do not."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("probe_scene", Path(__file__).resolve().parents[1] / "tools" / "probe_scene.py")
probe_scene = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_scene)


def test_the_probe_reads_what_the_features_carry_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    carried = torch.randn(300, 8, generator=g) + 3.0 * torch.nn.functional.one_hot(y, 8).float()
    noise = torch.randn(300, 8, generator=g)
    tr, va = slice(0, 200), slice(200, 300)
    good = probe_scene.linear_probe(carried[tr], y[tr], carried[va], y[va], 3)
    bad = probe_scene.linear_probe(noise[tr], y[tr], noise[va], y[va], 3)
    assert good["probe_val"] > 0.9
    assert bad["probe_val"] < 0.55  # three classes: about a third by chance
