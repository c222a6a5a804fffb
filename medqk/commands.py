"""``medqk train`` and ``medqk eval``."""
from __future__ import annotations

import argparse
import json
import os
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
    from medqk.data.preprocess import PIXEL_DEPTH_RULE

    parser.add_argument("--data", default="synthetic",
                        help=f"dataset folder, or 'synthetic' for the built-in generator (default); {PIXEL_DEPTH_RULE}")
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
        "train", help="train MedQKFormer (or the U-Net baseline) on a dataset or synthetic data",
        description="Train MedQKFormer, or with --model unet the paper's U-Net baseline, by the same recipe: Adam "
                    "(lr 1e-3), batch 8, BCE + Dice on probabilities, early stopping on val mIoU, seed 41; the "
                    "default recipe 'medqk' departs from the paper's in two places (--bn-statistics epoch, "
                    "--schedule cosine; --recipe paper restores the paper's exactly). Writes best.pt, last.pt, "
                    "train.log, curves.png and metrics.json to --out. Under torchrun, trains data-parallel (gloo on "
                    "CPU, NCCL on GPU).",
    )
    _add_data_arguments(parser)
    parser.add_argument("--epochs", type=_positive_int, default=200, help="most epochs (default 200)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="square input size, a positive multiple of 16 that fits in memory (default 256)")
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
                        help="from this epoch on, estimate BatchNorm statistics once over the whole, un-augmented "
                             "training images and train with them frozen, so training optimises the network that "
                             "is evaluated and deployed (in neither recipe; see docs/model-and-training.md)")
    parser.add_argument("--synthetic-count", type=_positive_int, default=256,
                        help="synthetic training images (validation: a quarter, at least 16) (default 256)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    parser.add_argument("--model", default="medqkformer", choices=("medqkformer", "unet"),
                        help="the network: MedQKFormer (default) or the paper's U-Net baseline (--widths and --levels "
                             "are MedQKFormer's)")
    parser.add_argument("--crop", type=_positive_int, default=None, metavar="SIZE",
                        help="train on random SIZE x SIZE windows of the resized images (validation sees whole images)")
    parser.add_argument("--recipe", default="medqk", choices=("medqk", "paper"),
                        help="medqk (default): the paper's recipe with two departures, --bn-statistics epoch and "
                             "--schedule cosine; paper: the published recipe exactly (--bn-statistics running, "
                             "--schedule plateau). Explicit flags override the recipe's")
    parser.add_argument("--bn-statistics", default=None, choices=("running", "epoch", "population"),
                        help="BatchNorm statistics that evaluation and deployment use: epoch (medqk recipe: an "
                             "average over the epoch's training batches), population (recomputed after each "
                             "epoch's steps over the whole, un-augmented training images: +0.04-0.055 val DSC on "
                             "MoNuSeg for one extra forward pass of them per epoch, 1.32x at 256x256) or running "
                             "(paper: momentum 0.1)")
    parser.add_argument("--schedule", default=None, choices=("plateau", "cosine"),
                        help="learning rate: cosine (medqk recipe: to 0 over --epochs) or plateau (paper: "
                             "ReduceLROnPlateau on the val loss, --lr-patience)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.set_defaults(func=run_train)


def _register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="the paper's nine metrics of a checkpoint (MedQKFormer or U-Net) on a dataset",
        description="Evaluate a checkpoint: mIoU, DSC, accuracy, sensitivity, specificity, precision, recall, "
                    "F-beta (beta^2 = 0.3) and E-measure per image and averaged, as a table (and JSON).",
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, default=None,
                        help="medqk checkpoint or bare state_dict (default: the embedded default model)")
    _add_data_arguments(parser)
    parser.add_argument("--split", default="all", choices=("all", "val"),
                        help="every image of the folder (default, as the paper's test script), or only the validation "
                             "part training held out (same --val-fraction and --seed)")
    parser.add_argument("--count", type=_positive_int, default=16, help="synthetic images to evaluate (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here ('-' for stdout)")
    parser.add_argument("--masks-dir", type=Path, default=None,
                        help="write NAME_mask.png and NAME_overlay.png for each image here")
    parser.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from medqk.outputs import check_folder
    from medqk.train import TrainOptions, train

    check_folder("--out", args.out)
    _check_training_size(args)
    options = TrainOptions(
        data=args.data, layout=args.layout, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        image_size=args.image_size, widths=tuple(args.widths), levels=args.levels, channel_order=args.channel_order,
        out=args.out, resume=args.resume, seed=args.seed, device=args.device, val_fraction=args.val_fraction,
        patience=args.patience, lr_patience=args.lr_patience, target_dice=args.target_dice, freeze_bn_from=args.freeze_bn_from,
        synthetic_count=args.synthetic_count, augment=args.augment, workers=args.workers,
        model=args.model, crop=args.crop, recipe=args.recipe, bn_statistics=args.bn_statistics, schedule=args.schedule,
    )
    train(options)
    return 0


def _check_training_size(args: argparse.Namespace) -> None:
    """Refuse, before any work, an image size the network cannot take or whose training would not
    fit in this machine's memory (MedQKFormer on the CPU: the estimate is of host memory)."""
    from medqk.data.sizes import check_image_size, check_training_size
    from medqk.errors import InputError
    from medqk.model import ModelConfig
    from medqk.train import resolve_device

    check_image_size((args.image_size, args.image_size))
    if args.model != "medqkformer" or resolve_device(args.device).type != "cpu":
        return
    try:
        config = ModelConfig(widths=tuple(args.widths), in_channels=1 if args.channel_order == "GRAY" else 3, levels=args.levels)
    except ValueError as error:
        raise InputError(f"--widths {' '.join(map(str, args.widths))}: {error}") from None
    window = args.crop or args.image_size
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes on this machine
    check_training_size(config, (window, window), args.batch_size * processes_here)


def run_eval(args: argparse.Namespace) -> int:
    from medqk.checkpoint import checkpoint_network, load_checkpoint_payload
    from medqk.data import Preprocessing
    from medqk.defaults import default_checkpoint_path
    from medqk.evaluate import evaluate, evaluation_dataset, write_json
    from medqk.networks import NETWORKS
    from medqk.outputs import check_files, check_folder
    from medqk.train import resolve_device

    check_files({"--json": None if args.json == Path("-") else args.json})
    if args.masks_dir is not None:
        check_folder("--masks-dir", args.masks_dir)
    checkpoint = args.checkpoint or default_checkpoint_path()
    model, metadata = load_checkpoint_payload(checkpoint, networks=tuple(NETWORKS))
    prep = Preprocessing.from_dict(metadata["preprocessing"])
    device = resolve_device(args.device)
    dataset, share = evaluation_dataset(args.data, prep, args.layout, args.split, args.val_fraction, args.seed, args.count)
    network = checkpoint_network(model, metadata, (prep.channels, *prep.size))
    console.info(f"evaluating {checkpoint} on {share} at {prep.size[0]}x{prep.size[1]}"
                 + (" through its integer graph (integer-aware fine-tuned)" if network is not model else ""))
    result = evaluate(network.to(device), dataset, device, args.batch_size, args.masks_dir, prep.channel_order)
    console.info(result.table())
    record = {"checkpoint": str(checkpoint), "sha256": metadata["sha256"], "data": args.data, "share": share,
              **result.to_json()}
    if args.json == Path("-"):
        print(json.dumps(record, indent=2))
    elif args.json is not None:
        write_json(args.json, record)
        console.info(f"wrote {args.json}")
    if args.masks_dir is not None:
        console.info(f"wrote masks and overlays to {args.masks_dir}")
    return 0
