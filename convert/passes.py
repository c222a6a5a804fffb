"""Graph passes: BatchNorm folding, NISF normalisation folding, dead-node removal, tensor
inference (shape, kind, scale), validation and scheduling. ``prepare`` runs them in order.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import neurons
from medqk.convert import synapses as syn
from medqk.convert.graph import REAL, SPIKE, Graph, Node, TensorInfo
from medqk.convert.io import Input
from medqk.convert.op import rule
from medqk.errors import MedqkError


class GraphError(MedqkError):
    """A graph that breaks an IR rule (named node, what is wrong)."""


def fold_batchnorm(graph: Graph) -> None:
    """Fold each BatchNorm into the convolution it directly follows (when the convolution feeds
    nothing else); any other BatchNorm (e.g. after SpikeConv's residual sum) becomes an affine."""
    for node in graph.nodes():
        if not isinstance(node.op, ew.BatchNorm):
            continue
        scale, offset = node.op.scale_offset()
        producer = graph[node.inputs[0]]
        if isinstance(producer.op, syn.Conv2d) and graph.consumers(producer.name) == [node.name]:
            conv = producer.op
            conv.weight = conv.weight * scale[:, None, None, None]
            bias = conv.bias if conv.bias is not None else np.zeros(conv.out_channels)
            conv.bias = bias * scale + offset
            graph.replace_uses(node.name, producer.name)
            graph.remove(node.name)
        else:
            node.op = ew.Affine(scale=scale, offset=offset)


def _exact_scale(inputs: list[TensorInfo]) -> float | None:
    """The common scale if every input is an exact spike combination with one scale."""
    if inputs and all(t.exact for t in inputs) and len({t.scale for t in inputs}) == 1:
        return inputs[0].scale
    return None


# -- typing rules: (node, input tensors, output shape) -> the output tensor ----------------------

def _real_value(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    """A computed real value: scale 1 in a float graph; a quantized graph keeps its fixed-point format."""
    t = node.tensor
    quantized = t is not None and t.frac_bits is not None
    return TensorInfo(shape, REAL, t.scale if quantized else 1.0, frac_bits=t.frac_bits if quantized else None)


def _spike_map(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    op = node.op
    return TensorInfo(shape, SPIKE, op.spike_scale if op.integer_output else 1.0, op.levels, exact=op.integer_output)


def _moves_values(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    """Ops that move, select or negate values (complement, broadcast, concat, slice, max pooling):
    a spike map stays one, an exact combination stays exact, anything else keeps the input's scale."""
    scale = _exact_scale(inputs)
    if all(t.kind == SPIKE for t in inputs):
        return TensorInfo(shape, SPIKE, scale if scale is not None else 1.0, inputs[0].levels, exact=scale is not None)
    if scale is not None:
        return TensorInfo(shape, REAL, scale, exact=True)
    return TensorInfo(shape, REAL, inputs[0].scale)


def _sums_values(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    """Sums without weights (group_sum): exact on exact inputs, never a spike map."""
    scale = _exact_scale(inputs)
    return TensorInfo(shape, REAL, scale if scale is not None else inputs[0].scale, exact=scale is not None)


def _add(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    if _exact_scale(inputs) is not None and all(abs(c) == 1 for c in node.op.coefficients):
        return TensorInfo(shape, REAL, inputs[0].scale, exact=True)
    return _real_value(node, inputs, shape)


def _mul(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    return TensorInfo(shape, REAL, inputs[0].scale * inputs[1].scale, exact=all(t.exact for t in inputs))


def _relu(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    return TensorInfo(shape, REAL, inputs[0].scale)


def _upsample(node: Node, inputs: list[TensorInfo], shape) -> TensorInfo:
    """Nearest upsampling copies values (a spike map stays one); bilinear interpolation is convex,
    so it keeps the input's scale and fixed-point format."""
    if node.op.mode == "nearest":
        return _moves_values(node, inputs, shape)
    return TensorInfo(shape, REAL, inputs[0].scale, frac_bits=inputs[0].frac_bits)


#: op class -> its typing rule
TYPING = {
    Input: _real_value, syn.Conv2d: _real_value, syn.ConvTranspose2d: _real_value, syn.Upsample: _upsample,
    neurons.NISF: _spike_map, neurons.ReLU: _relu, neurons.Sigmoid: _real_value, neurons.Softmax: _real_value,
    ew.Add: _add, ew.Mul: _mul, ew.Affine: _real_value, ew.BatchNorm: _real_value,
    ew.Complement: _moves_values, ew.GroupSum: _sums_values, ew.GroupBroadcast: _moves_values,
    ew.Concat: _moves_values, ew.ChannelSlice: _moves_values, ew.MaxPool2d: _moves_values,
}


def infer_tensor(node: Node, inputs: list[TensorInfo]) -> TensorInfo:
    """Shape, kind, scale and exactness of ``node``'s output from its inputs' (``TYPING``)."""
    op = node.op
    try:
        shape = tuple(op.out_shape([t.shape for t in inputs]))
        typing = rule(TYPING, op, "typing rule")
    except ValueError as error:
        raise GraphError(f"node {node.name} ({op.type}): {error}") from error
    return typing(node, inputs, shape)


def infer_tensors(graph: Graph) -> None:
    for node in graph.nodes():
        node.tensor = infer_tensor(node, [graph[i].tensor for i in node.inputs])


def fold_nisf_normalization(graph: Graph) -> None:
    """Let spikes travel as integers 0..D: each NISF outputs s instead of s/D, and every consumer
    absorbs the scale of what it reads (convolution weights, NISF and sigmoid input scales, add
    coefficients, affine scales, the complement's one). Exact spike combinations (products,
    head sums, complements) keep their own scale 1/D^k and stay integers."""
    for node in graph.nodes():
        if isinstance(node.op, neurons.NISF):
            node.op.integer_output = True
    for node in graph.nodes():
        inputs = [graph[i].tensor for i in node.inputs]
        _absorb_input_scales(node, inputs)
        node.tensor = infer_tensor(node, inputs)


def _scale_weights(op, scales, inputs):
    op.weight = op.weight * scales[0]


def _scale_input(op, scales, inputs):
    op.in_scale = op.in_scale * scales[0]


def _scale_affine(op, scales, inputs):
    op.scale = op.scale * scales[0]


def _scale_one(op, scales, inputs):
    op.one = op.one / scales[0]


def _scale_coefficients(op, scales, inputs):
    if _exact_scale(inputs) is None:  # an exact sum of spikes keeps its scale in its tensor
        op.coefficients = tuple(c * s for c, s in zip(op.coefficients, scales))


def _same_scales(op, scales, inputs):
    if len(set(scales)) > 1:
        raise ValueError(f"{op.type} of tensors with different scales {scales}")


def _scale_in_tensor(op, scales, inputs):
    """Linear in its input, or a selection of it: the output tensor carries the input's scale."""


#: op class -> how it absorbs its inputs' scales when spikes become integers
ABSORB_SCALES = {
    Input: _scale_in_tensor, syn.Conv2d: _scale_weights, syn.ConvTranspose2d: _scale_weights,
    syn.Upsample: _scale_in_tensor, neurons.NISF: _scale_input, neurons.Sigmoid: _scale_input,
    neurons.Softmax: _scale_input, neurons.ReLU: _scale_in_tensor, ew.Add: _scale_coefficients,
    ew.Mul: _scale_in_tensor, ew.Affine: _scale_affine, ew.BatchNorm: _scale_in_tensor,
    ew.Complement: _scale_one, ew.GroupSum: _scale_in_tensor, ew.GroupBroadcast: _scale_in_tensor,
    ew.Concat: _same_scales, ew.ChannelSlice: _scale_in_tensor, ew.MaxPool2d: _scale_in_tensor,
}


def _absorb_input_scales(node: Node, inputs: list[TensorInfo]) -> None:
    scales = [t.scale for t in inputs]
    if not scales or all(s == 1.0 for s in scales):
        return
    try:
        rule(ABSORB_SCALES, node.op, "scale folding")(node.op, scales, inputs)
    except ValueError as error:
        raise GraphError(f"node {node.name}: {error}") from error


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes whose result never reaches the output; returns how many."""
    g = graph.nx_graph()
    sinks = [n for n in g if g.out_degree(n) == 0]
    keep = {graph.output.name} if len(sinks) == 1 else {n for n in sinks if type(graph[n].op) in neurons.OUTPUT_ACTIVATIONS}
    if not keep:
        return 0
    live = set(keep)
    for name in keep:
        live |= nx.ancestors(g, name)
    dead = [n for n in list(g) if n not in live]
    for name in reversed([n.name for n in graph.nodes() if n.name in dead]):
        graph.remove(name)
    return len(dead)


def schedule(graph: Graph) -> int:
    """Set each node's depth (longest path from the input); returns the graph's depth."""
    depth: dict[str, int] = {}
    for name in nx.topological_sort(graph.nx_graph()):
        node = graph[name]
        node.depth = max((depth[i] + 1 for i in node.inputs), default=0)
        depth[name] = node.depth
    return max(depth.values(), default=0)


def validate(graph: Graph, quantized: bool = False) -> None:
    """Check IR rules; raise GraphError naming the node and the rule."""
    if not nx.is_directed_acyclic_graph(graph.nx_graph()):
        raise GraphError("the graph has a cycle")
    graph.input, graph.output  # exactly one of each (raises otherwise)
    for node in graph.nodes():
        arity = type(node.op).arity
        if arity is not None and len(node.inputs) != arity:
            raise GraphError(f"node {node.name} ({node.op.type}) has {len(node.inputs)} inputs; expects {arity}")
        if arity is None and not node.inputs:
            raise GraphError(f"node {node.name} ({node.op.type}) has no inputs")
        expected = infer_tensor(node, [graph[i].tensor for i in node.inputs])
        if node.tensor is None or tuple(node.tensor.shape) != expected.shape:
            raise GraphError(f"node {node.name}: stored shape {node.tensor and node.tensor.shape} != inferred {expected.shape}")
        if quantized:
            if not node.op.is_quantized:
                raise GraphError(f"node {node.name} ({node.op.type}) is not quantized")


def prepare(graph: Graph) -> Graph:
    """The standard pipeline from a traced graph to a float graph ready for quantization."""
    infer_tensors(graph)
    fold_batchnorm(graph)
    remove_dead_nodes(graph)
    infer_tensors(graph)
    fold_nisf_normalization(graph)
    schedule(graph)
    validate(graph)
    return graph
