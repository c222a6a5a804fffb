"""Training augmentation of the paper's recipe, applied to an image and its mask together.

Each with probability 0.3: rotation by up to 35 degrees (reflected border), horizontal flip,
vertical flip, and coarse dropout (1 to 10 holes set to 0 in the image only). Holes are 32x32 at
256x256 and scale with the image, so a 64x64 image gets 8x8 holes rather than losing half of
itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    probability: float = 0.3
    max_rotation_degrees: float = 35.0
    max_holes: int = 10
    hole_fraction: float = 32 / 256   #: hole side as a fraction of the image side

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        """Augmented copies of ``image`` [C, H, W] and ``mask`` [1, H, W]."""
        if rng.random() < self.probability:
            angle = rng.uniform(-self.max_rotation_degrees, self.max_rotation_degrees)
            image, mask = rotate(image, angle), rotate(mask, angle)
        if rng.random() < self.probability:
            image, mask = image[:, :, ::-1], mask[:, :, ::-1]
        if rng.random() < self.probability:
            image, mask = image[:, ::-1, :], mask[:, ::-1, :]
        if rng.random() < self.probability:
            image = self.drop_holes(image, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def drop_holes(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = image.copy()
        _, height, width = image.shape
        hole_h = max(1, round(height * self.hole_fraction))
        hole_w = max(1, round(width * self.hole_fraction))
        for _ in range(rng.integers(1, self.max_holes + 1)):
            top = rng.integers(0, height - hole_h + 1)
            left = rng.integers(0, width - hole_w + 1)
            image[:, top:top + hole_h, left:left + hole_w] = 0
        return image


def rotate(array: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear rotation of [C, H, W] about the centre, borders reflected."""
    _, height, width = array.shape
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    # affine_grid works in [-1, 1] coordinates per axis; the aspect terms keep a non-square
    # image's rotation a rotation in pixels rather than a shear.
    matrix = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]])
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    grid = F.affine_grid(matrix[None], list(tensor.shape), align_corners=False)
    rotated = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return rotated[0].numpy()
