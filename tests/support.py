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


def fit_batchnorm(module: torch.nn.Module, images: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """BatchNorm statistics measured on ``images`` and random affine parameters that keep about a
    third of the neurons firing (as after training; untrained statistics silence binary neurons)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
    module.train()
    with torch.no_grad():
        module(torch.from_numpy(images))
    for bn in bns:
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) * 0.8 + 0.8)
        bn.bias.data.copy_(torch.rand(bn.num_features, generator=g) * 0.6 + 0.2)
    return module.eval()


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


def monuseg_images(prep, split: str = "val", count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The MoNuSeg images and masks of ../shared (``split``: its 24 "train" or 6 "val" images, the
    first ``count``), preprocessed by ``prep``: float32 [N, 3, H, W] and [N, 1, H, W]."""
    from medqk.data import PairDataset, load_split

    pairs = load_split(str(MONUSEG_VAL.parent), "imglabel", 0.2, 41)
    dataset = PairDataset(pairs.val if split == "val" else pairs.train, prep)
    samples = [dataset[i] for i in range(len(dataset) if count is None else count)]
    return np.stack([s[0].numpy() for s in samples]), np.stack([s[1].numpy() for s in samples])


def monuseg_trained():
    """The published-width MoNuSeg checkpoint with its float and integer graphs (calibrated on two
    training images), the 6 validation images and masks at its 256x256 input, and torch's output."""
    import types

    from medqk.checkpoint import load_checkpoint_payload
    from medqk.convert.pipeline import float_graph_of, torch_probabilities
    from medqk.convert.quantize import quantize
    from medqk.data import Preprocessing

    model, meta = load_checkpoint_payload(MONUSEG_CHECKPOINT)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    graph = float_graph_of(model, prep.size)
    qgraph, _ = quantize(graph, monuseg_images(prep, "train", 2)[0])
    images, masks = monuseg_images(prep)
    return types.SimpleNamespace(model=model, graph=graph, qgraph=qgraph, images=images, masks=masks,
                                 torch_probabilities=torch_probabilities(model, images))


def random_images(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, size, size)).astype(np.float32)
