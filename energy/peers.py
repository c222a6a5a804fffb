"""`medqk energy peers`: SpikingJelly 2.0's op counter and NeuroBench 2.3's metrics run on the same torch
model and image as medqk, each figure next to medqk's count of the same thing under the tool's own rule.

medqk re-derives every tool figure from its own IR (the traced torch model, run by the float
interpreter): the tool's rule applied to medqk's recorded tensors, which must give the tool's
figure exactly. Where that differs from medqk's own figures (exact-tap MACs, unit-spike ACs,
graded events), ``why`` says by which parts. The rules, read from the packages' sources
(``../shared/spec/energy-peers.md``):

- SpikingJelly ``MACCounter`` (aten level): a convolution is a MAC per kernel tap of every output
  (padding included; transposed: per input) unless its input is binary (only 0 and 1); eval
  BatchNorm adds one MAC per element; upsampling has no rule. ``SynOpCounter``: per connection of
  each nonzero input of a convolution whose input is binary.
- NeuroBench ``SynapticOperations`` (nn.Conv2d / nn.Linear calls only): inputs and weights are
  binarised (nonzero -> 1) and run through the layer: one op per existing connection of each
  nonzero input with a nonzero weight; ACs when every input value is 0 or +-1, MACs otherwise;
  ``Dense``: the same with all inputs and weights 1. ``Footprint``: bytes of parameters and
  buffers. ``ConnectionSparsity``: zero weights of those layers. ``ActivationSparsity``: zero
  outputs of the activation modules (NISF registered; ReLU and Sigmoid by default).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import time
from pathlib import Path

import numpy as np

from medqk import console
from medqk.errors import InputError

TOOLS = ("spikingjelly", "neurobench")
INSTALL = ("install the extra medqk[peers] (spikingjelly 2.0.0, neurobench 2.3.0, snntorch, loguru): `bash install.sh` "
           "does it, or .venv/bin/pip install --no-deps spikingjelly==2.0.0 neurobench==2.3.0 snntorch loguru")
NETWORKS = ("snn", "ann-twin", "unet")


def require_tools() -> None:
    missing = [t for t in TOOLS if importlib.util.find_spec(t) is None]
    if missing:
        raise InputError(f"{' and '.join(missing)} not installed: {INSTALL}")


def ann_twin_module(model):
    """The SNN with every NISF replaced by a real activation (ReLU): same synapses, real inputs."""
    from torch import nn

    from medqk.nisf import NISF

    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, NISF):
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, nn.ReLU())
    return twin.eval()


# -- the tools ---------------------------------------------------------------------------------------

def run_spikingjelly(module, x) -> dict:
    import torch
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    macs, synops = MACCounter(), SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([macs, synops]):
        module(x)
    return {"MACs": macs.get_total(), "SynOps": synops.get_total()}


def run_neurobench(module, x) -> dict:
    import torch
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    from medqk.nisf import NISF

    model = TorchModel(module)
    model.add_activation_module(NISF)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=len(x))
    results = Benchmark(model, data, [], [], [[Footprint, ConnectionSparsity], [SynapticOperations, ActivationSparsity]]
                        ).run(verbose=False)
    return {"Footprint": results["Footprint"], "ConnectionSparsity": results["ConnectionSparsity"],
            "ActivationSparsity": results["ActivationSparsity"], **results["SynapticOperations"]}


# -- medqk's side -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Recorded:
    """One network traced into the IR and run by the float interpreter on the image."""

    module: object
    graph: object
    values: dict

    def input_of(self, node) -> np.ndarray:
        return self.values[node.inputs[0]][0]

    def module_of(self, node):
        """The torch module a node was traced from (None for the input and functional calls at the top)."""
        try:
            return self.module.get_submodule(node.source) if node.source else None
        except AttributeError:
            return None


def record(module, image: np.ndarray) -> Recorded:
    from medqk.convert import interpret_float
    from medqk.convert.passes import infer_tensors
    from medqk.convert.trace import trace

    graph = trace(module, tuple(image.shape))
    infer_tensors(graph)
    with np.errstate(over="ignore"):  # the output sigmoid of a saturated logit
        return Recorded(module, graph, interpret_float.run(graph, image[None], record=True)[1])


def binarised_ops(op, x_mask: np.ndarray) -> int:
    """Connections of the nonzero inputs with nonzero weights: the layer run on 0/1 inputs and weights
    (float64: exact)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(x_mask, dtype=np.float64))[None]
    w = torch.from_numpy(np.asarray(op.weight != 0, dtype=np.float64))
    if op.type == "conv_transpose2d":
        y = F.conv_transpose2d(x, w, None, op.stride, op.padding)
    else:
        y = F.conv2d(x, w, None, op.stride, op.padding, 1, op.groups)
    return int(y.sum().item())


