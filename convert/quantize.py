"""Loihi-style integer quantization of a prepared float graph.

- Weights: 8-bit signed mantissas with one power-of-two exponent per layer.
- Real-valued tensors: 24-bit fixed point with ``frac_bits`` chosen per tensor from the largest
  magnitude seen on calibration images (one bit of headroom, at most ``MAX_FRAC_BITS``).
- Spikes and exact spike combinations stay integers at their own scale (1/D, 1/D^2).
- NISF: an integer threshold comparison, i.e. a rounding shift and a clip.
- Every rescaling is a multiplier and a shift; for power-of-two scales the multiplier is 1.

``quantize`` returns a new graph (the float graph is left untouched) and a per-node report of the
quantization error and saturation on the calibration images.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import interpret_float, interpret_int, neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import STATE_BITS, quantize_mantissa
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input, quantize_input
from medqk.convert.op import FLOAT_ONLY, OpRefused, rule
from medqk.convert.passes import GraphError, schedule, validate

MAX_FRAC_BITS = 16
#: magnitude headroom over the calibration maximum (factor 2 = one bit)
HEADROOM = 2.0
#: mantissa width of per-channel affine multipliers
AFFINE_BITS = 16
#: fractional bits of the fixed bilinear-upsampling weights
UPSAMPLE_FRAC_BITS = 12
#: shift used for rescalings that are not powers of two
RESCALE_SHIFT = 24


@dataclasses.dataclass
class NodeQuantReport:
    name: str
    op: str
    frac_bits: int | None
    rel_rms_error: float
    max_abs_error: float
    saturated: int
    #: spike maps only: fraction of spikes that differ from the float graph's
    spike_mismatch: float | None = None


def choose_frac_bits(max_abs: float) -> int:
    if max_abs <= 0:
        return MAX_FRAC_BITS
    return int(max(0, min(MAX_FRAC_BITS, STATE_BITS - 1 - math.ceil(math.log2(max_abs * HEADROOM)))))


def multiplier_shift(ratio: float) -> tuple[int, int]:
    """Integers (M, k) with ratio == M * 2**-k exactly for powers of two, else to 24 bits."""
    if ratio == 0:
        return 0, 0
    mantissa, exponent = math.frexp(abs(ratio))
    if mantissa == 0.5:
        k = 1 - exponent
        return (1 if ratio > 0 else -1), k
    return int(round(ratio * 2**RESCALE_SHIFT)), RESCALE_SHIFT


def _ratio(node: Node) -> float:
    """int stored value x this = float-graph stored value (2**-frac for reals, 1 for exact)."""
    t = node.tensor
    return 2.0 ** -t.frac_bits if t.frac_bits is not None else 1.0


def calibrate(graph: Graph, images: np.ndarray) -> dict[str, float]:
    """Largest magnitude of every node's stored value over ``images`` (float graph)."""
    peaks: dict[str, float] = {}
    for i in range(len(images)):
        _, values = interpret_float.run(graph, images[i:i + 1], record=True)
        for name, v in values.items():
            peaks[name] = max(peaks.get(name, 0.0), float(np.max(np.abs(v))))
    return peaks


def _set_output_format(node: Node, graph: Graph, peaks: dict[str, float], formats: dict[str, int] | None) -> None:
    t = node.tensor
    if t.exact:
        return
    if type(node.op) in KEEP_INPUT_FORMAT:
        fracs = {graph[i].tensor.frac_bits for i in node.inputs}
        if len(fracs) != 1:
            raise GraphError(f"node {node.name}: inputs with different fixed-point formats {sorted(fracs, key=str)}")
        t.frac_bits = fracs.pop()
        if t.frac_bits is None:
            raise GraphError(f"node {node.name}: {node.op.type} of an integer spike map gives values that are not "
                             "integers; only nearest upsampling keeps spikes integers")
    elif formats is not None:
        if node.name not in formats:
            raise GraphError(f"node {node.name}: no recorded fixed-point format for it (the checkpoint's formats were "
                             "recorded for another network); convert it without them")
        t.frac_bits = int(formats[node.name])
    else:
        t.frac_bits = choose_frac_bits(peaks[node.name])
    t.scale = 2.0 ** -t.frac_bits


