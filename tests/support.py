"""Plain helpers shared by the IR, backend and energy tests (small models, real image crops)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MONUSEG_VAL = SHARED / "data" / "monuseg" / "val"

needs_monuseg = pytest.mark.skipif(not (MONUSEG_VAL / "img").is_dir(), reason="../shared/data/monuseg is absent")

#: MedQKFormer at the published widths trained on the 24 MoNuSeg training images of ../shared
#: (tests/assets/make_monuseg_checkpoint.py says how), convolution weights stored as float16
MONUSEG_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "monuseg-published.pt"

SMALL_WIDTHS = (8, 16, 32, 64)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def small_model(seed: int = 0, **config):
    from medqk import MedQKFormer

    torch.manual_seed(seed)
    return randomize_batchnorm(MedQKFormer(widths=config.pop("widths", SMALL_WIDTHS), **config), seed)


def monuseg_crops(size: int = 64, count: int = 6, offset: int = 300) -> np.ndarray:
    """float32 [N, 3, size, size] BGR crops in [0, 1] of the MoNuSeg validation images."""
    from PIL import Image

    files = sorted((MONUSEG_VAL / "img").glob("*.png"))[:count]
    crops = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
        crops.append(rgb[offset:offset + size, offset:offset + size, ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops))


def monuseg_val_images(prep) -> tuple[np.ndarray, np.ndarray]:
    """The 6 MoNuSeg validation images and masks of ../shared, preprocessed by ``prep``:
    float32 [6, 3, H, W] and [6, 1, H, W]."""
    from medqk.data import PairDataset, load_split

    val = PairDataset(load_split(str(MONUSEG_VAL.parent), "imglabel", 0.2, 41).val, prep)
    samples = [val[i] for i in range(len(val))]
    return np.stack([s[0].numpy() for s in samples]), np.stack([s[1].numpy() for s in samples])


def random_images(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, size, size)).astype(np.float32)