def _is_binary(x: np.ndarray, values) -> bool:
    return bool(np.isin(x, values).all())


def medqk_counts(snn, image: np.ndarray) -> dict:
    """medqk's own figures for the SNN: exact-tap MACs, ACs, events and taps, counted on its prepared
    float graph (as the report counts the integer graph)."""
    from medqk.convert.passes import prepare
    from medqk.energy import activity as act
    from medqk.energy.counting import count_layers

    graph = prepare(copy.deepcopy(snn.graph))
    activity = act.from_images(graph, [("image", image)], 1)
    layers = count_layers(graph, activity.per_image_synapses())
    return {"macs": sum(l.macs for l in layers), "acs": sum(l.acs for l in layers),
            "events": sum(l.events for l in layers), "taps": sum(l.taps for l in layers)}


def spikingjelly_rules(run: Recorded) -> dict:
    """SpikingJelly's MACs and SynOps re-derived from medqk's IR, with the parts that separate its
    MACs from medqk's exact taps: ``real_taps`` + ``graded_taps`` (spike-fed layers whose graded
    input is not binary) + ``padding`` + ``batchnorm`` = MACs; ``upsampling`` is counted by medqk only."""
    from medqk.convert.graph import SPIKE
    from medqk.energy.counting import exact_macs

    parts = dict.fromkeys(("real_taps", "graded_taps", "padding", "batchnorm", "upsampling"), 0)
    synops = 0
    for node in run.graph.nodes():
        if node.op.type == "batchnorm":  # eval BatchNorm: one MAC per element (affine)
            parts["batchnorm"] += int(np.prod(node.tensor.shape))
        if not node.op.synaptic:
            continue
        source, x = run.graph[node.inputs[0]].tensor, run.input_of(node)
        exact = exact_macs(node.op, source.shape)
        if node.op.type == "upsample":
            parts["upsampling"] += exact
        elif _is_binary(x, (0, 1)):
            synops += binarised_ops(node.op, x != 0)
        else:
            parts["graded_taps" if source.kind == SPIKE else "real_taps"] += exact
            parts["padding"] += node.op.dense_macs(source.shape) - exact
    macs = parts["real_taps"] + parts["graded_taps"] + parts["padding"] + parts["batchnorm"]
    return {"MACs": macs, "SynOps": synops, "parts": parts}


