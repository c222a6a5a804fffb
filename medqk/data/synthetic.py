"""Seeded synthetic segmentation data: lesion-like targets beside look-alike distractors.

The paper's point is that targets co-occur with background structures of the same colour and
texture (hair beside a lesion, bubbles beside a polyp). Each image here has one to three
targets (compact blobs with irregular edges, labelled 1) and one to four distractors (thin
curved strokes and small specks painted with exactly the targets' colour and texture, labelled
0), so colour alone cannot separate them: a model must learn shape and extent.

Images are network inputs: float32 [3, H, W] in [0, 1], BGR channel order (the default
preprocessing), masks float32 [1, H, W] in {0, 1}. Sample ``i`` of seed ``s`` is the same on
every machine and at every call, whatever else was generated before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticSample:
    image: np.ndarray         #: float32 [3, H, W] in [0, 1], BGR
    mask: np.ndarray          #: float32 [1, H, W], 1 on targets
    distractors: np.ndarray   #: bool [H, W], pixels painted like a target but labelled background


def synthetic_sample(index: int, size: tuple[int, int] | int, seed: int = 0) -> SyntheticSample:
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width)

    targets = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 4)):
        targets = np.maximum(targets, _blob(rng, yy, xx, height, width, scale))
    distractors = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 5)):
        shape = _stroke if rng.random() < 0.6 else _speck
        distractors = np.maximum(distractors, shape(rng, yy, xx, height, width, scale))
    distractors *= 1 - targets  # where they overlap, the target wins

    background = _background(rng, yy, xx, height, width)
    lesion = _lesion_colour(rng, height, width)
    coverage = np.maximum(targets, distractors)[None]
    rgb = background * (1 - coverage) + lesion * coverage
    rgb += rng.normal(0, 0.03, rgb.shape).astype(np.float32)  # sensor noise over everything
    image = np.clip(rgb[::-1], 0, 1).astype(np.float32)        # RGB -> BGR
    mask = (targets >= 0.5).astype(np.float32)[None]
    return SyntheticSample(np.ascontiguousarray(image), mask, distractors >= 0.5)


def synthetic_batch(count: int, size: tuple[int, int] | int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` samples stacked: images [N, 3, H, W] and masks [N, 1, H, W]."""
    samples = [synthetic_sample(i, size, seed) for i in range(count)]
    return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])


def _soft_inside(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - distance, 0, 1)


def _blob(rng, yy, xx, height, width, scale) -> np.ndarray:
    """A compact lesion: an ellipse whose radius wobbles with angle (irregular border)."""
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    radius = rng.uniform(0.08, 0.17) * scale
    aspect, tilt = rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / aspect
    angle, dist = np.arctan2(v, u), np.hypot(u, v)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return _soft_inside(dist - radius * wobble)


def _stroke(rng, yy, xx, height, width, scale) -> np.ndarray:
    """A thin curved stroke (hair, vessel, fold): a quadratic Bezier curve of small width."""
    points = rng.uniform(0, 1, (3, 2)) * (height, width)
    t = np.linspace(0, 1, 64, dtype=np.float32)[:, None]
    curve = (1 - t) ** 2 * points[0] + 2 * t * (1 - t) * points[1] + t ** 2 * points[2]
    half_width = max(0.8, rng.uniform(0.012, 0.025) * scale)
    dist = np.full(yy.shape, np.inf, np.float32)
    for py, px in curve:
        dist = np.minimum(dist, np.hypot(yy - py, xx - px))
    return _soft_inside(dist - half_width)


def _speck(rng, yy, xx, height, width, scale) -> np.ndarray:
    """A small round speck (bubble, debris), well under the smallest target."""
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = max(1.0, rng.uniform(0.02, 0.035) * scale)
    return _soft_inside(np.hypot(yy - cy, xx - cx) - radius)


def _smooth_field(rng, height, width, cells: int = 4) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly enlarged."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    gy = np.linspace(0, cells, height, dtype=np.float32)
    gx = np.linspace(0, cells, width, dtype=np.float32)
    y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng, yy, xx, height, width) -> np.ndarray:
    """Pale tissue with slow illumination changes, RGB [3, H, W]."""
    base = np.array([0.86, 0.68, 0.74], np.float32) + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    light = 0.08 * _smooth_field(rng, height, width)
    return base[:, None, None] + light[None]


def _lesion_colour(rng, height, width) -> np.ndarray:
    """One dark, mottled colour per image, shared by targets and distractors, RGB [3, H, W]."""
    colour = np.array([0.45, 0.26, 0.50], np.float32) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    mottle = 0.06 * _smooth_field(rng, height, width, cells=max(4, min(height, width) // 8))
    return colour[:, None, None] + mottle[None]
