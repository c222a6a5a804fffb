"""The graph's input: the preprocessed image, float [N, C, H, W].

Integer graphs take ``quantize_input(x, frac_bits)``: the only rounding of real input data, done
once on the host for every integer backend.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.fixed_point import saturate
from medqk.convert.op import Op


@dataclasses.dataclass(eq=False)
class Input(Op):
    type: ClassVar[str] = "input"
    arity: ClassVar[int | None] = 0

    shape: tuple[int, int, int] = (3, 256, 256)

    def out_shape(self, in_shapes):
        return tuple(self.shape)


def quantize_input(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """int64 fixed-point image: round_half_even(x * 2**frac_bits), saturated to 24 bits."""
    return saturate(np.round(np.asarray(x, dtype=np.float64) * 2.0**frac_bits).astype(np.int64))