def neurobench_rules(run: Recorded) -> dict:
    """NeuroBench's SynapticOperations, Footprint, ConnectionSparsity and ActivationSparsity
    re-derived from medqk's IR (weights and BatchNorm statistics from its arrays, activations from
    its recorded tensors), with ``unseen``: the synaptic layers NeuroBench does not hook."""
    from neurobench.blocks.activation import SUPPORTED_ACTIVATIONS
    from neurobench.blocks.layer import STATELESS_LAYERS

    from medqk.energy.counting import exact_macs
    from medqk.nisf import NISF

    out = {"Effective_MACs": 0, "Effective_ACs": 0, "Dense": 0, "unseen_taps": 0, "unseen": set()}
    zeros = weights = nbytes = batchnorms = 0
    modules = set()
    for node in run.graph.nodes():
        if node.source not in modules and node.op.arrays():  # a module called twice stores its arrays once
            modules.add(node.source)
            nbytes += 4 * sum(a.size for a in node.op.arrays().values())  # float32 parameters and statistics
            batchnorms += node.op.type == "batchnorm"
            if isinstance(run.module_of(node), STATELESS_LAYERS):
                zeros, weights = zeros + int(np.sum(node.op.weight == 0)), weights + node.op.weight.size
        if not node.op.synaptic:
            continue
        in_shape = run.graph[node.inputs[0]].tensor.shape
        if not isinstance(run.module_of(node), STATELESS_LAYERS):
            out["unseen_taps"] += exact_macs(node.op, in_shape)
            out["unseen"].add("upsampling" if node.op.type == "upsample" else type(run.module_of(node)).__name__)
            continue
        x = run.input_of(node)
        out["Effective_ACs" if _is_binary(x, (0, 1, -1)) else "Effective_MACs"] += binarised_ops(node.op, x != 0)
        out["Dense"] += exact_macs(node.op, in_shape)
    activations = (*SUPPORTED_ACTIVATIONS, NISF)
    fired = total = 0
    for node in run.graph.nodes():
        if not node.op.synaptic and isinstance(run.module_of(node), activations):
            fired, total = fired + int(np.count_nonzero(run.values[node.name])), total + run.values[node.name].size
    out.update(Footprint=nbytes + 8 * batchnorms,  # + each BatchNorm's int64 num_batches_tracked
               ConnectionSparsity=round(zeros / weights, 3) if weights else 0.0,
               ActivationSparsity=(total - fired) / total if total else 0.0)
    return out


# -- the table ----------------------------------------------------------------------------------------

def _row(network: str, tool: str, metric: str, value, medqk_value, why: str) -> dict:
    agree = value is not None and value == medqk_value
    if not agree and isinstance(value, float) and medqk_value and abs(value - medqk_value) <= 1e-6 * abs(medqk_value):
        why += (f" (off by {value - medqk_value:+.3g}, {abs(value / medqk_value - 1):.1g} relative: the tool runs the "
                "model and sums each layer's counts in float32, medqk counts in float64 and integers)")
    return {"network": network, "tool": tool, "metric": metric, "value": value, "medqk_value": medqk_value,
            "agree": agree, "why": why}


def _n(v: float) -> str:
    return f"{v:,.0f}"


