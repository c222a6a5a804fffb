"""`medqk run`: one image through one backend; mask, probabilities and a JSON record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medqk import console
from medqk.convert.commands import OUTPUT_WRITERS
from medqk.deploy import lava_library


def write_loihi2(directory: Path, model) -> str:
    """Convert writer: loihi2.json, the Loihi 2 resource report; returns its summary for the terminal."""
    from medqk.deploy.resources import format_summary, loihi2_report, write_loihi2_json

    write_loihi2_json(directory, model)
    return format_summary(loihi2_report(model.int_graph))


OUTPUT_WRITERS.append(write_loihi2)


def register(subparsers) -> None:
    from medqk.data.preprocess import PIXEL_DEPTH_RULE
    from medqk.deploy.backends import BACKENDS

    p = subparsers.add_parser(
        "run", help="run one image through a backend (torch, IR, integer IR, ONNX, Lava)",
        description="Run one image through MODEL on the chosen backend and write its mask and probabilities. "
                    "MODEL is a checkpoint (converted in memory) or a directory written by `medqk convert`.")
    p.add_argument("model", nargs="?", type=Path, help="checkpoint (.pt) or converted model directory; default: the embedded default model")
    p.add_argument("--image", type=Path, metavar="PATH",
                   help="an image file (preprocessed as the model records; " + PIXEL_DEPTH_RULE + "), or a .npy float32 "
                        "[3, H, W] array that is already the network input; default: a built-in synthetic image")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="ir-int", help="where to run it (default: %(default)s)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="input size when MODEL is a checkpoint")
    p.add_argument("--out", type=Path, metavar="MASK.png",
                   help="write the predicted mask as an 8-bit PNG: foreground 255 (probability > 0.5, logit > 0, or "
                        "class 1 of two); for K > 2 classes the class index c as round(255 c / (K - 1))")
    p.add_argument("--save-probs", type=Path, metavar="F.npy",
                   help="write the network's output as float32: H x W (K x H x W for K classes) probabilities where it "
                        "ends in a sigmoid or softmax, its logits otherwise")
    p.add_argument("--json", type=Path, metavar="F", help="write what ran and what came out as JSON")
    p.add_argument("--lava-models", choices=lava_library.MODEL_SETS, metavar="fast|reference",
                   help="lava: the process models, medqk's fast ones or Lava's own fixed-point models for "
                        "Lava's library processes (default: fast; reference is minutes per image at 64x64)")
    p.add_argument("--activity", type=Path, metavar="F",
                   help="lava: write the measured spikes and synaptic operations per layer, process and time step "
                        "(for `medqk energy report --activity`)")
    p.set_defaults(func=run_command)


def load_input(handle, image: Path | None) -> np.ndarray:
    """The network input [1, C, H, W] for ``handle``'s model."""
    converted = handle.converted
    size = tuple(converted.image_size)
    if image is None:
        from medqk.defaults import default_image

        return default_image(size).image[None]
    from medqk.data.preprocess import load_network_input

    x = load_network_input(image, handle.preprocessing(), int(converted.float_graph.input.op.shape[0]))
    if tuple(x.shape[1:]) != size:
        from medqk.errors import InputError

        raise InputError(f"{image}: the network input is {x.shape[1]}x{x.shape[2]} but the model was converted for "
                         f"{size[0]}x{size[1]}; convert with --image-size {x.shape[1]} {x.shape[2]} or give a {size[0]}x{size[1]} input")
    return x[None]


def save_mask_png(labels: np.ndarray, classes: int, path: Path) -> None:
    """Label map [H, W] (``pipeline.predicted_labels``) as an 8-bit PNG, the class index spread over
    0..255 for viewing: foreground 255 for two classes (or one channel, ``classes`` <= 2), and
    round(255 c / (K - 1)) for K classes, which ``compare.truth_labels`` reads back."""
    from PIL import Image

    Image.fromarray(np.rint(labels * (255 / (max(classes, 2) - 1))).astype(np.uint8)).save(path)


def save_probabilities(probabilities: np.ndarray, path: Path) -> None:
    """float32 .npy at exactly ``path`` (given a file name, np.save would add .npy to one without it)."""
    with open(path, "wb") as file:
        np.save(file, probabilities.astype(np.float32))


