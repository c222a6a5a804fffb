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


def exact_int(kernel, x: np.ndarray, w: np.ndarray, *args, bound_terms: int, **kwargs) -> np.ndarray:
    """Run a linear ``kernel`` on integer arrays exactly, through float64 BLAS.

    numpy has no BLAS for integers (its int64 matmul is ~100x slower); float64 holds every integer
    below 2**53 exactly (float32 below 2**24), so when ``max|x| * max|w| * bound_terms`` (the
    largest possible partial sum) stays below that bound the float result *is* the integer result,
    whatever the summation order. Refuses beyond 2**53.
    """
    peak = int(np.max(np.abs(x), initial=0)) * int(np.max(np.abs(w), initial=0)) * bound_terms
    if peak >= FLOAT64_EXACT:
        raise OverflowError(f"integer kernel {kernel.__name__}: partial sums up to {peak} exceed 2^53")
    # float32 holds every integer below 2**24 exactly: twice the speed for spike-fed layers
    dtype = np.float32 if peak < FLOAT32_EXACT else np.float64
    out = kernel(x.astype(dtype), w.astype(dtype), *args, **kwargs)
    return np.rint(out).astype(np.int64)
