"""How closely can any integer graph follow the torch model's masks? Same run, for the tiny default
model and for a published-width model trained on MoNuSeg (tests/assets):

- the integer graph (8-bit weight mantissas, 24-bit states) against torch;
- torch against itself in float64 (the same weights, only float32's rounding removed);
- torch against itself with every weight multiplied by (1 + 2**-k * N(0, 1)), k = 9 (about an
  8-bit mantissa's rounding), 16 and 20, three seeds each: the float model's own sensitivity;
- the float graph with one of the integer graph's roundings put back at a time (weights, states,
  multipliers, upsampling weights, input): what each costs (``medqk convert`` reports both on the
  calibration images; ``convert/sensitivity.py`` computes them);
- on synthetic images with ground truth (the data the default model was trained on): Dice
  against the ground truth of torch's masks and of the integer graph's masks.

Default model: MoNuSeg validation crops (64x64) where ``../shared`` is present, and seeded synthetic
images. Trained checkpoint: the 6 MoNuSeg validation images at 256x256.
Prints one line per comparison, and the integer graph's disagreement over 8-bit noise's.

    .venv/bin/python benchmarks/bench_agreement.py
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

SIZE = 64
NOISE_EXPONENTS = (9, 16, 20)


def _float64_probabilities(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(images.astype(np.float64))).numpy()


def _compare(label: str, model, graph, qgraph, images: np.ndarray) -> dict:
    from medqk.convert.pipeline import int_probabilities, torch_probabilities
    from medqk.convert.sensitivity import SOURCES, attribution, label_score, noise_key, weight_noise_agreement

    score = label_score(torch_probabilities(model, images), "sigmoid")
    rows = {"integer graph (8-bit weights)": score(int_probabilities(qgraph, images)),
            "torch float64": score(_float64_probabilities(model, images))}
    for k in NOISE_EXPONENTS:  # three seeded draws each
        rows[f"torch, weights x (1 + {noise_key(k)} noise)"] = weight_noise_agreement(model, images, score, k)
    for source, agreement in attribution(graph, qgraph, images, score).items():
        rows[f"float graph, only {source}"] = agreement
    print(f"{label}: masks against torch float32's (Dice, pixel agreement)")
    for name, agreement in rows.items():
        print(f"  {name:38s} Dice {agreement['dice']:.4f}  pixels {agreement['pixel_agreement']:.4f}")
    int_gap = 1 - rows["integer graph (8-bit weights)"]["dice"]
    noise_gap = 1 - rows["torch, weights x (1 + 2^-9 noise)"]["dice"]
    print(f"  integer graph's Dice gap / 2^-9 weight noise's: {int_gap / noise_gap:.2f}" if noise_gap else "")
    print(f"  (sources: {'; '.join(f'{k}: {v}' for k, v in SOURCES.items())})")
    return rows


def bench_agreement() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import MONUSEG_VAL, monuseg_crops

    from medqk.checkpoint import load_checkpoint
    from medqk.convert.pipeline import float_graph_of, int_probabilities, mask_agreement, torch_probabilities
    from medqk.convert.quantize import quantize
    from medqk.data import synthetic_batch
    from medqk.defaults import default_calibration_images, default_checkpoint_path

    model = load_checkpoint(default_checkpoint_path())
    graph = float_graph_of(model, (SIZE, SIZE))
    qgraph, _ = quantize(graph, default_calibration_images(4, SIZE))
    results = {}
    if (MONUSEG_VAL / "img").is_dir():
        results["monuseg"] = _compare(f"MoNuSeg val crops, 6 x {SIZE}x{SIZE}", model, graph, qgraph, monuseg_crops(SIZE, 6))
        results["monuseg_trained"] = _trained_checkpoint()
    images, masks = synthetic_batch(48, SIZE, seed=1234)
    results["synthetic"] = _compare(f"synthetic images, 48 x {SIZE}x{SIZE}", model, graph, qgraph, images)
    torch_dice = mask_agreement(torch_probabilities(model, images), masks)["dice"]
    int_dice = mask_agreement(int_probabilities(qgraph, images), masks)["dice"]
    print(f"against the ground truth (synthetic): torch Dice {torch_dice:.4f}, integer graph Dice {int_dice:.4f} "
          f"(difference {int_dice - torch_dice:+.4f})")
    results["ground_truth"] = {"torch_dice": torch_dice, "int_dice": int_dice}
    return results


def _trained_checkpoint() -> dict:
    """The same comparisons for MedQKFormer at the published widths trained on MoNuSeg
    (tests/assets/monuseg-published.pt), on the 6 validation images at its 256x256 input."""
    from support import monuseg_trained

    from medqk.convert.pipeline import int_probabilities, mask_agreement

    m = monuseg_trained()
    size = m.images.shape[2]
    rows = _compare(f"MoNuSeg val, 6 x {size}x{size}, published widths trained on MoNuSeg", m.model, m.graph, m.qgraph, m.images)
    torch_dice = mask_agreement(m.torch_probabilities, m.masks)["dice"]
    int_dice = mask_agreement(int_probabilities(m.qgraph, m.images), m.masks)["dice"]
    print(f"  against the ground truth: torch Dice {torch_dice:.4f}, integer graph Dice {int_dice:.4f}")
    return {**rows, "ground_truth": {"torch_dice": torch_dice, "int_dice": int_dice}}


BENCHMARKS = {"agreement": bench_agreement}

if __name__ == "__main__":
    bench_agreement()
