"""`medqk convert` and `medqk inspect`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from medqk import console
from medqk.checkpoint import NETWORK_RESOLVERS

#: Functions ``(tmp_dir, converted_model)`` that add files to a model directory before it is
#: renamed into place (ONNX models, the Loihi 2 resource report). Backends append to it.
OUTPUT_WRITERS: list[Callable] = []
#: (a writer may return a line or two for the convert summary)


def write_onnx(tmp_dir: Path, model) -> None:
    """model.onnx and model-int.onnx (onnx is imported only when a model is written)."""
    from medqk.convert.to_onnx import write_onnx_models

    write_onnx_models(tmp_dir, model)


OUTPUT_WRITERS.append(write_onnx)


def resolve_integer_aware(model, metadata, input_shape):
    """Integer-aware fine-tuned checkpoints run through their integer graph (finetune is imported
    only when a checkpoint records one)."""
    if not (metadata.get("training") or {}).get("integer_formats"):
        return None
    from medqk.convert.finetune import integer_aware_network

    return integer_aware_network(model, metadata, input_shape)


NETWORK_RESOLVERS.append(resolve_integer_aware)


def register(subparsers) -> None:
    from medqk.data.preprocess import PIXEL_DEPTH_RULE

    p = subparsers.add_parser(
        "convert", help="trace, fold and quantize a checkpoint into a model directory",
        description="Trace a MedQKFormer checkpoint into the spike-graph IR, fold BatchNorm and the NISF 1/D "
                    "normalisation, quantize to integer NISF states and fixed-point weights (calibrated on "
                    "images), and write the model directory (graphs, tensors and every backend's files).")
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help="a medqk checkpoint or a bare reference state_dict (.pt); default: the embedded default model")
    p.add_argument("-o", "--output", type=Path, default=Path("medqk-model"), help="model directory to write (default: %(default)s)")
    p.add_argument("--calibrate", type=Path, metavar="DIR",
                   help=f"folder of calibration images (default: built-in synthetic images); {PIXEL_DEPTH_RULE}")
    p.add_argument("--calibration-count", type=int, default=4, metavar="N", help="calibration images to use (default: %(default)s)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size the graph is built for, positive multiples of 16 whose conversion fits in memory "
                        "(default: the checkpoint's preprocessing size)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing model directory: only a folder holding a model.json written by medqk, "
                        "never the current folder or one above it, nor one holding an input (checkpoint, calibration "
                        "images, --model file, --weights); files you added to it go with it. The old model stays until the new one is "
                        "complete, and a failed conversion leaves it as it was")
    p.add_argument("--json", type=Path, metavar="F", help="also write the summary as JSON")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the sensitivity report (torch under 2^-9 and 2^-16 weight noise, and what each "
                        "rounding of the integer graph costs; a few more passes over the calibration images)")
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help="convert your own network instead of a checkpoint: FUNCTION() from FILE.py builds the "
                        "torch module (FILE may call medqk.convert.register_neuron for its neuron classes)")
    p.add_argument("--weights", type=Path, metavar="CKPT", help="with --model: a state_dict to load (torch.load, weights_only)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="with --model: the network input the graph is built for (default: 3 and --image-size, or 3 256 256)")
    p.set_defaults(func=run_convert)

    _register_finetune(subparsers)

    p = subparsers.add_parser("inspect", help="print a converted model's node table; draw its graph",
                              description="Print the node table of a converted model (op, shape, kind, parameters, "
                                          "MACs, quantization) and optionally draw the graph.")
    p.add_argument("model", type=Path, help="a directory written by `medqk convert`")
    p.add_argument("--draw", type=Path, metavar="F", help="draw the graph to F (.svg or .png)")
    p.add_argument("--json", type=Path, metavar="F", help="write the node table as JSON")
    p.add_argument("--lava", action="store_true",
                   help="list the processes of the model's Lava graph instead (class, library, shape, weight and message "
                        "bits, delay, the step its output is valid); --json writes them as a list of objects")
    p.set_defaults(func=run_inspect)


def _register_finetune(subparsers) -> None:
    from medqk.commands import _add_data_arguments, _positive_int

    p = subparsers.add_parser(
        "finetune", help="fine-tune a checkpoint through its own integer graph (integer-aware training)",
        description="Fine-tune MedQKFormer with the converted integer graph in the forward pass: weights rounded to "
                    "their 8-bit mantissas and exponents (BatchNorm folded with its running statistics), every state "
                    "rounded to its fixed-point format, NISF as the integer graph computes it, gradients straight "
                    "through. The state formats are calibrated once on the training images and recorded in the "
                    "output checkpoint; `medqk convert` uses them, so the integer graph is the network that was "
                    "validated, and medqk's torch backend runs such a checkpoint through the same forward pass. Each "
                    "epoch is validated through the integer graph; the best epoch (epoch 0: the checkpoint as "
                    "converted) is written to -o after every improvement. Under torchrun, data-parallel like train.")
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help="a medqk checkpoint or a bare reference state_dict (.pt); default: the embedded default model")
    _add_data_arguments(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="the fine-tuned checkpoint to write (.pt)")
    p.add_argument("--epochs", type=_positive_int, default=5, help="epochs (default 5)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--image-size", type=_positive_int, nargs=2, metavar=("H", "W"),
                   help="image size, multiples of 16, as the converted model will take them (default: the checkpoint's)")
    p.add_argument("--crop", type=_positive_int, default=128, metavar="SIZE",
                   help="train on random SIZE x SIZE windows (default 128; validation sees whole images)")
    p.add_argument("--no-crop", dest="crop", action="store_const", const=None, help="train on whole images")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    p.add_argument("--synthetic-count", type=_positive_int, default=64,
                   help="with --data synthetic: training images (validation: a quarter, at least 16) (default 64)")
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    from medqk.convert.finetune import FinetuneOptions, finetune
    from medqk.errors import InputError
    from medqk.outputs import check_files

    check_files({"-o": args.output}, {"-o": (".pt", ".pth")})
    if args.checkpoint is not None and args.output.resolve() == args.checkpoint.resolve():
        raise InputError(f"-o {args.output} is the checkpoint being fine-tuned; write the result to another file")
    result = finetune(FinetuneOptions(
        checkpoint=args.checkpoint, data=args.data, out=args.output, layout=args.layout, epochs=args.epochs,
        image_size=tuple(args.image_size) if args.image_size else None, crop=args.crop, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, val_fraction=args.val_fraction, device=args.device, augment=args.augment,
        synthetic_count=args.synthetic_count))
    first, best = result.history[0], result.best
    console.info(f"{result.stopped}; integer graph val DSC {first['val']['DSC']:.4f} before, {best['val']['DSC']:.4f} "
                 f"after (epoch {best['epoch']}) -> {result.path} ({result.seconds:.0f} s)")
    return 1 if result.diverged else 0


def run_convert(args) -> int:
    from medqk.convert.inspect import summary
    from medqk.convert.pipeline import convert_checkpoint, convert_user_network
    from medqk.convert.serialize import check_model_destination, writing_model
    from medqk.errors import InputError
    from medqk.outputs import FileSet, check_files

    if args.calibration_count < 1:
        raise InputError("--calibration-count must be at least 1")
    if args.model is None and (args.weights or args.input_shape):
        raise InputError("--weights and --input-shape go with --model FILE.py:FUNCTION")
    if args.model is not None and args.checkpoint is not None:
        raise InputError(f"give either a checkpoint ({args.checkpoint}) or --model {args.model}, not both")
    out = Path(args.output)
    inputs = [args.checkpoint, args.calibrate, args.weights, Path(args.model.rpartition(":")[0]) if args.model else None]
    check_model_destination(out, args.force, inputs)
    check_files({"--json": args.json})
    if args.json and out.resolve() in args.json.resolve().parents:
        raise InputError(f"--json {args.json}: write it outside the model directory {out}")
    if args.model is not None:
        input_shape = args.input_shape or (3, *(args.image_size or (256, 256)))
        converted, report, agreement = convert_user_network(args.model, args.weights, tuple(input_shape),
                                                            args.calibrate, args.calibration_count,
                                                            sensitivity=not args.no_sensitivity)
    else:
        converted, report, agreement, _ = convert_checkpoint(args.checkpoint, args.image_size, args.calibrate,
                                                             args.calibration_count, sensitivity=not args.no_sensitivity)
    converted.meta["quantization"] = [vars(r) for r in report]
    notes: list[str] = []
    writers = [lambda d, m, w=w: notes.append(w(d, m)) for w in OUTPUT_WRITERS]
    # the model is moved into place first, the JSON file after it: both or neither
    with FileSet() as files, writing_model(converted, out, args.force, writers, inputs) as staged:
        info = {**summary(converted), "output": str(out), "agreement_with_torch": agreement,
                "quantization": quantization_summary(report), "files": sorted(p.name for p in staged.iterdir()),
                "sensitivity": converted.meta.get("sensitivity")}
        if args.json:
            files.write(args.json, lambda path: path.write_text(json.dumps(info, indent=2)))
    console.info("\n".join([format_summary(info), *filter(None, notes)]))
    return 0


def quantization_summary(report) -> dict:
    real = [r for r in report if r.spike_mismatch is None and r.op != "input"]
    spikes = [r for r in report if r.spike_mismatch is not None]
    worst = sorted(real, key=lambda r: r.rel_rms_error, reverse=True)[:5]
    return {
        "median_rel_rms_error": sorted(r.rel_rms_error for r in real)[len(real) // 2] if real else 0.0,
        "mean_spike_mismatch": sum(r.spike_mismatch for r in spikes) / len(spikes) if spikes else 0.0,
        "saturated_values": sum(r.saturated for r in report),
        "worst_nodes": [{"name": r.name, "rel_rms_error": r.rel_rms_error} for r in worst],
    }


def format_summary(info: dict) -> str:
    from medqk.convert.sensitivity import format_report

    q, a = info["quantization"], info["agreement_with_torch"]
    ops = ", ".join(f"{k} {v}" for k, v in info["ops"].items())
    kinds = ", ".join(f"{v} {k}" for k, v in info["tensor_kinds"].items())
    return "\n".join([
        f"converted -> {info['output']}  ({', '.join(info['files'])})",
        f"  graph      {info['nodes']} nodes, depth {info['depth']}, {info['parameters']:,} parameters (BatchNorm folded), input {info['image_size'][0]}x{info['image_size'][1]}",
        f"  ops        {ops}",
        f"  tensors    {kinds}",
        f"  quantized  median relative RMS error {q['median_rel_rms_error']:.2e} (real tensors), "
        f"{100 * q['mean_spike_mismatch']:.3f}% spikes differ, {q['saturated_values']} values saturated",
        f"  vs torch   integer graph mask: pixel agreement {a['pixel_agreement']:.4f}, Dice {a['dice']:.4f} (calibration images)"
        + (" against the fine-tuned network's own forward pass" if a.get("integer_aware") else ""),
        *([f"             the same weights as a plain float network: pixel agreement {a['float_module']['pixel_agreement']:.4f}, "
           f"Dice {a['float_module']['dice']:.4f}"] if a.get("integer_aware") else []),
        f"             (masks differ where a spike flips at a rounding boundary; `medqk compare {info['output']} --data DIR` "
        "scores each backend against your ground truth)",
        *(format_report(info["sensitivity"]) if info.get("sensitivity") else []),
    ])


def run_inspect(args) -> int:
    from medqk.convert.inspect import DRAW_SUFFIXES, draw, format_table, node_rows, summary
    from medqk.convert.serialize import load_model
    from medqk.outputs import check_files, write_files

    check_files({"--draw": args.draw, "--json": args.json}, suffixes={"--draw": DRAW_SUFFIXES})
    model = load_model(args.model)
    if args.lava:
        from medqk.convert.inspect import format_lava_table, lava_rows

        processes = lava_rows(model)
        console.info(format_lava_table(processes))
        write_files({args.draw: lambda path: draw(model.int_graph, path),
                     args.json: lambda path: path.write_text(json.dumps(processes, indent=1))})
        return 0
    rows = node_rows(model)
    console.info(format_table(rows))
    s = summary(model)
    console.info(f"\n{s['nodes']} nodes, depth {s['depth']}, {s['parameters']:,} parameters, input {s['image_size']}")
    write_files({args.draw: lambda path: draw(model.int_graph, path),
                 args.json: lambda path: path.write_text(json.dumps({"summary": s, "nodes": rows}, indent=2))})
    if args.draw:
        console.info(f"graph drawn to {args.draw}")
    return 0
