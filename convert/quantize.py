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

from medqk.convert import interpret_float, interpret_int
from medqk.convert.fixed_point import STATE_BITS, quantize_mantissa
from medqk.convert.graph import Graph, Node
from medqk.convert.io import quantize_input
from medqk.convert.neurons import logits_to_probabilities
from medqk.convert.passes import FLOAT_ONLY, GraphError, schedule, validate

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


def _set_output_format(node: Node, graph: Graph, peaks: dict[str, float]) -> None:
    t = node.tensor
    if t.exact:
        return
    if node.op.type in ("upsample", "sigmoid", "group_broadcast", "group_sum", "concat"):
        # interpolation and pass-through keep the input's format (interpolation is convex)
        fracs = {graph[i].tensor.frac_bits for i in node.inputs}
        if len(fracs) != 1:
            raise GraphError(f"node {node.name}: inputs with different fixed-point formats {sorted(fracs)}")
        t.frac_bits = fracs.pop()
    else:
        t.frac_bits = choose_frac_bits(peaks[node.name])
    t.scale = 2.0 ** -t.frac_bits


def _quantize_op(node: Node, graph: Graph) -> None:
    op, name = node.op, node.name
    r_in = [_ratio(graph[i]) for i in node.inputs]
    r_out = _ratio(node)
    if op.type in FLOAT_ONLY:
        raise GraphError(f"node {name}: {op.type} has no integer form; only MedQKFormer-style graphs quantize")
    if op.type == "conv2d":
        op.weight_mantissa, op.weight_exponent = quantize_mantissa(op.weight * r_in[0])
        bias = op.bias if op.bias is not None else np.zeros(op.out_channels)
        op.bias_acc = np.round(bias / 2.0**op.weight_exponent).astype(np.int64)
        op.shift = -(op.weight_exponent + node.tensor.frac_bits)
    elif op.type == "upsample":
        op.frac_bits = UPSAMPLE_FRAC_BITS
    elif op.type == "nisf":
        op.multiplier, op.shift = multiplier_shift(op.in_scale * r_in[0])
    elif op.type == "add":
        pairs = [multiplier_shift(c * r / r_out) for c, r in zip(op.coefficients, r_in)]
        op.multipliers, op.shifts = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    elif op.type == "affine":
        gain = op.scale * r_in[0] / r_out
        peak = float(np.max(np.abs(gain))) or 1.0
        op.shift = (AFFINE_BITS - 1) - math.ceil(math.log2(peak * (1 + 2.0**-AFFINE_BITS)))
        op.multiplier = np.round(gain * 2.0**op.shift).astype(np.int64)
        op.offset_int = np.round(op.offset / r_out * 2.0**op.shift).astype(np.int64)
    elif op.type == "complement":
        one = op.one / r_in[0]
        if one != round(one):
            raise GraphError(f"node {name}: complement constant {one} is not an integer in the input's format")
        op.one = float(round(one))
    elif op.type == "mul":
        if not all(graph[i].tensor.exact for i in node.inputs):
            raise GraphError(f"node {name}: only products of spike maps quantize exactly; this one multiplies real values")
    elif op.type == "sigmoid":
        op.in_scale = op.in_scale * r_in[0]


def quantize(graph: Graph, calibration_images: np.ndarray) -> tuple[Graph, list[NodeQuantReport]]:
    """Integer twin of a prepared float graph, calibrated on float images [N, C, H, W]."""
    peaks = calibrate(graph, calibration_images)
    qgraph = copy.deepcopy(graph)
    for node in qgraph.nodes():
        _set_output_format(node, qgraph, peaks)
        _quantize_op(node, qgraph)
    schedule(qgraph)
    validate(qgraph, quantized=True)
    return qgraph, error_report(graph, qgraph, calibration_images)


def run_quantized(qgraph: Graph, images: np.ndarray, record: bool = False):
    """Quantize float images for ``qgraph``'s input format and run the integer interpreter."""
    return interpret_int.run(qgraph, quantize_input(images, qgraph.input.tensor.frac_bits), record=record)


def _dequantize(node: Node, stored: np.ndarray) -> np.ndarray:
    """An integer tensor in the float graph's terms (the sigmoid's logits become probabilities)."""
    if node.op.type == "sigmoid":
        return logits_to_probabilities(stored, node.op.in_scale)
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