# -- quantization rules: (node, graph, input ratios, output ratio) fill the op's QUANTIZED fields --

def _conv2d(node, graph, r_in, r_out):
    op = node.op
    op.weight_mantissa, op.weight_exponent = quantize_mantissa(op.weight * r_in[0])
    bias = op.bias if op.bias is not None else np.zeros(op.out_channels)
    op.bias_acc = np.round(bias / 2.0**op.weight_exponent).astype(np.int64)
    op.shift = -(op.weight_exponent + node.tensor.frac_bits)


def _upsample(node, graph, r_in, r_out):
    node.op.frac_bits = UPSAMPLE_FRAC_BITS


def _nisf(node, graph, r_in, r_out):
    op = node.op
    gain = op.in_scale * r_in[0]
    if op.threshold is None:
        op.multiplier, op.shift = multiplier_shift(gain)
        return
    if gain <= 0:
        raise GraphError(f"node {node.name}: a binary neuron's input scale must be positive, got {gain}")
    # in_scale * real(x) >= threshold  <=>  x >= threshold / gain  <=>  x >= ceil(threshold / gain)
    op.threshold_int = int(math.ceil(op.threshold / gain))


def _add(node, graph, r_in, r_out):
    op = node.op
    pairs = [multiplier_shift(c * r / r_out) for c, r in zip(op.coefficients, r_in)]
    op.multipliers, op.shifts = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _affine(node, graph, r_in, r_out):
    op = node.op
    gain = op.scale * r_in[0] / r_out
    peak = float(np.max(np.abs(gain))) or 1.0
    op.shift = (AFFINE_BITS - 1) - math.ceil(math.log2(peak * (1 + 2.0**-AFFINE_BITS)))
    op.multiplier = np.round(gain * 2.0**op.shift).astype(np.int64)
    op.offset_int = np.round(op.offset / r_out * 2.0**op.shift).astype(np.int64)


def _complement(node, graph, r_in, r_out):
    one = node.op.one / r_in[0]
    if one != round(one):
        raise GraphError(f"node {node.name}: complement constant {one} is not an integer in the input's format")
    node.op.one = float(round(one))


def _mul(node, graph, r_in, r_out):
    if not all(graph[i].tensor.exact for i in node.inputs):
        raise GraphError(f"node {node.name}: only products of spike maps quantize exactly; this one multiplies real values")


def _output_activation(node, graph, r_in, r_out):
    if graph.output is not node:  # integer graphs pass the logits through; the host applies it
        raise GraphError(f"node {node.name}: {node.op.type} quantizes only as the network's output (it is computed "
                         "on the host from the integer logits)")
    node.op.in_scale = node.op.in_scale * r_in[0]


def _unchanged(node, graph, r_in, r_out):
    """Moves, selects or sums integers exactly: nothing to quantize."""



#: op class -> its quantization rule
QUANTIZERS = {
    Input: _unchanged, syn.Conv2d: _conv2d, syn.Upsample: _upsample, syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: _nisf, neurons.Sigmoid: _output_activation, neurons.Softmax: _output_activation,
    neurons.ReLU: FLOAT_ONLY, ew.Add: _add, ew.Mul: _mul, ew.Affine: _affine, ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: _complement, ew.GroupSum: _unchanged, ew.GroupBroadcast: _unchanged,
    ew.Concat: _unchanged, ew.ChannelSlice: _unchanged, ew.MaxPool2d: _unchanged,
}
#: ops whose output keeps its input's fixed-point format (pass-through, selection, max, convex
#: interpolation); every other real output gets its own, from calibration
KEEP_INPUT_FORMAT = frozenset({syn.Upsample, neurons.Sigmoid, neurons.Softmax, ew.GroupBroadcast, ew.GroupSum,
                               ew.Concat, ew.ChannelSlice, ew.MaxPool2d})


