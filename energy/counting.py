"""Operation counts on the spike-graph IR, by the conventions of ``../shared/spec/energy-conventions.md``.

One tap rule for every network (SNN, ANN twin, U-Net, any baseline): **exact taps**, the connections
that exist, borders and strides included (a kernel tap on zero padding is not an operation). A
synaptic layer (convolution, transposed convolution, fixed bilinear upsampling) is classified by
the kind of its input tensor:

- real input: every connection is a multiply-accumulate; MACs = ``exact_macs`` (convolution: the
  sum over outputs of the in-bounds taps x C_in/groups; transposed convolution: inputs x C_out x kh
  x kw within the output; upsampling: 2 taps per output along H, then 2 along W, the separable form);
- spike input (integer NISF spikes s in 0..D): ACs = sum over input elements of s x fan-out (the
  unit-spike convention), events = the same sum with s -> [s > 0] (the graded-spike convention),
  with the same exact fan-out. Both need the spike map, so they come from an ``Activity``.

``thop_macs`` keeps thop's rule beside it (every kernel tap, padding included), for comparison with
papers. Everything else is counted per image in its own category (``other_ops``), never in MACs or
ACs. ``thop_counts`` applies thop's own rules to a traced graph, to reproduce the figures the paper
quotes as "GFLOPs".
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import neurons
from medqk.convert import synapses as syn
from medqk.convert.graph import REAL, SPIKE, Graph, Node
from medqk.convert.io import Input
from medqk.convert.op import rule
from medqk.convert.passes import infer_tensors
from medqk.convert.synapses import fan_out


@dataclasses.dataclass
class LayerCount:
    """One synaptic layer's operations per image (ACs, events, spikes_in: means over the images),
    with the sizes a memory-traffic model needs."""

    name: str
    op: str
    input_kind: str
    #: multiply-accumulates, exact taps (0 for a spike-fed layer)
    macs: int
    #: the layer's connections (exact taps): its MACs if its input were real
    taps: int
    #: thop's count of the layer, spikes or not (every kernel tap, padding included)
    thop_macs: int
    #: elements of the input and output maps, stored weights and bias values (one bias is read and
    #: added per output when there are any)
    inputs: int
    outputs: int
    weights: int
    biases: int
    #: output channels x kernel positions: the weight addresses a dense layer walks through
    kernel_positions: int
    acs: float = 0.0
    events: float = 0.0
    #: nonzero input spikes (spike-fed layers)
    spikes_in: float = 0.0


def synaptic_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes() if n.op.synaptic]


def input_kind(graph: Graph, node: Node) -> str:
    """``spike`` only for an integer NISF spike map; sums of spikes and real maps are real."""
    return graph[node.inputs[0]].tensor.kind


def unit_count(op, values: np.ndarray) -> int:
    """sum over input elements of values x fan-out, for values [N, C, H, W] (summed over the batch).

    With integer spikes s this is the ACs (= the layer run with all-ones weights and no bias on s,
    summed); with ``s > 0`` it is the synaptic events."""
    per_channel, fh, fw = fan_out(op, tuple(values.shape[1:]))
    plane = np.asarray(values, dtype=np.int64).sum(axis=(0, 1))  # exact: spikes are integers
    return int(per_channel * (fh @ plane @ fw))


def exact_macs(op, in_shape: tuple[int, int, int]) -> int:
    """A layer's connections on a real input: the sum over input elements of their exact fan-out
    (taps on padding excluded). Upsampling keeps its separable form (it has no padding)."""
    if op.type == "upsample":
        return op.dense_macs(in_shape)
    per_channel, fh, fw = fan_out(op, in_shape)
    return int(in_shape[0] * per_channel * fh.sum() * fw.sum())


def _layer(graph: Graph, node: Node, kind: str, spikes: tuple[float, float, float] | None) -> LayerCount:
    op, in_shape = node.op, graph[node.inputs[0]].tensor.shape
    taps = exact_macs(op, in_shape)
    outputs = _elements(node.tensor.shape)
    weight = getattr(op, "weight", None)  # upsampling: fixed interpolation weights, none stored
    kernel_positions = 0 if weight is None else op.out_channels * int(np.prod(op.kernel))
    acs, events, spikes_in = spikes or (0.0, 0.0, 0.0)
    return LayerCount(node.name, op.type, kind, 0 if kind == SPIKE else taps, taps, _thop_count(graph, node),
                      _elements(in_shape), outputs, 0 if weight is None else int(weight.size),
                      0 if getattr(op, "bias", None) is None else int(op.bias.size), kernel_positions, acs, events, spikes_in)


def count_layers(graph: Graph, spike_counts: Mapping[str, tuple[float, float, float]] | None = None,
                 all_real: bool = False) -> list[LayerCount]:
    """One ``LayerCount`` per synaptic node. ``spike_counts`` gives (ACs, events, nonzero input
    spikes) per image for the spike-fed layers (``Activity.per_image_synapses``); ``all_real``
    counts every layer as MACs (the ANN twin)."""
    layers = []
    for node in synaptic_nodes(graph):
        kind = REAL if all_real else input_kind(graph, node)
        if kind == SPIKE and (spike_counts is None or node.name not in spike_counts):
            raise ValueError(f"no spike activity for the spike-fed layer {node.name}")
        layers.append(_layer(graph, node, kind, spike_counts[node.name] if kind == SPIKE else None))
    return layers


def macs_by_op(layers: list[LayerCount]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in layers:
        out[layer.op] = out.get(layer.op, 0) + layer.macs
    return out


# -- other operations ----------------------------------------------------------------------------

def _elements(shape) -> int:
    return int(np.prod(shape))


def _neuron_updates(op, ins, n):
    return "neuron_updates", n


def _additions(op, ins, n):
    return "additions", (len(ins) - 1) * n


def _group_sums(op, ins, n):  # the channel sums of SDQK's heads
    return "additions", _elements(ins[0].shape) - n


def _products(op, ins, n):
    return ("spike_products" if all(x.kind == SPIKE for x in ins) else "real_products"), n


def _affine(op, ins, n):  # a per-channel multiply and add
    return "affine", n


def _complements(op, ins, n):
    return "complements", n


def _output_nonlinearity(op, ins, n):
    return "output_nonlinearity", n


def _relu(op, ins, n):
    return "relu", n


def _pooling(op, ins, n):
    return "pooling_comparisons", n * (op.kernel * op.kernel - 1)


def _bias_additions(op, ins, n):
    return ("bias_additions", n) if getattr(op, "bias", None) is not None else None


def _data_movement(op, ins, n):
    return None


#: op class -> (category, count per image) of its work besides synaptic MACs and ACs, or None for
#: pure data movement (synaptic work itself is counted from ``synapses.FAN_OUT``)
OTHER_OPS = {
    Input: _data_movement, syn.Conv2d: _bias_additions, syn.ConvTranspose2d: _bias_additions,
    syn.Upsample: _bias_additions, neurons.NISF: _neuron_updates, neurons.ReLU: _relu,
    neurons.Sigmoid: _output_nonlinearity, neurons.Softmax: _output_nonlinearity, ew.Add: _additions,
    ew.Mul: _products, ew.Affine: _affine, ew.BatchNorm: _affine, ew.Complement: _complements,
    ew.GroupSum: _group_sums, ew.GroupBroadcast: _data_movement, ew.Concat: _data_movement,
    ew.ChannelSlice: _data_movement, ew.MaxPool2d: _pooling,
}


def _other_op(graph: Graph, node: Node) -> tuple[str, int] | None:
    """(category, count per image) of a node's non-synaptic work, or None for pure data movement."""
    counter = rule(OTHER_OPS, node.op, "energy count")
    return counter(node.op, [graph[i].tensor for i in node.inputs], _elements(node.tensor.shape))


