"""Integer-aware fine-tuning against float training: one step of each on the same batch, in the
same run (MedQKFormer(), batch 8 of 128x128 crops, as ``medqk finetune`` trains by default).

A fine-tuning step runs the integer graph's forward pass (``finetune.IntegerAwareNetwork``:
folded and rounded weights recomputed from the module, every state rounded) and its backward;
a float step is the plain training step. Their ratio is the cost of fine-tuning per epoch
(the issue's budget: at most 2x).
"""
from __future__ import annotations

import numpy as np
import torch

from bench_model import median_seconds  # benchmarks/ is on sys.path: run as a script or by run.py

REPEATS = 3
BATCH = 8
CROP = 128


def bench_finetune_step() -> dict:
    """A fine-tuning step through the integer graph against a float training step, batch 8 of 128x128."""
    from medqk import MedQKFormer
    from medqk.convert import passes
    from medqk.convert.finetune import IntegerAwareNetwork
    from medqk.convert.quantize import calibrate, quantized_graph
    from medqk.convert.trace import trace
    from medqk.metrics import segmentation_loss

    torch.manual_seed(0)
    model = MedQKFormer().eval()
    images = torch.rand(BATCH, 3, CROP, CROP)
    masks = (torch.rand(BATCH, 1, CROP, CROP) > 0.7).float()
    fgraph = passes.prepare(trace(model, (3, CROP, CROP)))
    network = IntegerAwareNetwork(model, quantized_graph(fgraph, calibrate(fgraph, images[:2].numpy().astype(np.float32))))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(forward):
        def run():
            loss = segmentation_loss(forward(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    model.train()
    float_s = median_seconds(step(model), REPEATS)
    model.eval()
    finetune_s = median_seconds(step(network), REPEATS)
    ratio = finetune_s / float_s
    print(f"batch {BATCH} of {CROP}x{CROP}: float train step {float_s:.2f} s; fine-tuning step {finetune_s:.2f} s; "
          f"fine-tuning / float = {ratio:.2f}")
    return {"float_step_s": float_s, "finetune_step_s": finetune_s, "finetune_over_float": ratio}


BENCHMARKS = {"finetune_step": bench_finetune_step}
