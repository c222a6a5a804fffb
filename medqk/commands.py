"""``medqk train`` and ``medqk eval``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from medqk import console



def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    from medqk.data.layouts import LAYOUT_CHOICES

    parser.add_argument("--data", default="synthetic",
                        help="dataset folder, or 'synthetic' for the built-in generator (default)")
    parser.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES,
                        help="folder layout of --data (default: auto-detect)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share held out for validation where the layout has no split (default 0.2)")
    parser.add_argument("--seed", type=int, default=41, help="seed of the split, initialisation and augmentation (default 41)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="images per batch (per process) (default 8)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run (default auto: CUDA when present)")


def _register_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train MedQKFormer on a dataset or synthetic data",
        description="Train MedQKFormer (Adam, BCE + Dice on probabilities, ReduceLROnPlateau, early stopping on "
                    "val mIoU). Writes best.pt, last.pt, train.log, curves.png and metrics.json to --out. "
                    "Under torchrun, trains data-parallel (gloo on CPU, NCCL on GPU).",
    )
    _add_data_arguments(parser)
    parser.add_argument("--epochs", type=_positive_int, default=200, help="most epochs (default 200)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--image-size", type=_positive_int, default=256, help="square input size, a multiple of 16 (default 256)")
    parser.add_argument("--widths", type=_positive_int, nargs=4, default=(32, 64, 128, 256), metavar="W",
                        help="the four encoder widths (default 32 64 128 256, the paper's)")
    parser.add_argument("--levels", type=_positive_int, default=4, help="NISF levels D (default 4)")
    parser.add_argument("--channel-order", default="BGR", choices=("BGR", "RGB", "GRAY"),
                        help="channel order images are fed in (default BGR, as the release's OpenCV reads)")
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (default runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--patience", type=_positive_int, default=50,
                        help="stop after this many epochs without a better val mIoU (default 50)")
    parser.add_argument("--lr-patience", type=_positive_int, default=30,
                        help="ReduceLROnPlateau patience on the val loss (default 30)")
    parser.add_argument("--target-dice", type=float, default=None, help="stop as soon as val DSC reaches this")
    parser.add_argument("--freeze-bn-from", type=_positive_int, default=None, metavar="EPOCH",
                        help="from this epoch on, estimate BatchNorm statistics once over the training images and "
                             "train with them frozen, so training optimises the network that is evaluated and "
                             "deployed (not in the paper's recipe; see README)")
    parser.add_argument("--synthetic-count", type=_positive_int, default=256,
                        help="synthetic training images (validation: a quarter, at least 16) (default 256)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.set_defaults(func=run_train)


def _register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="the paper's nine metrics of a checkpoint on a dataset",
        description="Evaluate a checkpoint: mIoU, DSC, accuracy, sensitivity, specificity, precision, recall, "
                    "F-beta (beta^2 = 0.3) and E-measure per image and averaged, as a table (and JSON).",
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, default=None,
                        help="medqk checkpoint or bare state_dict (default: the embedded default model)")
    _add_data_arguments(parser)
    parser.add_argument("--split", default="val", choices=("val", "all"),
                        help="the validation part training held out (same --val-fraction and --seed), or every image")
    parser.add_argument("--count", type=_positive_int, default=16, help="synthetic images to evaluate (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here ('-' for stdout)")
    parser.add_argument("--masks-dir", type=Path, default=None,
                        help="write NAME_mask.png and NAME_overlay.png for each image here")
    parser.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from medqk.train import TrainOptions, train

    options = TrainOptions(
        data=args.data, layout=args.layout, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        image_size=args.image_size, widths=tuple(args.widths), levels=args.levels, channel_order=args.channel_order,
        out=args.out, resume=args.resume, seed=args.seed, device=args.device, val_fraction=args.val_fraction,
        patience=args.patience, lr_patience=args.lr_patience, target_dice=args.target_dice, freeze_bn_from=args.freeze_bn_from,
        synthetic_count=args.synthetic_count, augment=args.augment, workers=args.workers,
    )
    train(options)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from medqk.checkpoint import load_checkpoint_payload
    from medqk.data import Preprocessing
    from medqk.defaults import default_checkpoint_path
    from medqk.evaluate import evaluate, evaluation_dataset, write_json
    from medqk.train import resolve_device

    checkpoint = args.checkpoint or default_checkpoint_path()
    model, metadata = load_checkpoint_payload(checkpoint)
    prep = Preprocessing.from_dict(metadata["preprocessing"])
    device = resolve_device(args.device)
    dataset = evaluation_dataset(args.data, prep, args.layout, args.split, args.val_fraction, args.seed, args.count)
    console.info(f"evaluating {checkpoint} on {len(dataset)} image(s) of {args.data} at {prep.size[0]}x{prep.size[1]}")
    result = evaluate(model.to(device), dataset, device, args.batch_size, args.masks_dir, prep.channel_order)
    console.info(result.table())
    record = {"checkpoint": str(checkpoint), "sha256": metadata["sha256"], "data": args.data, **result.to_json()}
    if args.json == Path("-"):
        print(json.dumps(record, indent=2))
    elif args.json is not None:
        write_json(args.json, record)
        console.info(f"wrote {args.json}")
    if args.masks_dir is not None:
        console.info(f"wrote masks and overlays to {args.masks_dir}")
    return 0