def other_ops(graph: Graph) -> dict[str, int]:
    """Counts per image of everything that is not a synaptic MAC or AC, by category."""
    out: dict[str, int] = {}
    for node in graph.nodes():
        item = _other_op(graph, node)
        if item is not None:
            out[item[0]] = out.get(item[0], 0) + item[1]
    return dict(sorted(out.items()))


# -- thop's view -----------------------------------------------------------------------------------

#: thop (Lyken17, 0.1.1.post2209072238) per module call, read from thop/vision/basic_hooks.py and
#: calc_func.py: conv and transposed conv = *output* elements x C_in/groups x kh x kw (bias ignored);
#: BatchNorm2d = 2 x elements, doubled when affine; bilinear nn.Upsample = 11 x output elements;
#: ReLU, MaxPool2d = 0; functional calls (+, *, torch.cat, torch.sigmoid, F.interpolate) and
#: modules without a rule (NISF) are not counted at all.
THOP_WHY = {
    "conv2d": "thop counts every kernel tap (outputs x C_in/groups x k^2), the taps on zero padding included",
    "conv_transpose2d": "thop sizes it by its output: 4x the true MACs of a 2x2 stride-2 up-convolution",
    "batchnorm": "thop: 4 per element; here folded into the preceding convolution (free) or an affine (other_ops)",
    "upsample": "thop: 11 per output (an nn.Upsample module; F.interpolate would count 0); here 2 taps per axis, separable",
}


def _thop_count(graph: Graph, node: Node) -> int:
    op, out = node.op, node.tensor.shape
    if op.type == "conv2d":
        return op.dense_macs(graph[node.inputs[0]].tensor.shape)
    if op.type == "conv_transpose2d":
        c_in = graph[node.inputs[0]].tensor.shape[0]
        return _elements(out) * c_in * int(np.prod(op.kernel))
    if op.type == "batchnorm":
        return 4 * _elements(out)
    if op.type == "upsample":
        return 11 * _elements(out)
    return 0


def thop_counts(traced: Graph) -> dict[str, int]:
    """thop's count per node of a traced graph *before* ``passes.prepare`` (BatchNorms unfolded).

    Assumes upsampling comes from ``nn.Upsample`` modules (as in MedQKFormer and the U-Net); the IR
    does not record whether it was a module or ``F.interpolate``, which thop would not count."""
    infer_tensors(traced)
    return {n.name: c for n in traced.nodes() if (c := _thop_count(traced, n))}


def thop_reconciliation(traced: Graph) -> list[dict]:
    """Per op type: thop's count next to this analyzer's MACs (all inputs real), and why they differ."""
    thop = thop_counts(traced)
    rows: dict[str, dict] = {}
    for node in traced.nodes():
        if node.name not in thop:
            continue
        row = rows.setdefault(node.op.type, {"op": node.op.type, "thop": 0, "analyzer_macs": 0,
                                             "why": THOP_WHY[node.op.type]})
        row["thop"] += thop[node.name]
        if node.op.synaptic:
            row["analyzer_macs"] += exact_macs(node.op, traced[node.inputs[0]].tensor.shape)
    return list(rows.values())
