"""Graph passes: BatchNorm folding, NISF normalisation folding, dead-node removal, tensor
inference (shape, kind, scale), validation and scheduling. ``prepare`` runs them in order.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert.graph import REAL, SPIKE, Graph, Node, TensorInfo
from medqk.errors import MedqkError

#: ops that only exist in float graphs (ANN baselines, or before folding)
FLOAT_ONLY = ("batchnorm", "conv_transpose2d", "maxpool2d", "relu")


class GraphError(MedqkError):
    """A graph that breaks an IR rule (named node, what is wrong)."""


def fold_batchnorm(graph: Graph) -> None:
    """Fold each BatchNorm into the convolution it directly follows (when the convolution feeds
    nothing else); any other BatchNorm (e.g. after SpikeConv's residual sum) becomes an affine."""
    for node in graph.nodes():
        if node.op.type != "batchnorm":
            continue
        scale, offset = node.op.scale_offset()
        producer = graph[node.inputs[0]]
        if producer.op.type == "conv2d" and graph.consumers(producer.name) == [node.name]:
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


def infer_tensor(node: Node, inputs: list[TensorInfo]) -> TensorInfo:
    """Shape, kind, scale and exactness of ``node``'s output from its inputs' (one rule per op)."""
    op = node.op
    try:
        shape = tuple(op.out_shape([t.shape for t in inputs]))
    except ValueError as error:
        raise GraphError(f"node {node.name} ({op.type}): {error}") from error
    if op.type == "nisf":
        return TensorInfo(shape, SPIKE, 1.0 / op.levels if op.integer_output else 1.0, op.levels, exact=op.integer_output)
    spikes_in = bool(inputs) and all(t.kind == SPIKE for t in inputs)
    if op.type in ("complement", "group_broadcast", "concat") and spikes_in:
        scale = _exact_scale(inputs)
        return TensorInfo(shape, SPIKE, scale if scale is not None else 1.0, inputs[0].levels, exact=scale is not None)
    if op.type in ("complement", "group_sum", "group_broadcast", "concat"):
        scale = _exact_scale(inputs)
        if scale is not None:
            return TensorInfo(shape, REAL, scale, exact=True)
    if op.type == "mul" and all(t.exact for t in inputs):
        return TensorInfo(shape, REAL, inputs[0].scale * inputs[1].scale, exact=True)
    if op.type == "add" and _exact_scale(inputs) is not None and all(abs(c) == 1 for c in op.coefficients):
        return TensorInfo(shape, REAL, inputs[0].scale, exact=True)
    if op.type in ("relu", "maxpool2d", "group_sum", "group_broadcast", "concat", "complement", "mul"):
        scale = inputs[0].scale if op.type != "mul" else inputs[0].scale * inputs[1].scale
        return TensorInfo(shape, REAL, scale)
    return TensorInfo(shape, REAL, node.tensor.scale if node.tensor and node.tensor.frac_bits is not None else 1.0,
                      frac_bits=node.tensor.frac_bits if node.tensor else None)


def infer_tensors(graph: Graph) -> None:
    for node in graph.nodes():
        node.tensor = infer_tensor(node, [graph[i].tensor for i in node.inputs])


def fold_nisf_normalization(graph: Graph) -> None:
    """Let spikes travel as integers 0..D: each NISF outputs s instead of s/D, and every consumer
    absorbs the scale of what it reads (convolution weights, NISF and sigmoid input scales, add
    coefficients, affine scales, the complement's one). Exact spike combinations (products,
    head sums, complements) keep their own scale 1/D^k and stay integers."""
    for node in graph.nodes():
        if node.op.type == "nisf":
            node.op.integer_output = True
    for node in graph.nodes():
        inputs = [graph[i].tensor for i in node.inputs]
        _absorb_input_scales(node, inputs)
        node.tensor = infer_tensor(node, inputs)


def _absorb_input_scales(node: Node, inputs: list[TensorInfo]) -> None:
    op = node.op
    scales = [t.scale for t in inputs]
    if not scales or all(s == 1.0 for s in scales):
        return
    if op.type in ("conv2d", "conv_transpose2d"):
        op.weight = op.weight * scales[0]
    elif op.type in ("nisf", "sigmoid"):
        op.in_scale = op.in_scale * scales[0]
    elif op.type == "affine":
        op.scale = op.scale * scales[0]
    elif op.type == "complement":
        op.one = op.one / scales[0]
    elif op.type == "add" and _exact_scale(inputs) is None:
        op.coefficients = tuple(c * s for c, s in zip(op.coefficients, scales))
    elif op.type == "concat" and len(set(scales)) > 1:
        raise GraphError(f"node {node.name}: concat of tensors with different scales {scales}")


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes whose result never reaches the output; returns how many."""
    g = graph.nx_graph()
    sinks = [n for n in g if g.out_degree(n) == 0]
    keep = {graph.output.name} if len(sinks) == 1 else {n for n in sinks if graph[n].op.type == "sigmoid"}
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
            if node.op.type in FLOAT_ONLY:
                raise GraphError(f"node {node.name}: {node.op.type} has no integer form (float graphs only)")
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
