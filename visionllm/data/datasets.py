"""Training sets: a published-format reader plus a task's sample builder, and the weighted
multi-task mixture of METHOD.md §6.

Every item draws its template, class subset, polygon size, caption or conversation turn from
its own RNG, seeded by (seed, epoch, index), so a run is reproducible whatever the number of
loader workers, and resumable at any step.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable

from torch.utils.data import Dataset


class TaskSet(Dataset):
    """``build(record, rng) -> sample`` over every record of ``reader``."""

    def __init__(self, *, reader, build: Callable, seed: int = 0, name: str = ""):
        self.reader, self.build, self.seed, self.name = reader, build, seed, name
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(f"{self.name}/{self.seed}/{self.epoch}/{index}")
        return self.build(self.reader[index], rng)


class Mixture(Dataset):
    """Draws each item's task by weight, then a record of that task: tasks of very different
    sizes (COCO's 118k images, RefCOCO's 320k expressions) mix in the proportions asked for."""

    def __init__(self, sets: dict[str, TaskSet], weights: dict[str, float], *, seed: int = 0, length: int | None = None):
        if not sets:
            raise ValueError("a mixture needs at least one task")
        bad = [k for k, w in weights.items() if k in sets and w < 0]
        if bad or sum(weights.get(k, 0) for k in sets) <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum: {weights}")
        self.names = [k for k in sets if weights.get(k, 0) > 0]
        self.sets = sets
        total = sum(weights[k] for k in self.names)
        acc, self.cdf = 0.0, []
        for k in self.names:
            acc += weights[k] / total
            self.cdf.append(acc)
        self.seed, self.epoch = seed, 0
        self.length = length or sum(len(sets[k]) for k in self.names)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.sets.values():
            s.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        if len(self.names) == 1:
            s = self.sets[self.names[0]]
            return s[index % len(s)]
        rng = random.Random(f"mix/{self.seed}/{self.epoch}/{index}")
        name = self.names[min(bisect.bisect_left(self.cdf, rng.random()), len(self.names) - 1)]
        s = self.sets[name]
        return s[rng.randrange(len(s))]
