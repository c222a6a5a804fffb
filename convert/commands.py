"""`medqk convert` and `medqk inspect`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from medqk import console

#: Functions ``(tmp_dir, converted_model)`` that add files to a model directory before it is
#: renamed into place (ONNX models, the Loihi 2 resource report). Backends append to it.
OUTPUT_WRITERS: list[Callable] = []
#: (a writer may return a line or two for the convert summary)


def write_onnx(tmp_dir: Path, model) -> None:
    """model.onnx and model-int.onnx (onnx is imported only when a model is written)."""
    from medqk.convert.to_onnx import write_onnx_models

    write_onnx_models(tmp_dir, model)


OUTPUT_WRITERS.append(write_onnx)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="trace, fold and quantize a checkpoint into a model directory",
        description="Trace a MedQKFormer checkpoint into the spike-graph IR, fold BatchNorm and the NISF 1/D "
                    "normalisation, quantize to integer NISF states and fixed-point weights (calibrated on "
                    "images), and write the model directory (graphs, tensors and every backend's files).")
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help="a medqk checkpoint or a bare reference state_dict (.pt); default: the embedded default model")
    p.add_argument("-o", "--output", type=Path, default=Path("medqk-model"), help="model directory to write (default: %(default)s)")
    p.add_argument("--calibrate", type=Path, metavar="DIR", help="folder of calibration images (default: built-in synthetic images)")
    p.add_argument("--calibration-count", type=int, default=4, metavar="N", help="calibration images to use (default: %(default)s)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size the graph is built for, multiples of 16 (default: the checkpoint's preprocessing size)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--json", type=Path, metavar="F", help="also write the summary as JSON")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser("inspect", help="print a converted model's node table; draw its graph",
                              description="Print the node table of a converted model (op, shape, kind, parameters, "
                                          "MACs, quantization) and optionally draw the graph.")
    p.add_argument("model", type=Path, help="a directory written by `medqk convert`")
    p.add_argument("--draw", type=Path, metavar="F", help="draw the graph to F (.svg or .png)")
    p.add_argument("--json", type=Path, metavar="F", help="write the node table as JSON")
    p.set_defaults(func=run_inspect)


def run_convert(args) -> int:
    from medqk.convert.inspect import summary
    from medqk.convert.pipeline import convert_checkpoint
    from medqk.convert.serialize import save_model
    from medqk.errors import InputError

    if args.calibration_count < 1:
        raise InputError("--calibration-count must be at least 1")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise InputError(f"output directory {out} exists and is not empty; choose another or pass --force")
    converted, report, agreement, _ = convert_checkpoint(args.checkpoint, args.image_size, args.calibrate, args.calibration_count)
    converted.meta["quantization"] = [vars(r) for r in report]
    notes: list[str] = []
    writers = [lambda d, m, w=w: notes.append(w(d, m)) for w in OUTPUT_WRITERS]
    save_model(converted, out, force=args.force, extra_writers=writers)
    info = {**summary(converted), "output": str(out), "agreement_with_torch": agreement,
            "quantization": quantization_summary(report), "files": sorted(p.name for p in out.iterdir())}
    console.info("\n".join([format_summary(info), *filter(None, notes)]))
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))
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
        f"  vs torch   integer graph mask: pixel agreement {a['pixel_agreement']:.4f}, Dice {a['dice']:.4f} (calibration images)",
        f"             (masks differ where a spike flips at a rounding boundary; `medqk compare {info['output']} --data DIR` "
        "scores each backend against your ground truth)",
    ])


def run_inspect(args) -> int:
    from medqk.convert.inspect import draw, format_table, node_rows, summary
    from medqk.convert.serialize import load_model

    model = load_model(args.model)
    rows = node_rows(model)
    console.info(format_table(rows))
    s = summary(model)
    console.info(f"\n{s['nodes']} nodes, depth {s['depth']}, {s['parameters']:,} parameters, input {s['image_size']}")
    if args.draw:
        console.info(f"graph drawn to {draw(model.int_graph, args.draw)}")
    if args.json:
        args.json.write_text(json.dumps({"summary": s, "nodes": rows}, indent=2))
    return 0
