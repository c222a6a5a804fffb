"""What a checkpoint can keep on the chip: its own sensitivity next to the integer graph's agreement.

Both measurements run on the calibration images and compare masks (class labels for K outputs)
with the torch model's, as ``convert`` compares the integer graph's (pixel agreement, Dice):

- **weight noise**: torch against itself with every convolution weight multiplied by
  ``1 + 2**-k * N(0, 1)``, a few seeded draws. k = 9 is about an 8-bit mantissa's rounding: what
  any rounding of that size costs this network, whatever the converter does.
- **attribution**: the float graph with one source of the integer graph's rounding put back at a
  time, everything else exact float64. The rounded values are read from the integer graph itself
  (``quantize`` decides them, once), so the attribution follows any change to the quantization.
  With every source put back, the float graph computes the integer graph's values, up to the
  rounding of each term of a sum before it is added (the integer ``add`` rounds each term).
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable

import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import interpret_float, neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import saturate
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input, quantize_input
from medqk.convert.neurons import OUTPUT_ACTIVATIONS, output_activation
from medqk.convert.op import FLOAT_ONLY, rule
from medqk.convert.pipeline import label_agreement, predicted_labels, torch_probabilities
from medqk.convert.quantize import _ratio as stored_ratio  # int stored value x this = float stored value

#: relative weight noise 2**-k: about an 8-bit mantissa's rounding, and far below it
NOISE_EXPONENTS = (9, 16)
#: seeded draws per noise level (seeds 0, 1, ...)
NOISE_DRAWS = 3

#: input pixels per float-graph run: small images in one batch (4x faster than one by one at
#: 64x64), large ones one at a time (float64 tensors of 4 published-width 256x256 images need 4+ GB)
BATCH_PIXELS = 16 * 64 * 64

#: every rounding the integer graph does, by where ``quantize`` decides it
SOURCES = {
    "weights": "weights (8-bit mantissas, one exponent per layer; biases)",
    "state_fraction_bits": "states (24-bit, fraction bits per tensor)",
    "multipliers": "affine multipliers (16-bit); NISF and add rescalings",
    "upsampling_weights": "upsampling weights (12 fraction bits)",
    "input_quantization": "input quantization",
}


def noise_key(exponent: int) -> str:
    return f"2^-{exponent}"


@contextlib.contextmanager
def perturbed(model, exponent: int, seed: int):
    """``model`` with every convolution weight multiplied by (1 + 2**-exponent * N(0, 1)) inside
    the ``with`` block, restored afterwards (in place: a deep copy of the module costs as much as
    a small model's forward pass)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = [p for p in model.parameters() if p.dim() > 1]  # convolution weights
    originals = [p.detach().clone() for p in weights]
    try:
        with torch.no_grad():
            for parameter in weights:
                parameter.mul_(1 + 2.0**-exponent * torch.randn(parameter.shape, generator=generator))
        yield model
    finally:
        with torch.no_grad():
            for parameter, original in zip(weights, originals):
                parameter.copy_(original)


def weight_noise_agreement(model, images: np.ndarray, score: Callable[[np.ndarray], dict], exponent: int,
                           draws: int = NOISE_DRAWS) -> dict:
    """Mean ``score`` (output -> agreement with the unperturbed model's) of the perturbed model's
    outputs on ``images``, over seeds 0..draws-1."""
    runs = []
    for seed in range(draws):
        with perturbed(model, exponent, seed) as noisy:
            runs.append(score(torch_probabilities(noisy, images)))
    return {**{key: float(np.mean([r[key] for r in runs])) for key in runs[0]}, "draws": draws}


def _check_sources(sources) -> None:
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown error sources {sorted(unknown)}; known: {', '.join(SOURCES)}")


# -- putting a rounding back: (float op, its integer twin, input ratios, output ratio) set the float
#    op's parameters to the values the integer op computes with, in the float graph's units --

def _conv2d_weights(op, qop, r_in, r_out):
    step = 2.0**qop.weight_exponent  # the accumulator's unit; the bias is rounded to it
    op.weight = qop.weight_mantissa * step / r_in[0]
    op.bias = qop.bias_acc * step


def _affine_multipliers(op, qop, r_in, r_out):
    step = 2.0**-qop.shift * r_out
    op.scale = qop.multiplier * step / r_in[0]
    op.offset = qop.offset_int * step


def _neuron_rescaling(op, qop, r_in, r_out):
    if op.threshold is None:
        op.in_scale = qop.multiplier * 2.0**-qop.shift / r_in[0]
    else:  # a binary neuron fires where its integer input >= threshold_int
        op.threshold = qop.threshold_int * r_in[0] * op.in_scale


def _add_rescalings(op, qop, r_in, r_out):
    op.coefficients = tuple(m * 2.0**-k * r_out / r for m, k, r in zip(qop.multipliers, qop.shifts, r_in))


def _upsampling_weights(op, qop, r_in, r_out):
    op.frac_bits = qop.frac_bits


def _nothing_rounded(op, qop, r_in, r_out):
    """Exact in the integer graph (moves, selects, sums or multiplies integers; a scale that is
    folded exactly); what its output rounds to is the state rounding's."""



#: op class -> (the source whose rounding its integer parameters carry, the rule putting it back)
PARAMETER_ROUNDING = {
    Input: (None, _nothing_rounded), syn.Conv2d: ("weights", _conv2d_weights),
    syn.Upsample: ("upsampling_weights", _upsampling_weights), syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: ("multipliers", _neuron_rescaling), neurons.ReLU: FLOAT_ONLY,
    neurons.Sigmoid: (None, _nothing_rounded), neurons.Softmax: (None, _nothing_rounded),
    ew.Add: ("multipliers", _add_rescalings), ew.Mul: (None, _nothing_rounded),
    ew.Affine: ("multipliers", _affine_multipliers), ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: (None, _nothing_rounded), ew.GroupSum: (None, _nothing_rounded),
    ew.GroupBroadcast: (None, _nothing_rounded), ew.Concat: (None, _nothing_rounded),
    ew.ChannelSlice: (None, _nothing_rounded), ew.MaxPool2d: (None, _nothing_rounded),
}


def requantized_graph(fgraph: Graph, qgraph: Graph, sources) -> Graph:
    """A copy of the float graph whose parameters of the chosen ``sources`` are the values the
    integer graph ``qgraph`` (``quantize(fgraph)``) computes with, in the float graph's units.
    (States and input are rounded at run time: ``requantized_outputs``.)"""
    _check_sources(sources)
    graph = copy.deepcopy(fgraph)
    for node in graph.nodes():
        source, put_back = rule(PARAMETER_ROUNDING, node.op, "sensitivity attribution")
        if source in sources:
            put_back(node.op, qgraph[node.name].op, [stored_ratio(qgraph[i]) for i in node.inputs],
                     stored_ratio(qgraph[node.name]))
    return graph


def state_rounding(qgraph: Graph):
    """``round_result`` for ``interpret_float.run``: every real-valued state to its fixed-point
    format in ``qgraph`` (half up and saturated to 24 bits, as ``fixed_point.shift_round`` and
    ``saturate`` do). The input is rounded by the input quantization; an output activation's
    probabilities are no state."""
    def round_to_format(node: Node, value: np.ndarray) -> np.ndarray:
        q = qgraph[node.name]
        if q.tensor.frac_bits is None or node.op.type == "input" or type(node.op) in OUTPUT_ACTIVATIONS:
            return value
        step = stored_ratio(q)
        return saturate(np.floor(value / step + 0.5)) * step
    return round_to_format


def requantized_outputs(fgraph: Graph, qgraph: Graph, images: np.ndarray, sources) -> np.ndarray:
    """The float graph's output on ``images`` with the integer graph's rounding of ``sources``
    (``SOURCES`` keys) put back and every other value exact."""
    graph = requantized_graph(fgraph, qgraph, sources)
    if "input_quantization" in sources:
        frac_bits = qgraph.input.tensor.frac_bits
        images = quantize_input(images, frac_bits) * 2.0**-frac_bits
    rounding = state_rounding(qgraph) if "state_fraction_bits" in sources else None
    per_run = max(1, BATCH_PIXELS // int(np.prod(images.shape[2:])))
    return np.concatenate([interpret_float.run(graph, images[i:i + per_run], round_result=rounding)
                           for i in range(0, len(images), per_run)])


def attribution(fgraph: Graph, qgraph: Graph, images: np.ndarray, score: Callable[[np.ndarray], dict],
                sources=tuple(SOURCES)) -> dict:
    """{source: ``score`` of the float graph's output with only that source's rounding put back}."""
    return {source: score(requantized_outputs(fgraph, qgraph, images, [source])) for source in sources}


def label_score(reference_outputs: np.ndarray, activation: str) -> Callable[[np.ndarray], dict]:
    """Outputs -> their labels' agreement (pixels, foreground Dice) with ``reference_outputs``'s, the
    labels as ``convert`` compares the integer graph with torch (``pipeline.predicted_labels``)."""
    reference = predicted_labels(reference_outputs, activation)
    return lambda outputs: label_agreement(predicted_labels(outputs, activation), reference)


def sensitivity_report(model, fgraph: Graph, qgraph: Graph, images: np.ndarray, torch_outputs: np.ndarray,
                       integer_vs_torch: dict) -> dict:
    """model.json's ``sensitivity``: the checkpoint's own sensitivity to weight noise, the integer
    graph's agreement and the attribution of its disagreement, on ``images`` against the torch
    model's outputs ``torch_outputs``."""
    start = time.perf_counter()
    score = label_score(torch_outputs, output_activation(qgraph))
    noise = {noise_key(k): weight_noise_agreement(model, images, score, k) for k in NOISE_EXPONENTS}
    return {"images": int(len(images)), "noise": noise, "integer_vs_torch": dict(integer_vs_torch),
            "attribution": attribution(fgraph, qgraph, images, score),
            "seconds": round(time.perf_counter() - start, 2)}


def format_report(report: dict) -> list[str]:
    """The convert summary's sensitivity table."""
    rows = [(f"torch, weights x (1 + {key} N(0,1)), mean of {value['draws']} draws", value)
            for key, value in report["noise"].items()]
    rows.append(("integer graph", report["integer_vs_torch"]))
    rows.append(("float graph with only the integer graph's rounding of", None))
    rows += [(f"  {SOURCES[source]}", value) for source, value in report["attribution"].items()]
    width = max(len(label) for label, _ in rows)
    return [f"  {'sensitivity  vs torch on the ' + str(report['images']) + ' calibration images':{width + 4}s}    Dice  pixels",
            *(f"    {label:{width}s}" + (f"  {v['dice']:.4f}  {v['pixel_agreement']:.4f}" if v else "") for label, v in rows),
            f"             ({report['seconds']:.1f} s; skip with --no-sensitivity)"]
