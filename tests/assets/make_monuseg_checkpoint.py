"""How tests/assets/monuseg-published.pt was made, and how to make it again.

MedQKFormer at the published widths (32-64-128-256, D = 4), trained with the paper's recipe on the
24 MoNuSeg training images of ../shared at 256x256 for 8 epochs (seed 41, CPU; the best epoch, 3,
has validation DSC 0.488 — far from the paper's 200 epochs, but a trained network on real
images, which is what the IR and Lava tests need). The convolution weights are then stored as
float16 to halve the file (15 MB); they load as float32, so the checkpoint *is* those weights.

    .venv/bin/python tests/assets/make_monuseg_checkpoint.py      # about 35 min on 2 CPU cores

CPU training is seeded, but thread scheduling may change the last bits; the tests hold any such
checkpoint to the issue's targets, and the figures in their docstrings are this file's.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MONUSEG = HERE.parents[1].parent / "shared" / "data" / "monuseg"
TARGET = HERE / "monuseg-published.pt"


def half_precision_convolutions(source: Path, target: Path) -> None:
    payload = torch.load(source, map_location="cpu", weights_only=False)
    payload["state_dict"] = {name: value.half() if value.is_floating_point() and value.dim() == 4 else value
                             for name, value in payload["state_dict"].items()}
    payload["training"] = {**payload.get("training", {}),
                           "note": "convolution weights stored as float16 (half the file); loaded as float32"}
    torch.save(payload, target)


def main() -> int:
    with tempfile.TemporaryDirectory() as run:
        subprocess.run([sys.executable, "-m", "medqk.cli", "train", "--data", str(MONUSEG), "--layout", "imglabel",
                        "--epochs", "8", "--seed", "41", "--device", "cpu", "--out", run], check=True)
        half_precision_convolutions(Path(run) / "best.pt", TARGET)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
