"""Training and evaluation sets: a published-format reader plus a task's sample builder.

Each training item draws its instruction template and class subset from its own RNG, seeded
by (seed, epoch, index), so a run is reproducible whatever the number of loader workers.
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from visionllm.tasks import detection


class DetectionTrainSet(Dataset):
    def __init__(self, *, reader, image_size: int, max_classes: int, flip: bool, seed: int = 0, vocabulary=None):
        self.reader = reader
        self.image_size = image_size
        self.max_classes = max_classes
        self.flip = flip
        self.seed = seed
        self.epoch = 0
        self.vocabulary = list(vocabulary or [c["name"] for c in reader.categories])

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        return detection.training_sample(
            self.reader[index],
            vocabulary=self.vocabulary,
            image_size=self.image_size,
            rng=rng,
            max_classes=self.max_classes,
            flip=self.flip,
        )