def _quantize_op(node: Node, graph: Graph) -> None:
    try:
        quantizer = rule(QUANTIZERS, node.op, "integer form")
    except OpRefused as error:
        raise GraphError(f"node {node.name}: {error}") from error
    quantizer(node, graph, [_ratio(graph[i]) for i in node.inputs], _ratio(node))


def quantize(graph: Graph, calibration_images: np.ndarray,
             formats: dict[str, int] | None = None) -> tuple[Graph, list[NodeQuantReport]]:
    """Integer twin of a prepared float graph, calibrated on float images [N, C, H, W]; with
    ``formats`` (``recorded_formats`` of an earlier conversion, as integer-aware fine-tuning keeps
    them) every real tensor gets its recorded fraction bits instead, so that the integer graph is
    the one the weights were trained in. The images then only feed the error report."""
    qgraph = quantized_graph(graph, None if formats is not None else calibrate(graph, calibration_images), formats)
    return qgraph, error_report(graph, qgraph, calibration_images)


def quantized_graph(graph: Graph, peaks: dict[str, float] | None, formats: dict[str, int] | None = None) -> Graph:
    """The integer twin of ``graph`` with formats from calibration ``peaks`` or recorded ``formats``."""
    qgraph = copy.deepcopy(graph)
    for node in qgraph.nodes():
        _set_output_format(node, qgraph, peaks, formats)
        _quantize_op(node, qgraph)
    schedule(qgraph)
    validate(qgraph, quantized=True)
    return qgraph


def recorded_formats(qgraph: Graph) -> dict[str, int]:
    """{node: fraction bits} of every real tensor whose format calibration chose (what ``quantize``
    takes back as ``formats``)."""
    return {node.name: int(node.tensor.frac_bits) for node in qgraph.nodes()
            if not node.tensor.exact and type(node.op) not in KEEP_INPUT_FORMAT}


def run_quantized(qgraph: Graph, images: np.ndarray, record: bool = False):
    """Quantize float images for ``qgraph``'s input format and run the integer interpreter."""
    return interpret_int.run(qgraph, quantize_input(images, qgraph.input.tensor.frac_bits), record=record)


def _dequantize(node: Node, stored: np.ndarray) -> np.ndarray:
    """An integer tensor in the float graph's terms (an output activation's logits become probabilities)."""
    activation = neurons.OUTPUT_ACTIVATIONS.get(type(node.op))
    if activation is not None:
        return neurons.output_values(activation, stored, node.op.in_scale)
    return stored * _ratio(node)


def error_report(graph: Graph, qgraph: Graph, images: np.ndarray) -> list[NodeQuantReport]:
    """Per node: error of the dequantized integer tensor against the float graph's, and saturation."""
    sq_err: dict[str, float] = {}
    sq_ref: dict[str, float] = {}
    max_err: dict[str, float] = {}
    saturated: dict[str, int] = {}
    mismatched: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i in range(len(images)):
        _, fvals = interpret_float.run(graph, images[i:i + 1], record=True)
        _, ivals, sat = run_quantized(qgraph, images[i:i + 1], record=True)
        for node in qgraph.nodes():
            ref = fvals[node.name]
            got = _dequantize(node, ivals[node.name])
            diff = got - ref
            sq_err[node.name] = sq_err.get(node.name, 0.0) + float(np.sum(diff**2))
            sq_ref[node.name] = sq_ref.get(node.name, 0.0) + float(np.sum(ref**2))
            max_err[node.name] = max(max_err.get(node.name, 0.0), float(np.max(np.abs(diff))))
            saturated[node.name] = saturated.get(node.name, 0) + sat.get(node.name, 0)
            mismatched[node.name] = mismatched.get(node.name, 0) + int(np.count_nonzero(diff))
            counts[node.name] = counts.get(node.name, 0) + ref.size
    reports = []
    for node in qgraph.nodes():
        n = node.name
        reports.append(NodeQuantReport(
            n, node.op.type, node.tensor.frac_bits,
            math.sqrt(sq_err[n] / sq_ref[n]) if sq_ref[n] else math.sqrt(sq_err[n]),
            max_err[n], saturated[n],
            mismatched[n] / counts[n] if node.tensor.kind == "spike" else None,
        ))
    return reports
