"""Shared fixtures: the project's ../shared folder (optional), a small model, and the MoNuSeg-trained
checkpoint converted once for every test that compares backends with it (helpers: support.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import support

from medqk import MedQKFormer

SHARED = Path(__file__).parents[1].parent / "shared"
MONUSEG = SHARED / "data" / "monuseg"


@pytest.fixture
def shared_data() -> Path:
    """The MoNuSeg sample of ../shared; the test skips cleanly where it is absent."""
    if not MONUSEG.is_dir():
        pytest.skip(f"{MONUSEG} is absent (shared data)")
    return MONUSEG


@pytest.fixture
def small_model() -> MedQKFormer:
    """A small-width MedQKFormer in eval mode whose BatchNorm statistics are not the defaults,
    so that loading must really restore them."""
    return support.small_model()


@pytest.fixture(scope="session")
def monuseg_trained():
    """The published-width MoNuSeg checkpoint with its float and integer graphs (calibrated on two
    training images), the 6 validation images and masks at its 256x256 input, and torch's output."""
    import types

    import numpy as np

    from medqk.checkpoint import load_checkpoint_payload
    from medqk.convert.pipeline import float_graph_of, torch_probabilities
    from medqk.convert.quantize import quantize
    from medqk.data import PairDataset, Preprocessing, load_split

    if not (MONUSEG / "val" / "img").is_dir():
        pytest.skip(f"{MONUSEG} is absent (shared data)")
    model, meta = load_checkpoint_payload(support.MONUSEG_CHECKPOINT)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    train = PairDataset(load_split(str(MONUSEG), "imglabel", 0.2, 41).train, prep)
    calibration = np.stack([train[i][0].numpy() for i in range(2)])
    graph = float_graph_of(model, prep.size)
    qgraph, _ = quantize(graph, calibration)
    images, masks = support.monuseg_val_images(prep)
    return types.SimpleNamespace(model=model, graph=graph, qgraph=qgraph, images=images, masks=masks,
                                 torch_probabilities=torch_probabilities(model, images))
