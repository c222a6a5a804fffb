"""Numpy kernels shared by the interpreters: convolution, transposed convolution, separable
upsampling, pooling (NCHW). The integer interpreter calls them through ``exact_int`` (below)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: float64 represents every integer of magnitude below this exactly
FLOAT64_EXACT = 2**53


def conv2d(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), groups: int = 1) -> np.ndarray:
    """x [N, C, H, W], w [O, C/groups, kh, kw] -> [N, O, Ho, Wo] (cross-correlation, zero padding)."""
    (sh, sw), (ph, pw) = stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # [N, C, Ho, Wo, kh, kw]
    n, c, ho, wo = win.shape[:4]
    o = w.shape[0]
    if groups == 1:
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
        out = cols @ w.reshape(o, -1).T
        return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    cg, og = c // groups, o // groups
    win = win.reshape(n, groups, cg, ho, wo, kh, kw)
    wg = w.reshape(groups, og, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return out.reshape(n, o, ho, wo)


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
    """``uh @ x[n, c] @ uw.T`` for every image and channel."""
    return np.matmul(np.matmul(uh, x), uw.T)


def maxpool2d(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    win = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return win.max(axis=(4, 5))


def exact_int(kernel, x: np.ndarray, w: np.ndarray, *args, bound_terms: int, **kwargs) -> np.ndarray:
    """Run a linear ``kernel`` on integer arrays exactly, through float64 BLAS.

    numpy has no BLAS for integers (its int64 matmul is ~100x slower); float64 holds every integer
    below 2**53 exactly, so when ``max|x| * max|w| * bound_terms`` (the largest possible partial
    sum) stays below 2**53 the float64 result *is* the integer result. Refuses otherwise.
    """
    peak = int(np.max(np.abs(x), initial=0)) * int(np.max(np.abs(w), initial=0)) * bound_terms
    if peak >= FLOAT64_EXACT:
        raise OverflowError(f"integer kernel {kernel.__name__}: partial sums up to {peak} exceed 2^53")
    out = kernel(x.astype(np.float64), w.astype(np.float64), *args, **kwargs)
    return np.rint(out).astype(np.int64)
