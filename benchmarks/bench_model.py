"""MedQKFormer() (published widths) on this machine: forward latency at 256x256, batch 1 and 8,
and one training step (forward, backward, Adam) at the recipe's batch 8."""
from __future__ import annotations

import time

import torch

FORWARD_REPEATS = 3
TRAIN_STEP_REPEATS = 2


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


def bench_train_step() -> dict:
    """One optimisation step of the recipe: batch 8 at 256x256, BCE + Dice, Adam."""
    from medqk import MedQKFormer
    from medqk.metrics import segmentation_loss

    torch.manual_seed(0)
    model = MedQKFormer().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(8, 3, 256, 256)
    masks = (torch.rand(8, 1, 256, 256) > 0.7).float()

    def step():
        loss = segmentation_loss(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_seconds(step, TRAIN_STEP_REPEATS)
    print(f"train step 256x256 batch 8: {seconds:.2f} s ({seconds / 8 * 1000:.0f} ms per image)")
    return {"train_step_b8_s": seconds}


BENCHMARKS = {"forward": bench_forward, "train_step": bench_train_step}
