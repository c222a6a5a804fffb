"""Operation counts on the spike-graph IR, by the conventions of ``../shared/spec/energy-conventions.md``.

A synaptic layer (convolution, transposed convolution, fixed bilinear upsampling) is classified by
the kind of its input tensor:

- real input: every connection is a multiply-accumulate; MACs = ``op.dense_macs`` (convolution:
  outputs x C_in/groups x kh x kw, bias excluded, as thop counts; transposed convolution: inputs x
  C_out x kh x kw, its true MACs; upsampling: 2 taps per output along H, then 2 along W, the
  multiply-adds of the separable form);
- spike input (integer NISF spikes s in 0..D): ACs = sum over input elements of s x fan-out (the
  unit-spike convention, exact at borders and strides), events = the same sum with s -> [s > 0]
  (the graded-spike convention). Both need the spike map, so they come from an ``Activity``.

Everything else is counted per image in its own category (``other_ops``), never in MACs or ACs.
``thop_counts`` applies thop's own rules to a traced (unfolded) graph, to reproduce the figures the
paper quotes as "GFLOPs".
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from medqk.convert.graph import REAL, SPIKE, Graph, Node
from medqk.convert.passes import infer_tensors
from medqk.convert.synapses import fan_out


@dataclasses.dataclass
class LayerCount:
    """One synaptic layer's operations per image (ACs and events are means over the images)."""

    name: str
    op: str
    input_kind: str
    macs: int
    acs: float = 0.0
    events: float = 0.0


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


def count_layers(graph: Graph, spike_counts: Mapping[str, tuple[float, float]] | None = None,
                 all_real: bool = False) -> list[LayerCount]:
    """One ``LayerCount`` per synaptic node. ``spike_counts`` gives (ACs, events) per image for the
    spike-fed layers (``Activity.synapses``); ``all_real`` counts every layer as MACs (the ANN twin)."""
    layers = []
    for node in synaptic_nodes(graph):
        kind = REAL if all_real else input_kind(graph, node)
        in_shape = graph[node.inputs[0]].tensor.shape
        if kind == SPIKE:
            if spike_counts is None or node.name not in spike_counts:
                raise ValueError(f"no spike activity for the spike-fed layer {node.name}")
            acs, events = spike_counts[node.name]
            layers.append(LayerCount(node.name, node.op.type, kind, 0, acs, events))
        else:
            layers.append(LayerCount(node.name, node.op.type, kind, node.op.dense_macs(in_shape)))
    return layers


def macs_by_op(layers: list[LayerCount]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in layers:
        out[layer.op] = out.get(layer.op, 0) + layer.macs
    return out


# -- other operations ----------------------------------------------------------------------------

def _elements(shape) -> int:
    return int(np.prod(shape))


def _other_op(graph: Graph, node: Node) -> tuple[str, int] | None:
    """(category, count per image) of a non-synaptic node, or None for pure data movement."""
    t, op = node.tensor, node.op
    n = _elements(t.shape)
    ins = [graph[i].tensor for i in node.inputs]
    if op.type == "nisf":
        return "neuron_updates", n
    if op.type == "add":
        return "additions", (len(ins) - 1) * n
    if op.type == "group_sum":  # the channel sums of SDQK's heads
        return "additions", _elements(ins[0].shape) - n
    if op.type == "mul":
        spikes = all(x.kind == SPIKE for x in ins)
        return ("spike_products" if spikes else "real_products"), n
    if op.type in ("affine", "batchnorm"):  # a per-channel multiply and add
        return "affine", n
    if op.type == "complement":
        return "complements", n
    if op.type == "sigmoid":
        return "output_nonlinearity", n
    if op.type == "relu":
        return "relu", n
    if op.type == "maxpool2d":
        return "pooling_comparisons", n * (op.kernel * op.kernel - 1)
    if op.synaptic and getattr(op, "bias", None) is not None:
        return "bias_additions", n
    return None


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
    "conv2d": "same rule (outputs x C_in/groups x k^2)",
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
            row["analyzer_macs"] += node.op.dense_macs(traced[node.inputs[0]].tensor.shape)
    return list(rows.values())
