"""Numpy kernels shared by the interpreters: convolution, transposed convolution, separable
upsampling, pooling (NCHW). The integer interpreter calls them through ``exact_int`` (below)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: float64 (float32) represents every integer of magnitude below this exactly
FLOAT64_EXACT = 2**53
FLOAT32_EXACT = 2**24


def conv2d(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), groups: int = 1) -> np.ndarray:
    """x [N, C, H, W], w [O, C/groups, kh, kw] -> [N, O, Ho, Wo] (cross-correlation, zero padding),
    in x's float dtype. torch's CPU convolution is the engine: 3x numpy's im2col here."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        y = F.conv2d(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w, dtype=x.dtype)),
                     stride=tuple(stride), padding=tuple(padding), groups=groups)
    return y.numpy()


def conv_transpose2d(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0)) -> np.ndarray:
    """x [N, I, H, W], w [I, O, kh, kw] -> [N, O, Ho, Wo]."""
    (sh, sw), (ph, pw) = stride, padding
    n, i, h, wd = x.shape
    o, kh, kw = w.shape[1:]
    full = np.zeros((n, o, (h - 1) * sh + kh, (wd - 1) * sw + kw), dtype=np.result_type(x, w))
    contrib = np.einsum("nihw,iokl->nohwkl", x, w, optimize=True)
    for a in range(kh):
        for b in range(kw):
            full[:, :, a:a + (h - 1) * sh + 1:sh, b:b + (wd - 1) * sw + 1:sw] += contrib[..., a, b]
    return full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]


def separable(x: np.ndarray, uh: np.ndarray, uw: np.ndarray) -> np.ndarray:
    """``uh @ x[n, c] @ uw.T`` for every image and channel, as two large matrix products (a
    broadcast ``uh @ x`` would run one small product per channel)."""
    n, c, h, w = x.shape
    rows = (x.reshape(n * c * h, w) @ uw.T).reshape(n, c, h, -1)            # along W
    cols = rows.transpose(0, 1, 3, 2).reshape(-1, h) @ uh.T                 # along H
    return cols.reshape(n, c, uw.shape[0], uh.shape[0]).transpose(0, 1, 3, 2)


