"""The graph's input: the preprocessed image, float [N, C, H, W].

Integer graphs take ``quantize_input(x, frac_bits)``: the only rounding of real input data, done
once on the host for every integer backend.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.fixed_point import STATE_BITS, STATE_MAX, STATE_MIN, saturate
from medqk.convert.op import Op
from medqk.errors import InputError


@dataclasses.dataclass(eq=False)
class Input(Op):
    type: ClassVar[str] = "input"
    arity: ClassVar[int | None] = 0

    shape: tuple[int, int, int] = (3, 256, 256)

    def out_shape(self, in_shapes):
        return tuple(self.shape)


def quantize_input(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """int64 fixed-point image: round_half_even(x * 2**frac_bits), saturated to 24 bits (the rounding
    of a value at the edge of the range); values beyond the range are refused, not clipped."""
    x = np.asarray(x, dtype=np.float64)
    check_input_range(x, frac_bits)
    return saturate(np.round(x * 2.0**frac_bits).astype(np.int64))


def check_input_range(x: np.ndarray, frac_bits: int) -> None:
    """InputError unless every value fits the integer graph's input format (24-bit fixed point
    with ``frac_bits`` fractional bits): a larger one would be clipped, and one beyond int64
    would wrap around into a garbage image."""
    low, high = STATE_MIN * 2.0**-frac_bits, STATE_MAX * 2.0**-frac_bits
    inside = (x >= low) & (x <= high)  # False for NaN too
    if not inside.all():
        raise InputError(f"the network input holds {int(inside.size - np.count_nonzero(inside))} value(s) outside the "
                         f"integer graph's input format, {STATE_BITS}-bit fixed point with {frac_bits} fractional bits "
                         f"({low:g} to {high:g}); found {np.nanmin(x):g} to {np.nanmax(x):g}; give an image, or a .npy "
                         "network input scaled as the model's preprocessing scales images (to [0, 1])")
