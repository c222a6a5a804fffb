"""torch Datasets over files (a layout's pairs) and over the synthetic generator.

Items are ``(image [C, H, W], mask [1, H, W])`` float32 tensors. Augmentation draws from a
generator seeded by (seed, epoch, index), so an epoch's augmentation is the same whatever the
number of loader workers or processes; call ``set_epoch`` each epoch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch.utils.data import Dataset

from medqk.data.augment import Augmentation
from medqk.data.layouts import Pair
from medqk.data.preprocess import Preprocessing, load_pair
from medqk.data.synthetic import synthetic_sample


class SegmentationDataset(Dataset, ABC):
    def __init__(self, names: list[str], augmentation: Augmentation | None = None, seed: int = 0):
        self.names = names
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = self.augmentation(image, mask, rng)
        return torch.from_numpy(image), torch.from_numpy(mask)

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` before augmentation: image [C, H, W], mask [1, H, W]."""


class PairDataset(SegmentationDataset):
    """Image and mask files, preprocessed on every access (nothing cached: datasets can be large)."""

    def __init__(self, pairs: list[Pair], prep: Preprocessing, augmentation: Augmentation | None = None, seed: int = 0):
        super().__init__([pair.name for pair in pairs], augmentation, seed)
        self.pairs = pairs
        self.prep = prep

    def load(self, index: int):
        pair = self.pairs[index]
        return load_pair(pair.image, pair.masks, self.prep)


class SyntheticDataset(SegmentationDataset):
    """``count`` samples of the synthetic generator's stream ``seed``, made on first use and kept."""

    def __init__(self, count: int, size: tuple[int, int] | int, seed: int, augmentation: Augmentation | None = None):
        super().__init__([f"synthetic-{seed}-{i:04d}" for i in range(count)], augmentation, seed)
        self.size = size
        self.samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, index: int):
        if index not in self.samples:
            sample = synthetic_sample(index, self.size, self.seed)
            self.samples[index] = (sample.image, sample.mask)
        return self.samples[index]


#: The synthetic validation set of seed s is stream s + 1 (disjoint from training's stream s).
SYNTHETIC_VALIDATION_STREAM = 1


def synthetic_validation_set(count: int, size: tuple[int, int] | int, seed: int) -> SyntheticDataset:
    return SyntheticDataset(count, size, seed + SYNTHETIC_VALIDATION_STREAM)
