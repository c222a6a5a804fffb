"""`medqk energy report`: count, price and compare a model's operations on images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from medqk import console
from medqk.errors import InputError


def register(subparsers) -> None:
    from medqk.data.preprocess import PIXEL_DEPTH_RULE
    from medqk.energy.models import DEFAULT, MODELS

    p = subparsers.add_parser("energy", help="energy analysis of a model (MACs, ACs, spikes, baselines)",
                              description="Energy analysis of a MedQKFormer model.")
    sub = p.add_subparsers(dest="energy_command", metavar="COMMAND", required=True)
    r = sub.add_parser(
        "report", help="per-layer MACs, ACs, synaptic events and energy; comparison with ANN baselines",
        description="Count every synaptic layer's operations on measured spikes (MACs for real-valued inputs, "
                    "ACs and synaptic events for integer spike inputs), price them with an energy model and "
                    "compare with ANN baselines (always the U-Net of the paper's table and the SNN's ANN twin). "
                    "Figures are per image (means over the images).")
    r.add_argument("model", nargs="?", type=Path,
                   help="a checkpoint (.pt) or a directory written by `medqk convert`; default: the embedded default model")
    source = r.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path, metavar="PATH",
                        help=f"one image ({PIXEL_DEPTH_RULE}), or a .npy float32 [C, H, W] network input")
    source.add_argument("--images", type=Path, metavar="DIR", help=f"a folder of images (means per image); {PIXEL_DEPTH_RULE}")
    source.add_argument("--activity", type=Path, metavar="F", help="activity file of a Lava run of this model, instead of images")
    r.add_argument("--baseline", action="append", default=[], metavar="B",
                   help="extra baseline: unet, ann-twin, package.module:Class (built without arguments) or a .onnx "
                        "file; repeatable (unet and ann-twin are always included)")
    r.add_argument("--energy-model", choices=sorted(MODELS), default=DEFAULT,
                   help="per-operation energy figures (default: %(default)s, 45 nm float32)")
    r.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size when MODEL is a checkpoint (default: its preprocessing size)")
    r.add_argument("--json", type=Path, metavar="F", help="write the full report as JSON")
    r.add_argument("--markdown", type=Path, metavar="F", help="write the report as Markdown")
    r.add_argument("--plot", type=Path, metavar="F", help="draw per-layer energy, SNN vs ANN twin (PNG)")
    r.add_argument("--html", type=Path, metavar="F",
                   help="write one self-contained HTML page: input and mask, energy charts, firing per NISF population")
    r.set_defaults(func=run_report)
    from medqk.energy.peers import register as register_peers

    register_peers(sub)


def open_subject(path: Path | None, image_size: tuple[int, int] | None):
    """The converted model to analyse (converting a checkpoint in memory when needed)."""
    from medqk.convert.pipeline import open_model

    model = open_model(path, image_size)
    if image_size is not None and tuple(model.image_size) != tuple(image_size):
        raise InputError(f"--image-size {image_size[0]} {image_size[1]}: the converted model {path} is built for "
                         f"{model.image_size[0]}x{model.image_size[1]}; convert it again at that size")
    return model


def _preprocessing(converted):
    from medqk.data.preprocess import Preprocessing

    prep = converted.meta.get("preprocessing")
    return Preprocessing.from_dict(prep) if prep else Preprocessing(size=tuple(converted.image_size))


def image_files(directory: Path) -> list[Path]:
    from medqk.data.layouts import IMAGE_SUFFIXES

    if not directory.is_dir():
        raise InputError(f"--images {directory}: no such folder")
    suffixes = {*IMAGE_SUFFIXES, ".npy"}
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"--images {directory}: the folder holds no images ({', '.join(sorted(suffixes))})")
    return files


def image_inputs(converted, files: list[Path] | None) -> tuple[int, Iterator, str]:
    """(count, lazy iterator of (label, [C, H, W] float32), description) of the images to run;
    the built-in demo image (as `medqk run` uses) when ``files`` is None."""
    size = tuple(converted.image_size)
    if files is None:
        from medqk.defaults import default_image

        return 1, iter([("demo", default_image(size).image)]), "the built-in synthetic demo image (pass --image or --images)"
    from medqk.data.preprocess import load_network_input

    prep, in_channels = _preprocessing(converted), converted.float_graph.input.op.shape[0]

    def load(path: Path):
        x = load_network_input(path, prep, in_channels)
        if tuple(x.shape[1:]) != size:
            raise InputError(f"{path}: the network input is {x.shape[1]}x{x.shape[2]} but the model is built for "
                             f"{size[0]}x{size[1]}; give a {size[0]}x{size[1]} input or convert at that size")
        return path.name, x

    described = str(files[0]) if len(files) == 1 else f"{len(files)} images in {files[0].parent}"
    return len(files), map(load, files), described


def extra_baselines(converted, specs: list[str]) -> list:
    """The baselines named by ``--baseline`` beyond the built-in two, resolved (and checked) up front."""
    from medqk.energy import baselines as bl

    shape = tuple(converted.int_graph.input.tensor.shape)
    return [bl.resolve(spec, shape) for spec in dict.fromkeys(specs) if spec not in bl.BUILT_IN]


def analyze(converted, activity, energy_model, extra: list, name: str) -> dict:
    """The report of ``converted`` (its integer graph) for ``activity``, with the built-in
    baselines and the ``extra`` ones."""
    from medqk.energy import baselines as bl
    from medqk.convert.activity_format import graph_sha256
    from medqk.energy.counting import count_layers, other_ops
    from medqk.energy.report import build

    graph = converted.int_graph
    input_shape = tuple(graph.input.tensor.shape)
    params, thop = architecture_figures(converted)
    baselines = [bl.ann_twin(graph, params, thop), bl.unet(input_shape), *extra]
    model = {"name": name, "input_shape": list(input_shape), "params": params, "thop_macs": thop,
             "sha256": graph_sha256(graph)}
    layers = count_layers(graph, activity.per_image_synapses())
    return build(model, layers, other_ops(graph), activity, energy_model, baselines, graph)


def architecture_figures(converted) -> tuple[int, int]:
    """(parameters, thop's count) of the converted network: as recorded from the traced module at
    conversion, or, for a model directory written before they were recorded, from its float graph
    (BatchNorms folded: fewer parameters, and thop's BatchNorm count missing)."""
    import copy

    from medqk.energy.counting import thop_counts

    recorded = converted.meta.get("architecture")
    if recorded is not None:
        return int(recorded["parameters"]), int(recorded["thop_macs"])
    graph = copy.deepcopy(converted.float_graph)
    params = sum(int(a.size) for node in graph.nodes() for a in node.op.arrays().values())
    return params, sum(thop_counts(graph).values())


class _keeping_first:
    """Iterate (label, image) pairs, remembering the first image (for the HTML page)."""

    def __init__(self, pairs):
        self._pairs, self.first = iter(pairs), None

    def __iter__(self):
        for label, image in self._pairs:
            if self.first is None:
                self.first = (label, image)
            yield label, image


def write_html(path: Path, report: dict, converted, first_image) -> None:
    """The report as one HTML page; with images, the first one and its integer-graph mask on top."""
    from medqk.convert.neurons import output_activation
    from medqk.convert.pipeline import int_probabilities, predicted_labels
    from medqk.energy.html import energy_sections
    from medqk.htmlpage import Section, page, tile

    sections = energy_sections(report)
    if first_image is not None:
        label, image = first_image
        mask = predicted_labels(int_probabilities(converted.int_graph, image[None]), output_activation(converted.int_graph))[0] != 0
        tiles = tile(image[::-1].transpose(1, 2, 0), f"{label} (input)") + tile(mask, "integer graph mask")
        sections.insert(0, Section("Input").add(f'<div class="grid">{tiles}</div>'))
    path.write_text(page(f"Energy report: {report['model']['name']}", report["activity"]["source"], sections))


def run_report(args) -> int:
    from medqk.energy import activity as act
    from medqk.energy.models import get_model
    from medqk.energy.report import PLOT_SUFFIXES, format_markdown, format_terminal, plot
    from medqk.outputs import check_files, write_files

    energy_model = get_model(args.energy_model)
    first_image = None
    check_files({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot, "--html": args.html},
                suffixes={"--plot": PLOT_SUFFIXES})
    converted = open_subject(args.model, tuple(args.image_size) if args.image_size else None)
    extra = extra_baselines(converted, args.baseline)  # a bad baseline fails before the images run
    if args.activity:
        activity = act.from_file(args.activity, converted.int_graph)
    else:
        files = [args.image] if args.image else image_files(args.images) if args.images else None
        count, images, described = image_inputs(converted, files)
        console.info(f"running {count} image{'s' * (count != 1)} through the integer interpreter: {described}")
        images = _keeping_first(images)
        activity = act.from_images(converted.int_graph, images, count)
        first_image = images.first
    name = args.model.name if args.model else "default model"
    report = analyze(converted, activity, energy_model, extra, name)
    console.info(format_terminal(report))
    write_files({args.json: lambda p: p.write_text(json.dumps(report, indent=2)),
                 args.markdown: lambda p: p.write_text(format_markdown(report)),
                 args.plot: lambda p: plot(report, p),
                 args.html: lambda p: write_html(p, report, converted, first_image)})
    for path in (args.json, args.markdown, args.plot, args.html):
        if path:
            console.info(f"wrote {path}")
    return 0
