"""`medqk compare`: several backends on one labelled dataset, each scored against the ground truth
(the paper's metrics) and against a reference backend (mask Dice and pixel agreement).

The question it answers is the one a deployment raises: what does running the network as integers,
in onnxruntime or in Lava, cost in accuracy on *my* images? A spiking network's integer masks
differ from the float model's at the margins (README, Known limits); this puts the accuracy of each
next to the other.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from medqk import console
from medqk.errors import InputError

DEFAULT_BACKENDS = ("torch", "ir", "ir-int", "onnx", "onnx-int")


@dataclasses.dataclass
class BackendScore:
    backend: str
    metrics: dict[str, float]          #: the paper's metrics against the ground truth, mean over images
    dice_vs_reference: float           #: Dice of this backend's masks against the reference backend's
    pixels_vs_reference: float         #: pixel agreement of the same
    seconds_per_image: float


def dataset_arrays(dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, images float32 [N, C, H, W], masks float32 [N, 1, H, W]) of a SegmentationDataset."""
    pairs = [dataset[i] for i in console.progress(range(len(dataset)), desc="load images", unit="image")]
    return list(dataset.names), np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs])


def compare_backends(handle, images: np.ndarray, masks: np.ndarray, backends: list[str],
                     batch_size: int = 8) -> list[BackendScore]:
    """Run every backend on ``images`` in batches; score against ``masks`` and ``backends[0]``."""
    import torch

    from medqk.convert.pipeline import mask_agreement
    from medqk.deploy.backends import BACKENDS
    from medqk.metrics import image_metrics, mean_metrics

    probabilities, seconds = {}, {}
    for i, name in enumerate(backends):
        chunks, total = [], 0.0
        for start in console.progress(range(0, len(images), batch_size), desc=f"{name} ({i + 1}/{len(backends)})", unit="batch"):
            result = BACKENDS[name](handle, images[start:start + batch_size])
            chunks.append(result.probabilities)
            total += result.seconds
        probabilities[name], seconds[name] = np.concatenate(chunks), total
    reference = probabilities[backends[0]]
    scores = []
    for name in backends:
        agreement = mask_agreement(probabilities[name], reference)
        metrics = mean_metrics(image_metrics(torch.from_numpy(probabilities[name]), torch.from_numpy(masks)))
        scores.append(BackendScore(name, metrics, agreement["dice"], agreement["pixel_agreement"], seconds[name] / len(images)))
    return scores


def score_table(scores: list[BackendScore], reference: str) -> str:
    headers = ["backend", "DSC", "mIoU", "precision", "recall", f"Dice vs {reference}", f"pixels vs {reference}", "s/image"]
    rows = [[s.backend, f"{s.metrics['DSC']:.4f}", f"{s.metrics['mIoU']:.4f}", f"{s.metrics['precision']:.4f}",
             f"{s.metrics['recall']:.4f}", f"{s.dice_vs_reference:.4f}", f"{s.pixels_vs_reference:.4f}",
             f"{s.seconds_per_image:.3f}"] for s in scores]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "-" * len(line(headers)), *map(line, rows)])


def register(subparsers) -> None:
    from medqk.data.layouts import LAYOUT_CHOICES
    from medqk.data.preprocess import PIXEL_DEPTH_RULE
    from medqk.deploy.backends import BACKENDS

    p = subparsers.add_parser(
        "compare", help="score several backends on a labelled dataset, against the ground truth and each other",
        description="Run MODEL on every image of a labelled dataset in each backend and print, per backend, the "
                    "paper's metrics against the ground truth (DSC, mIoU, precision, recall; all nine in --json) "
                    "and the Dice and pixel agreement of its masks with the first backend's. Shows what integer "
                    "arithmetic, onnxruntime or Lava cost in accuracy on your images.")
    p.add_argument("model", nargs="?", type=Path, help="checkpoint (.pt) or converted model directory; default: the embedded default model")
    p.add_argument("--data", default="synthetic",
                   help=f"dataset folder (any layout `medqk train` reads), or 'synthetic' (default); {PIXEL_DEPTH_RULE}")
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help="folder layout of --data (default: auto-detect)")
    p.add_argument("--split", default="all", choices=("all", "val"),
                   help="every image of the folder (default, as `medqk eval`), or only the validation part (as `medqk train` "
                        "holds it out with --val-fraction and --seed)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation where the layout has no split (default 0.2)")
    p.add_argument("--seed", type=int, default=41, help="seed of the split (default 41)")
    p.add_argument("--count", type=int, default=32, help="synthetic images (default %(default)s)")
    p.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=list(DEFAULT_BACKENDS), metavar="BACKEND",
                   help=f"backends to run, the first is the reference (default: {' '.join(DEFAULT_BACKENDS)}; "
                        f"also: lava, one image at a time); choices: {', '.join(sorted(BACKENDS))}")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="input size when MODEL is a checkpoint")
    p.add_argument("--batch-size", type=int, default=8, help="images per backend call (default %(default)s)")
    p.add_argument("--json", type=Path, metavar="F", help="also write every backend's nine metrics and agreement as JSON")
    p.set_defaults(func=compare_command)


def compare_command(args) -> int:
    from medqk.data.preprocess import Preprocessing
    from medqk.deploy.backends import ModelHandle
    from medqk.evaluate import evaluation_dataset
    from medqk.outputs import check_files, write_files

    if len(set(args.backends)) != len(args.backends):
        raise InputError(f"--backends lists a backend twice: {' '.join(args.backends)}")
    if args.count < 1 or args.batch_size < 1:
        raise InputError("--count and --batch-size must be at least 1")
    if args.data != "synthetic" and not Path(args.data).is_dir():
        raise InputError(f"{args.data}: no such dataset folder (give a folder of images and masks, or 'synthetic')")
    check_files({"--json": args.json})
    handle = ModelHandle(args.model, tuple(args.image_size) if args.image_size else None)
    prep = handle.preprocessing()
    prep = Preprocessing(size=tuple(handle.converted.image_size), channel_order=prep.channel_order, scale=prep.scale)
    dataset, share = evaluation_dataset(args.data, prep, args.layout, args.split, args.val_fraction, args.seed, args.count)
    if len(dataset) == 0:
        raise InputError(f"{args.data}: no images in the {args.split} split; try --split all")
    names, images, masks = dataset_arrays(dataset)
    console.info(f"comparing {len(args.backends)} backend(s) on {share} at {prep.size[0]}x{prep.size[1]}")
    scores = compare_backends(handle, images, masks, args.backends, args.batch_size)
    console.info(score_table(scores, args.backends[0]))
    if args.json:
        record = {"model": str(args.model) if args.model else "embedded default", "data": args.data, "share": share, "images": names,
                  "reference": args.backends[0], "backends": [dataclasses.asdict(s) for s in scores]}
        write_files({args.json: lambda path: path.write_text(json.dumps(record, indent=2) + "\n")})
        console.info(f"wrote {args.json}")
    return 0