def maxpool2d(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return win.max(axis=(4, 5))


def largest_weight_sum(w: np.ndarray) -> int:
    """max over outputs of sum |w| feeding that output (w [O, ...]): the ``weight_sum`` of a
    convolution's bound below."""
    return int(np.abs(w).reshape(len(w), -1).sum(axis=1).max(initial=0))


def float32_plane_bits(peak: int, weight_sum: int) -> int | None:
    """Bits per digit plane that keep a float32 linear kernel exact (None: no split needed).

    A partial sum is bounded by ``max|x| * max_o sum|w_o|`` (``weight_sum``: the largest sum of
    weight magnitudes that feeds one output); float32 holds it exactly while that bound is at most
    2**24. Returns 0 when not even one-bit planes fit."""
    if peak * weight_sum <= FLOAT32_EXACT:
        return None
    return max((bits for bits in range(1, 24) if ((1 << bits) - 1) * weight_sum <= FLOAT32_EXACT), default=0)


#: Lava's fixed-point Conv keeps its dendritic sum in 24 bits and wraps it (``signed_clamp``: modulo
#: 2**24 into [-2**23, 2**23)), as Loihi 2's 24-bit dendritic accumulators would; a sum of at most
#: this magnitude never wraps.
DENDRITE_MAX = 2**23 - 1


def dendritic_plane_bits(input_peak: int, weight_sum: int) -> int | None:
    """Digit-plane width that keeps every dendritic sum of a synapse within ``DENDRITE_MAX``.

    A sum is bounded by ``input_peak * weight_sum`` (``weight_sum``: the largest sum of weight
    magnitudes that feeds one output). None: the whole input fits (spike maps 0..D do, for any
    layer below 2**21 in summed weight magnitude). Otherwise the input travels as digit planes of
    the returned width (``digit_planes``), each summed on its own, and a plane of magnitude at most
    ``2**bits - 1`` keeps its sum within the bound. Raises OverflowError when not even one-bit
    planes fit (``weight_sum > DENDRITE_MAX``)."""
    if input_peak * weight_sum <= DENDRITE_MAX:
        return None
    bits = max((b for b in range(1, 24) if ((1 << b) - 1) * weight_sum <= DENDRITE_MAX), default=0)
    if bits == 0:
        raise OverflowError(f"summed weight magnitude {weight_sum} exceeds the 24-bit dendritic sum ({DENDRITE_MAX})")
    return bits


#: fewer bits per plane than this and float64 (one pass) is cheaper than float32 planes
MIN_PLANE_BITS = 4


def plane_count(bits: int, peak: int) -> int:
    """How many ``bits``-bit digit planes ``digit_planes`` needs for values of magnitude <= peak:
    the fewest whose top (signed) plane stays within ``2**bits - 1`` in magnitude."""
    mask = (1 << bits) - 1
    count = 1
    while (peak >> (bits * (count - 1))) + 1 > mask:
        count += 1
    return count


def digit_planes(x: np.ndarray, bits: int, peak: int, dtype=np.float32) -> np.ndarray:
    """Planes [P, *x.shape] (float32 unless ``dtype``) with ``x == sum_p planes[p] * 2**(bits * p)``
    for ``|x| <= peak``: the low planes are digits 0..2**bits - 1, the top one keeps the sign (shifts
    floor); every plane's magnitude is below 2**bits, so float32 holds them exactly."""
    mask = (1 << bits) - 1
    count = plane_count(bits, peak)
    planes = np.empty((count, *x.shape), dtype)
    rest = x.astype(np.int32 if x.dtype.itemsize <= 4 else np.int64)  # a copy: shifted in place below
    for p in range(count - 1):
        np.bitwise_and(rest, mask, out=planes[p], casting="unsafe")
        rest >>= bits
    planes[-1] = rest
    return planes


def exact_int(kernel, x: np.ndarray, w: np.ndarray, *args, weight_sum: int, **kwargs) -> np.ndarray:
    """Run a linear ``kernel`` on integer arrays exactly, through float BLAS; returns int32 where
    every output is below 2**24 by the bound below, else int64.

    numpy has no BLAS for integers (its int64 matmul is ~100x slower), but float32 holds every
    integer below 2**24 and float64 every integer below 2**53 exactly: when no partial sum can
    exceed that (``float32_plane_bits``), the float result *is* the integer result, whatever the
    summation order. Wide inputs (24-bit states) are split into digit planes that each fit float32,
    stacked along the batch axis into one call and recombined with shifts; float64 serves where
    planes would be too narrow. Refuses sums that neither can hold (beyond int64 for planes, 2**53
    for float64).
    """
    x = np.asarray(x)
    n = x.shape[0]
    peak = max(int(x.max(initial=0)), -int(x.min(initial=0)))
    bits = float32_plane_bits(peak, weight_sum)
    if bits is None:
        return kernel(x.astype(np.float32), np.asarray(w, np.float32), *args, **kwargs).astype(np.int32)
    if bits >= MIN_PLANE_BITS:
        if peak * weight_sum >= 2**63:
            raise OverflowError(f"integer kernel {kernel.__name__}: partial sums up to {peak * weight_sum} exceed int64")
        planes = digit_planes(x, bits, peak)
        out = kernel(planes.reshape(-1, *x.shape[1:]), np.asarray(w, np.float32), *args, **kwargs)
        out = out.reshape(len(planes), n, *out.shape[1:])
        total = out[-1].astype(np.int64)
        for p in range(len(planes) - 2, -1, -1):  # Horner: total * 2**bits + plane
            total <<= bits
            total += out[p].astype(np.int64)
        return total
    if peak * weight_sum >= FLOAT64_EXACT:
        raise OverflowError(f"integer kernel {kernel.__name__}: partial sums up to {peak * weight_sum} exceed 2^53")
    return kernel(x.astype(np.float64), np.asarray(w, np.float64), *args, **kwargs).astype(np.int64)
