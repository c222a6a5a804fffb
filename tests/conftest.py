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
    """``support.monuseg_trained()``, made once per session."""
    if not (MONUSEG / "val" / "img").is_dir():
        pytest.skip(f"{MONUSEG} is absent (shared data)")
    return support.monuseg_trained()
