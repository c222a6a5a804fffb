"""`medqk compare`: several backends on one labelled dataset, each scored against the ground truth
(the paper's metrics) and against a reference backend (mask Dice and pixel agreement).

Both are computed on label maps (``pipeline.predicted_labels``), whatever the network ends in: a
sigmoid (0.5), logits (0) or a softmax over K classes (the most likely class). Against the ground
truth the metrics are the foreground's: label 1 for one output channel or two classes; for K > 2
classes the mean over the foreground classes present in the ground truth, whose masks hold the
class index c as c / (K - 1) of the file's full scale (as ``medqk run --out`` writes them).

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
    metrics: dict[str, float]          #: the paper's metrics against the ground truth's foreground, mean over images
    dice_vs_reference: float           #: Dice of this backend's foreground against the reference backend's
    pixels_vs_reference: float         #: share of pixels given the same label as by the reference backend
    seconds_per_image: float


def dataset_arrays(dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, images float32 [N, C, H, W], masks float32 [N, 1, H, W]) of a SegmentationDataset."""
    pairs = [dataset[i] for i in console.progress(range(len(dataset)), desc="load images", unit="image")]
    return list(dataset.names), np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs])


def truth_labels(masks: np.ndarray, classes: int) -> np.ndarray:
    """int64 [N, H, W] class labels of ground-truth masks [N, 1, H, W] in [0, 1] for a network of
    ``classes`` output classes (a single channel counts as two): the mask's foreground at 0.5, or
    for K > 2 classes the index c stored as c / (K - 1) of full scale."""
    if classes <= 2:
        return (masks[:, 0] >= 0.5).astype(np.int64)
    return np.rint(masks[:, 0] * (classes - 1)).astype(np.int64)


def scored_classes(truth: np.ndarray, classes: int) -> list[int]:
    """The foreground classes the metrics average over: class 1 for a binary network (scored even
    where the ground truth has none), else every foreground class present in the ground truth."""
    return [1] if classes <= 2 else [int(c) for c in np.unique(truth) if c != 0]


def foreground_metrics(labels: np.ndarray, truth: np.ndarray, foreground: list[int]) -> dict[str, float]:
    """The paper's metrics of label maps against the ground truth's, per class c in ``foreground``
    (c against the rest, mean over images), then averaged over the classes."""
    import torch

    from medqk.metrics import METRIC_NAMES, image_metrics, mean_metrics

    def binary(maps: np.ndarray, c: int):
        return torch.from_numpy((maps == c).astype(np.float32)[:, None])

    per_class = [mean_metrics(image_metrics(binary(labels, c), binary(truth, c))) for c in foreground]
    return {name: float(np.mean([m[name] for m in per_class])) if per_class else float("nan") for name in METRIC_NAMES}


def foreground_description(foreground: list[int], classes: int) -> str:
    if classes <= 2:
        return "foreground = label 1"
    return f"mean over the {len(foreground)} foreground classes in the ground truth ({', '.join(map(str, foreground))}) of {classes}"


def compare_backends(handle, images: np.ndarray, masks: np.ndarray, backends: list[str],
                     batch_size: int = 8) -> tuple[list[BackendScore], str]:
    """Run every backend on ``images`` in batches; score its label maps against ``masks`` and
    ``backends[0]``'s. Returns the scores and what the metrics' foreground is."""
    from medqk.convert.neurons import output_activation
    from medqk.convert.pipeline import label_agreement, predicted_labels
    from medqk.deploy.backends import BACKENDS

    activation = output_activation(handle.converted.int_graph)
    labels, seconds = {}, {}
    for i, name in enumerate(backends):
        chunks, total = [], 0.0
        for start in console.progress(range(0, len(images), batch_size), desc=f"{name} ({i + 1}/{len(backends)})", unit="batch"):
            result = BACKENDS[name](handle, images[start:start + batch_size])
            chunks.append(predicted_labels(result.probabilities, activation))
            total += result.seconds
        labels[name], seconds[name] = np.concatenate(chunks), total
    classes = max(2, int(handle.converted.int_graph.output.tensor.shape[0]))
    truth = truth_labels(masks, classes)
    foreground = scored_classes(truth, classes)
    reference = labels[backends[0]]
    scores = []
    for name in backends:
        agreement = label_agreement(labels[name], reference)
        scores.append(BackendScore(name, foreground_metrics(labels[name], truth, foreground), agreement["dice"],
                                   agreement["pixel_agreement"], seconds[name] / len(images)))
    return scores, foreground_description(foreground, classes)


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
                        f"also: lava (fast models, one image at a time)); choices: {', '.join(sorted(BACKENDS))}")
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
    scores, foreground = compare_backends(handle, images, masks, args.backends, args.batch_size)
    console.info(f"metrics against the ground truth: {foreground}")
    console.info(score_table(scores, args.backends[0]))
    if args.json:
        record = {"model": str(args.model) if args.model else "embedded default", "data": args.data, "share": share, "images": names,
                  "reference": args.backends[0], "foreground": foreground, "backends": [dataclasses.asdict(s) for s in scores]}
        write_files({args.json: lambda path: path.write_text(json.dumps(record, indent=2) + "\n")})
        console.info(f"wrote {args.json}")
    return 0