def mask_suffixes() -> tuple[str, ...]:
    """The file name endings Pillow can write a mask image to (it chooses the format by them)."""
    from PIL import Image

    Image.init()
    return tuple(sorted(suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.SAVE))


def lava_lines(info: dict, graph) -> list[str]:
    """What a Lava run reports: steps, timings, and activity per NISF population and synaptic layer."""
    lines = [lava_library.describe(info)]
    for name, counts in info["activity"].items():
        if "nonzero" in counts:
            neurons = int(np.prod(graph[name].tensor.shape)) * info["images"]
            lines.append(f"  {name:<46} NISF  {100 * counts['nonzero'] / neurons:5.1f}% firing, spike sum {counts['spike_sum']:,}")
        elif _spike_fed(graph, name):
            lines.append(f"  {name:<46} syn   {counts['events']:,} events, {counts['acs']:,} ACs")
        else:  # graded 24-bit payloads: every connection is a multiply-accumulate
            lines.append(f"  {name:<46} syn   real-valued input, {counts['events']:,} synaptic ops")
    return lines


def _spike_fed(graph, name: str) -> bool:
    from medqk.convert.graph import SPIKE

    return graph[graph[name].inputs[0]].tensor.kind == SPIKE


def write_activity(path: Path, info: dict, graph) -> None:
    from medqk.convert.activity_format import activity_document

    pops = {k: v for k, v in info["activity"].items() if "nonzero" in v}
    syns = {k: v for k, v in info["activity"].items() if "acs" in v and _spike_fed(graph, k)}
    document = activity_document(graph, info["images"], pops, syns, info.get("per_step"), info.get("process_activity"))
    path.write_text(json.dumps(document, indent=1))


def run_command(args) -> int:
    from medqk.convert.neurons import output_activation
    from medqk.convert.pipeline import predicted_labels
    from medqk.deploy.backends import BACKENDS, ModelHandle
    from medqk.errors import InputError
    from medqk.outputs import check_files, write_files

    if args.activity and args.backend != "lava":
        raise InputError("--activity records a Lava run's spikes: use it with --backend lava")
    if args.lava_models and args.backend != "lava":
        raise InputError("--lava-models chooses the process models of the Lava graph: use it with --backend lava")
    outputs = {"--out": args.out, "--save-probs": args.save_probs, "--json": args.json, "--activity": args.activity}
    check_files(outputs, suffixes={"--out": mask_suffixes()})
    handle = ModelHandle(args.model, tuple(args.image_size) if args.image_size else None)
    images = load_input(handle, args.image)
    options = {"models": args.lava_models} if args.lava_models else {}
    result = BACKENDS[args.backend](handle, images, **options)
    output = result.probabilities[0]
    output = output[0] if len(output) == 1 else output  # [H, W], or [K, H, W] for K classes
    mask = predicted_labels(result.probabilities, output_activation(handle.converted.int_graph))[0]
    record = {
        "backend": args.backend, "model": str(args.model) if args.model else "embedded default",
        "image": str(args.image) if args.image else "built-in synthetic image",
        "shape": list(mask.shape), "foreground_fraction": float(np.mean(mask != 0)),
        "seconds": result.seconds, **result.info,
    }
    console.info(f"{args.backend}: {mask.shape[0]}x{mask.shape[1]} mask, {100 * record['foreground_fraction']:.2f}% foreground, "
                 f"{result.seconds:.3f} s")
    if args.backend == "lava":
        console.info("\n".join(lava_lines(result.info, handle.converted.int_graph)))
    write_files({
        args.activity: lambda path: write_activity(path, result.info, handle.converted.int_graph),
        args.out: lambda path: save_mask_png(mask, result.probabilities.shape[1], path),
        args.save_probs: lambda path: save_probabilities(output, path),
        args.json: lambda path: path.write_text(json.dumps(record, indent=2, default=str)),
    })
    for option, what in (("--activity", "activity"), ("--out", "mask"), ("--save-probs", "probabilities")):
        if outputs[option]:
            console.info(f"{what} -> {outputs[option]}")
    return 0
