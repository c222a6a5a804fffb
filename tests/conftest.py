"""Shared fixtures: the project's ../shared folder (optional) and small models and files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medqk import MedQKFormer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
MONUSEG = SHARED / "data" / "monuseg"
needs_monuseg = pytest.mark.skipif(not MONUSEG.is_dir(), reason=f"{MONUSEG} is absent (shared data)")

SMALL_WIDTHS = (8, 16, 32, 64)


@pytest.fixture
def shared_data() -> Path:
    """The MoNuSeg sample of ../shared; the test skips cleanly where it is absent."""
    if not MONUSEG.is_dir():
        pytest.skip(f"{MONUSEG} is absent (shared data)")
    return MONUSEG


@pytest.fixture
def small_model() -> MedQKFormer:
    """A small-width MedQKFormer in eval mode with BatchNorm statistics that are not the
    defaults, so that loading must really restore them."""
    torch.manual_seed(0)
    model = MedQKFormer(widths=SMALL_WIDTHS)
    randomise_batchnorm(model)
    return model.eval()


def randomise_batchnorm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
            module.num_batches_tracked.fill_(7)
