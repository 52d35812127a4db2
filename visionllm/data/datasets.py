"""Training sets: a published-format reader plus a task's sample builder, and the weighted
multi-task mixture of METHOD.md §6.

Every item draws its template, class subset, polygon size, caption or conversation turn from
its own RNG, seeded by (seed, epoch, index), so a run is reproducible whatever the number of
loader workers, and resumable at any step.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator

from torch.utils.data import Dataset, Sampler


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


class Curriculum:
    """Easy records first [ours]: until each stage's fraction of the run, a task draws only the
    records whose difficulty (for images: how many objects they hold) is at most the stage's
    cap; after the last stage, every record. ``stages`` is ``[(until_fraction, max_difficulty),
    ...]``.

    Why: a small random LLM asked about busy images settles on one answer per question type
    before it learns to find the named object among the image tokens, and then the text loss
    no longer reaches the tokens; about an image with one object there is nothing to find,
    and it learns to read the token within 100 steps (docs/results.md, "colour pilot"). From
    scratch it did not help (run 5 there: the tokens are still forming while the easy images
    come); it is meant for a stage that starts from a trained tokenizer.
    """

    def __init__(self, difficulty: list[float], stages: Iterable, *, name: str = ""):
        self.stages = sorted((float(f), float(c)) for f, c in stages)
        self.pools = []
        for frac, cap in self.stages:
            pool = [i for i, d in enumerate(difficulty) if d <= cap]
            if not pool:
                least = min(difficulty, default=math.inf)
                raise ValueError(f"curriculum of {name or 'a task'}: no record has difficulty <= {cap:g} (the stage "
                                 f"until {frac:g}); the easiest has {least:g}")
            self.pools.append(pool)

    def pick(self, index: int, progress: float) -> int:
        """The record drawn for ``index`` (uniform over the task) at ``progress`` (0 to 1)."""
        for (frac, _), pool in zip(self.stages, self.pools):
            if progress < frac:
                return pool[index % len(pool)]
        return index

    def sizes(self) -> list[int]:
        return [len(p) for p in self.pools]


class WithProgress(Sampler):
    """Tags each index of ``sampler`` with the fraction of the run at which it is trained on,
    ``(index, progress)``, for the mixture's curricula: item k of the sampler feeds optimizer
    step ``first_step + k // per_step`` of ``total_steps``."""

    def __init__(self, sampler: Sampler, *, first_step: int, per_step: int, total_steps: int):
        self.sampler, self.first_step = sampler, first_step
        self.per_step, self.total_steps = max(1, per_step), max(1, total_steps)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        for k, index in enumerate(self.sampler):
            yield index, (self.first_step + k // self.per_step) / self.total_steps

    def __len__(self) -> int:
        return len(self.sampler)


class Mixture(Dataset):
    """Draws each item's task by weight, then a record of that task: tasks of very different
    sizes (COCO's 118k images, RefCOCO's 320k expressions) mix in the proportions asked for.

    ``phases``: ``[(from_fraction, weights), ...]``; from that fraction of the run on (the
    ``progress`` of :class:`WithProgress`), tasks are drawn by those weights instead. ``names``
    lists every task drawn in some phase."""

    def __init__(self, sets: dict[str, TaskSet], weights: dict[str, float], *, seed: int = 0, length: int | None = None,
                 curricula: dict[str, Curriculum] | None = None, phases: Iterable = ()):
        if not sets:
            raise ValueError("a mixture needs at least one task")
        self.sets = sets
        self.phases = [(0.0, *self._draw(weights))]
        for start, w in sorted(((float(f), w) for f, w in phases), key=lambda p: p[0]):
            if not 0.0 < start < 1.0:
                raise ValueError(f"a mixture phase starts at a fraction of the run in (0, 1), not {start:g}")
            unknown = [k for k, v in w.items() if k not in sets and v > 0]
            if unknown:
                raise ValueError(f"the mixture phase from {start:g} draws {unknown}, which have no training data here "
                                 f"(tasks with data: {', '.join(sets)})")
            self.phases.append((start, *self._draw(w)))
        self.names = [k for k in sets if any(k in names for _, names, _ in self.phases)]
        self.seed, self.epoch = seed, 0
        self.length = length or sum(len(sets[k]) for k in self.phases[0][1])
        self.curricula = dict(curricula or {})

    def _draw(self, weights: dict[str, float]) -> tuple[list[str], list[float]]:
        """The tasks of ``weights`` that have a set, and their cumulative shares."""
        bad = [k for k, w in weights.items() if k in self.sets and w < 0]
        if bad or sum(weights.get(k, 0) for k in self.sets) <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum: {weights}")
        names = [k for k in self.sets if weights.get(k, 0) > 0]
        total = sum(weights[k] for k in names)
        return names, list(itertools.accumulate(weights[k] / total for k in names))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.sets.values():
            s.set_epoch(epoch)

    def __getitem__(self, item: int | tuple[int, float]) -> dict:
        """``item``: an index, or ``(index, progress)`` from :class:`WithProgress` (curricula, phases)."""
        index, progress = item if isinstance(item, tuple) else (item, None)
        _, names, cdf = [p for p in self.phases if p[0] <= (progress or 0.0)][-1]
        if len(names) == 1:
            name = names[0]
            record = index % len(self.sets[name])
        else:
            rng = random.Random(f"mix/{self.seed}/{self.epoch}/{index}")
            name = names[min(bisect.bisect_left(cdf, rng.random()), len(names) - 1)]
            record = rng.randrange(len(self.sets[name]))
        if progress is not None and name in self.curricula:
            record = self.curricula[name].pick(record, progress)
        sample = self.sets[name][record]
        sample["meta"]["task"] = name
        return sample
