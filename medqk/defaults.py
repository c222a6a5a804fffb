"""The embedded default: a small MedQKFormer every medqk command can work on out of the box.

``medqk/assets/default.pt`` is a medqk checkpoint of MedQKFormer with widths (8, 16, 32, 64) and
D = 4, trained with the paper's recipe on the synthetic generator at 64x64 (seed 41, 256 training
images, no augmentation: the generator already varies shape, colour and position) on one CPU
thread until its validation DSC reached ``DEFAULT_TARGET_DICE`` or ``DEFAULT_MAX_EPOCHS`` passed,
then fine-tuned through its integer graph for 5 epochs (``medqk finetune``), so that the model
every command and the demo start from is the one the chip computes (its checkpoint records the
integer graph's state formats). Rebuild it with::

    python -m medqk.defaults --rebuild --out /tmp/default-float.pt
    OMP_NUM_THREADS=1 medqk finetune /tmp/default-float.pt --data synthetic --synthetic-count 256 \
        --no-crop --no-augment --epochs 5 -o medqk/assets/default.pt

One thread, because the thread count changes the order of floating-point sums and this training is
chaotic: with two threads the same seed takes another path. Another CPU model or torch version can
still do so; the rebuilt model is then similar, not identical.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from medqk.data import Preprocessing, SyntheticSample, synthetic_batch, synthetic_sample

DEFAULT_WIDTHS = (8, 16, 32, 64)
DEFAULT_SIZE = 64
DEFAULT_SEED = 41
DEFAULT_TARGET_DICE = 0.85
DEFAULT_MAX_EPOCHS = 40
#: Synthetic streams for demos and calibration, apart from the training (41) and validation (42) ones.
DEMO_STREAM = 7
CALIBRATION_STREAM = 8


def default_checkpoint_path() -> Path:
    return Path(__file__).resolve().parent / "assets" / "default.pt"


def default_image(size: int | tuple[int, int] = DEFAULT_SIZE, index: int = 0) -> SyntheticSample:
    """A seeded synthetic image (network input, BGR [3, H, W]) with its mask, for demos and tests."""
    return synthetic_sample(index, size, DEMO_STREAM)


def default_calibration_images(n: int = 16, size: int | tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """``n`` seeded synthetic network inputs [n, 3, H, W], e.g. to calibrate a conversion."""
    return synthetic_batch(n, size, CALIBRATION_STREAM)[0]


def default_training_options(out: Path):
    """The training that made the default model (run it on one thread: see the module's notes)."""
    from medqk.train import TrainOptions

    return TrainOptions(data="synthetic", image_size=DEFAULT_SIZE, widths=DEFAULT_WIDTHS, epochs=DEFAULT_MAX_EPOCHS,
                        seed=DEFAULT_SEED, device="cpu", target_dice=DEFAULT_TARGET_DICE, augment=False, out=out,
                        recipe="paper")


def build_default(out_path: str | Path | None = None) -> Path:
    """Train the default model from scratch and write its best checkpoint to ``out_path``."""
    from medqk.checkpoint import load_checkpoint_payload, save_checkpoint
    from medqk.train import train

    out_path = Path(out_path or default_checkpoint_path())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            result = train(default_training_options(Path(run_dir) / "run"))
        finally:
            torch.set_num_threads(threads)
        model, metadata = load_checkpoint_payload(result.best_path)
        training = {**metadata["training"], "built_by": "python -m medqk.defaults --rebuild"}
        save_checkpoint(out_path, model, Preprocessing.from_dict(metadata["preprocessing"]), training)
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medqk.defaults", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="train the default model again and overwrite the asset")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of medqk/assets/default.pt")
    args = parser.parse_args(argv)
    if not args.rebuild:
        print(default_checkpoint_path())
        return 0
    print(f"wrote {build_default(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
