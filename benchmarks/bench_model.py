"""MedQKFormer() (published widths) on this machine: forward latency at 256x256, batch 1 and 8.
The training step is bench_train.py's ``train_step``."""
from __future__ import annotations

import time

import torch

FORWARD_REPEATS = 3


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: the first call builds kernels and allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_forward() -> dict:
    """Inference latency of MedQKFormer() at 256x256 (eval mode, no autograd)."""
    from medqk import MedQKFormer

    torch.manual_seed(0)
    model = MedQKFormer().eval()
    results = {}
    for batch in (1, 8):
        x = torch.rand(batch, 3, 256, 256)
        with torch.no_grad():
            seconds = median_seconds(lambda: model(x), FORWARD_REPEATS)
        print(f"forward 256x256 batch {batch}: {seconds * 1000:.0f} ms ({seconds * 1000 / batch:.0f} ms per image)")
        results[f"forward_b{batch}_s"] = seconds
    return results


BENCHMARKS = {"forward": bench_forward}