def network_rows(network: str, run: Recorded, sj: dict | None, nb: dict | None, own: dict) -> list[dict]:
    """The rows of one network: each tool figure, medqk's figure under the tool's rule, and why it
    differs from medqk's own figures (``own``: macs, acs, events, taps). A tool that failed on the
    network (an exception instead of its figures) gets one row naming the failure."""
    rows = []
    for tool, measured in (("spikingjelly", sj), ("neurobench", nb)):
        if isinstance(measured, Exception):
            rows.append(_row(network, tool, "(all)", None, None, f"{tool} cannot count this network: "
                                                                 f"{type(measured).__name__}: {measured}"))
    sj, nb = (None if isinstance(m, Exception) else m for m in (sj, nb))
    if sj is not None:
        mine = spikingjelly_rules(run)
        p = mine["parts"]
        graded = (f" + {_n(p['graded_taps'])} taps of spike-fed layers, whose graded NISF input (0..D) is not binary, "
                  f"so MACs, not ACs (medqk: {_n(own['acs'])} ACs, {_n(own['events'])} events)") if p["graded_taps"] else ""
        rows.append(_row(network, "spikingjelly", "MACs", sj["MACs"], mine["MACs"],
                         f"medqk's {_n(own['macs'])} exact-tap MACs - {_n(p['upsampling'])} of upsampling (no aten rule)"
                         f"{graded} + {_n(p['padding'])} kernel taps on zero padding + {_n(p['batchnorm'])} BatchNorm "
                         f"elements (medqk folds BatchNorm into the convolutions)"))
        rows.append(_row(network, "spikingjelly", "SynOps", sj["SynOps"], mine["SynOps"],
                         "only inputs with values 0 and 1 are spikes there" + (
                             f"; medqk: {_n(own['events'])} graded events ({_n(own['acs'])} unit-spike ACs)"
                             if own["acs"] else "; an ANN has none")))
    if nb is not None:
        mine = neurobench_rules(run)
        unseen = (f"; not hooked: {', '.join(sorted(mine['unseen']))} ({_n(mine['unseen_taps'])} taps)"
                  if mine["unseen"] else "")
        rows += [
            _row(network, "neurobench", "Effective_MACs", nb["Effective_MACs"], mine["Effective_MACs"],
                 "one op per nonzero input per connection with a nonzero weight (zeros skipped"
                 + (", graded spikes counted as MACs, binarised: one op per nonzero spike" if own["acs"] else "")
                 + f"); medqk: {_n(own['macs'])} exact-tap MACs{unseen}"),
            _row(network, "neurobench", "Effective_ACs (one op per nonzero spike)", nb["Effective_ACs"],
                 mine["Effective_ACs"], "inputs of values 0 and +-1 only are spikes there" + (
                     f"; medqk: {_n(own['events'])} events (one per nonzero spike), {_n(own['acs'])} ACs (s per spike of "
                     "value s)" if own["acs"] else "")),
            _row(network, "neurobench", "Dense", nb["Dense"], mine["Dense"],
                 f"every connection, exact taps as medqk's (medqk: {_n(own['taps'])} taps){unseen}"),
            _row(network, "neurobench", "Footprint", nb["Footprint"], mine["Footprint"],
                 "bytes of parameters and buffers: BatchNorm running statistics and int64 counters included"),
            _row(network, "neurobench", "ConnectionSparsity", nb["ConnectionSparsity"], mine["ConnectionSparsity"],
                 "zero weights of the hooked layers, rounded to 3 decimals"),
            _row(network, "neurobench", "ActivationSparsity", nb["ActivationSparsity"], mine["ActivationSparsity"],
                 "zero outputs of NISF, ReLU and Sigmoid modules"),
        ]
    return rows


def _own_counts(network: str, run: Recorded, image: np.ndarray) -> dict:
    from medqk.energy.counting import count_layers

    if network == "snn":
        return medqk_counts(run, image)
    taps = sum(layer.macs for layer in count_layers(run.graph, all_real=True))
    return {"macs": taps, "acs": 0, "events": 0, "taps": taps}


def peers_rows(model, image: np.ndarray, tools: tuple[str, ...] = TOOLS, unet_width: int = 64) -> tuple[list[dict], dict]:
    """Every row for the SNN, its ANN twin and the U-Net (the paper's: ``unet_width`` 64) on
    ``image`` [C, H, W]; and the seconds each tool took."""
    import torch

    from medqk.unet import UNet

    torch.manual_seed(0)  # the U-Net's initial weights: any, as long as both sides see the same
    unet = UNet(in_channels=image.shape[0], width=unet_width).eval()
    modules = {"snn": model.eval(), "ann-twin": ann_twin_module(model), "unet": unet}
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    rows, seconds = [], dict.fromkeys(tools, 0.0)
    for network, module in modules.items():
        run = record(module, image)
        measured = {}
        for tool, fn in (("spikingjelly", run_spikingjelly), ("neurobench", run_neurobench)):
            if tool in tools:
                start = time.perf_counter()
                try:
                    measured[tool] = fn(module, x)
                except Exception as error:  # a part the tool cannot count: named in the table
                    measured[tool] = error
                seconds[tool] += time.perf_counter() - start
        rows += network_rows(network, run, measured.get("spikingjelly"), measured.get("neurobench"),
                             _own_counts(network, run, image))
    return rows, seconds


