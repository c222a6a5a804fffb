"""Integer arithmetic shared by every integer backend (interpreter, ONNX, Lava).

These few functions *are* the rounding rules of medqk's integer graphs; every backend computes
exactly these, and its tests compare against them. Values are numpy int64 arrays.

- ``shift_round(v, k)``: divide by 2**k rounding half up (``floor((v + 2**(k-1)) / 2**k)``),
  or multiply by 2**-k when k < 0. The requantization of every fixed-point state.
- ``shift_round_half_even(v, k)``: divide by 2**k rounding half to even (``torch.round``'s tie
  rule), used by the NISF neuron so that it fires exactly as the float model does on ties.
- ``saturate(v, bits)``: clip to a signed ``bits``-bit range (Loihi 2 states are 24-bit).
"""
from __future__ import annotations

import numpy as np

#: Width of every real-valued state and graded-spike payload (Loihi 2 / Lava fixed-point models).
STATE_BITS = 24
#: the signed state range
STATE_MIN, STATE_MAX = -(1 << (STATE_BITS - 1)), (1 << (STATE_BITS - 1)) - 1
#: Weights are 8-bit signed mantissas with a shared power-of-two exponent per layer.
WEIGHT_BITS = 8


def shift_round(v: np.ndarray, k: int, offset=0, in_place: bool = False) -> np.ndarray:
    """``(v + offset) / 2**k`` rounded half up (k > 0); ``(v + offset) * 2**-k`` (k <= 0). Exact
    integer arithmetic in ``v``'s integer type (int64 for other input): the caller widens where
    ``v + offset + 2**k`` might not fit. ``offset`` may be an array that broadcasts (a bias);
    ``in_place`` reuses ``v``'s memory (for a temporary the caller owns)."""
    v = _integers(v)
    total = np.asarray(offset) + (1 << (k - 1)) if k > 0 else offset
    if in_place:
        v += total
        out = v
    else:
        out = v + total
    if k <= 0:
        out <<= -k
    else:
        out >>= k
    return out


def shift_round_half_even(v: np.ndarray, k: int) -> np.ndarray:
    """``v / 2**k`` rounded half to even (k > 0); ``v * 2**-k`` (k <= 0); in ``v``'s integer type.

    ``floor((v + 2**(k-1) - 1 + q0) / 2**k)`` with q0 the parity of ``floor(v / 2**k)``: a tie
    (remainder exactly 2**(k-1)) rounds up only from an odd quotient, any other remainder as usual."""
    v = _integers(v)
    if k <= 0:
        return v << -k
    return (v + ((1 << (k - 1)) - 1) + ((v >> k) & 1)) >> k


def _integers(v) -> np.ndarray:
    v = np.asarray(v)
    return v if v.dtype.kind in "iu" else v.astype(np.int64)


def saturate(v: np.ndarray, bits: int = STATE_BITS) -> np.ndarray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(v, lo, hi)


def saturated_count(v: np.ndarray, bits: int = STATE_BITS) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return int(np.count_nonzero((v < lo) | (v > hi)))


def quantize_mantissa(values: np.ndarray, bits: int = WEIGHT_BITS) -> tuple[np.ndarray, int]:
    """Signed ``bits``-bit mantissas m and one exponent e with ``values ~= m * 2**e``.

    The exponent is the smallest that keeps the largest magnitude inside the mantissa range, so
    the mantissas use the full range (Loihi's weight mantissa + shared weight exponent).
    """
    values = np.asarray(values, dtype=np.float64)
    limit = (1 << (bits - 1)) - 1
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0:
        return np.zeros(values.shape, dtype=np.int64), 0
    exponent = int(np.ceil(np.log2(peak / limit)))
    mantissa = np.round(values / 2.0**exponent)
    if np.max(np.abs(mantissa)) > limit:  # rounding pushed the peak over the edge
        exponent += 1
        mantissa = np.round(values / 2.0**exponent)
    return mantissa.astype(np.int64), exponent
