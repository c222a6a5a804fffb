"""One training step of the recipe (MedQKFormer(), batch 8 at 256x256: forward, BCE + Dice,
backward, Adam) against the forward pass of the same batch, in the same run.

The ratio train step / forward is what to compare across machines and loads: both move together
with the CPU and its load, so a ratio that grows means the training step itself became slower.
"""
from __future__ import annotations

import time

import torch

from bench_model import median_seconds  # benchmarks/ is on sys.path: run as a script or by run.py

REPEATS = 3
BATCH = 8
SIZE = 256


def bench_train_step() -> dict:
    """A train step of MedQKFormer() at batch 8, 256x256, and its ratio to the forward pass."""
    from medqk import MedQKFormer
    from medqk.metrics import segmentation_loss

    torch.manual_seed(0)
    model = MedQKFormer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    masks = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.7).float()

    def forward():
        with torch.no_grad():
            model(images)

    def step():
        loss = segmentation_loss(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.eval()
    forward_s = median_seconds(forward, REPEATS)
    model.train()
    step_s = median_seconds(step, REPEATS)
    ratio = step_s / forward_s
    print(f"forward {SIZE}x{SIZE} batch {BATCH}: {forward_s:.2f} s; train step: {step_s:.2f} s "
          f"({step_s / BATCH * 1000:.0f} ms per image); train step / forward = {ratio:.2f}")
    return {"forward_b8_s": forward_s, "train_step_b8_s": step_s, "train_step_over_forward": ratio}


BENCHMARKS = {"train_step": bench_train_step}