# -- the command --------------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "peers", help="SpikingJelly's and NeuroBench's counts of the same model and image, reconciled with medqk's",
        description="Run SpikingJelly 2.0's op counter (MACs, SynOps) and NeuroBench 2.3's metrics (SynapticOperations, "
                    "Footprint, ConnectionSparsity, ActivationSparsity with NISF registered) on the SNN, its ANN twin "
                    "and the U-Net, on one image; next to each figure, medqk's count under the tool's rule and why it "
                    f"differs from medqk's own figures. Needs the extra medqk[peers].")
    p.add_argument("model", nargs="?", type=Path,
                   help="a checkpoint (.pt), or a directory from `medqk convert` (its source checkpoint is used); "
                        "default: the embedded default model")
    p.add_argument("--image", type=Path, metavar="PATH", help="an image or a .npy float32 [C, H, W] network input; "
                                                              "default: the built-in demo image")
    p.add_argument("--json", type=Path, metavar="F", help='write {"rows": [...], "seconds": {...}} as JSON')
    p.add_argument("--markdown", type=Path, metavar="F", help="write the table as Markdown")
    p.set_defaults(func=run_peers)


def torch_subject(path: Path | None):
    """(torch model, preprocessing) from a checkpoint or a converted directory's source checkpoint."""
    from medqk.checkpoint import load_checkpoint_payload
    from medqk.convert.serialize import is_model_dir, load_model
    from medqk.data.preprocess import Preprocessing
    from medqk.defaults import default_checkpoint_path

    if path is not None and is_model_dir(Path(path)):
        source = load_model(Path(path)).meta.get("source_checkpoint")
        if not source or not Path(source["path"]).is_file():
            raise InputError(f"{path}: peers count the torch model, and this model directory names no checkpoint "
                             "that exists; pass the checkpoint itself")
        path = Path(source["path"])
    model, info = load_checkpoint_payload(Path(path) if path is not None else default_checkpoint_path())
    prep = Preprocessing.from_dict(info["preprocessing"]) if info.get("preprocessing") else Preprocessing()
    return model, prep


HEADER = ("network", "tool", "metric", "tool's figure", "medqk, tool's rule", "agree", "why")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.6g}"
    return f"{v:,.0f}"


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    return [(r["network"], r["tool"], r["metric"], _cell(r["value"]), _cell(r["medqk_value"]),
             "yes" if r["agree"] else "NO", r["why"]) for r in rows]


def format_markdown(rows: list[dict], seconds: dict, subject: str) -> str:
    lines = [f"# medqk energy peers: {subject}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    lines += ["", "Seconds: " + ", ".join(f"{tool} {t:.1f}" for tool, t in seconds.items())]
    return "\n".join(lines) + "\n"


def run_peers(args) -> int:
    import json

    from medqk.data.preprocess import load_network_input
    from medqk.defaults import default_image
    from medqk.outputs import check_files, write_files

    require_tools()
    check_files({"--json": args.json, "--markdown": args.markdown})
    model, prep = torch_subject(args.model)
    in_channels = model.config.in_channels if hasattr(model, "config") else 3
    image = (load_network_input(args.image, prep, in_channels) if args.image
             else default_image(tuple(prep.size)).image)
    subject = f"{args.model.name if args.model else 'default model'} on {args.image.name if args.image else 'the demo image'}"
    console.info(f"running SpikingJelly and NeuroBench on {subject} ({image.shape[1]}x{image.shape[2]}): snn, ann-twin, unet")
    rows, seconds = peers_rows(model, np.asarray(image, dtype=np.float32))
    for r in table_rows(rows):
        console.info("  ".join(r[:6]) + "\n    " + r[6])
    console.info("seconds: " + ", ".join(f"{tool} {t:.1f}" for tool, t in seconds.items()))
    write_files({args.json: lambda p: p.write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2)),
                 args.markdown: lambda p: p.write_text(format_markdown(rows, seconds, subject))})
    return 0
