"""Lower the spike-graph IR to ONNX: a float model and an integer model bit-exact with the interpreter.

``float_model(graph, meta)`` lowers the prepared *float* graph (not the torch module: the IR is the
single source of what every backend runs). Input ``image`` float32 [N, C, H, W], output
``probabilities`` [N, K, H, W] (logits where the graph has no output activation); batch, height and width are dynamic (the upsampling is a ``Resize``
with ``scales``, linear, ``align_corners``, which is torch's bilinear rule at any size). NISF is
``Round(Clip(x * in_scale, 0, D))``; ONNX ``Round`` rounds half to even, as torch does. Two lowerings
are chosen for onnxruntime's speed and compute the same sums: per-channel affines (BatchNorm after
a residual sum) are 1x1 depthwise convolutions, and SDQK's pairwise grouped convolutions are a
depthwise convolution plus a 0/1 1x1 convolution (see ``_pairwise_conv_float``).

``int_model(qgraph, meta)`` lowers the quantized graph. Input ``image_int`` int64 [N, C, H, W] (the
host's ``io.quantize_input``), output ``logits`` int64 (the integer logits before the output
activation, or the last tensor of a graph without one; ``neurons.output_values`` turns them into the
network's output on the host). H and W are fixed: the integer upsampling matrices depend on the size. Every value equals ``interpret_int``'s, bit for
bit, because every op is chosen to be exact in onnxruntime's CPU kernels:

- Activations travel as **float64** holding integers. float64 represents every integer below 2**53
  exactly, and every intermediate here stays far below (24-bit states times 24-bit multipliers
  < 2**48; convolution accumulators < 2**42; upsampling sums < 2**48), so Add, Sub, Mul, MatMul,
  Floor and Round return the exact integer results whatever the order of evaluation. Multiplying
  by 2**-k is exact too, so ``shift_round(v, k) = Floor((v + 2**(k-1)) * 2**-k)`` and the NISF's
  round-half-even shift is ``Round(v * 2**-k)`` (ONNX ``Round`` is half-to-even). int64 would be
  exact as well, but ONNX ``Div`` truncates toward zero and ``BitShift`` is unsigned-only, so
  every floor shift would need extra ops. The lowering checks each op's bound and refuses a graph
  whose intermediates could reach 2**53.
- **Convolutions** run as float32 ``Conv``: the only ``Conv`` onnxruntime's CPU provider has
  (float64 is refused). float32 is exact while every partial sum is an integer of magnitude at
  most 2**24, i.e. while ``max|x| * S <= 2**24`` with ``S = max_o sum|w_o|`` (weights are 8-bit
  mantissas). Spike maps (0..D) always satisfy it. A 24-bit state does not, so it is split into
  digit planes of ``b`` bits (``(2**b - 1) * S <= 2**24``), each plane convolved exactly in
  float32 and the results recombined in float64. ``ConvInteger`` (int32 accumulation) is exact too,
  but was 4-5x slower than float32 ``Conv`` in onnxruntime 1.32 on this machine's CPU.
- Bias, rounding shift and 24-bit saturation follow in float64 (``Clip`` with scalar bounds).
- Upsampling is ``Uh @ x @ Uw.T`` with the integer matrices of ``synapses.interp_matrix_int``, as
  float64 ``MatMul`` (exact: sums < 2**48), then the rounding shift.

Both models carry the converted model's provenance in ``metadata_props`` (preprocessing, NISF
levels, widths, source checkpoint sha256, medqk version); the integer model also its input
fractional bits and logit scale, so it can be used without the rest of the converted model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medqk.convert import elementwise as ew
from medqk.convert import neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import STATE_BITS, STATE_MAX, STATE_MIN
from medqk.convert.graph import SPIKE, Graph, Node
from medqk.convert.io import Input
from medqk.convert.kernels import FLOAT64_EXACT, float32_plane_bits, largest_weight_sum
from medqk.convert.neurons import output_activation, output_scale
from medqk.convert.op import FLOAT_ONLY, OpRefused, rule

#: ONNX operator set of both models
OPSET = 17
#: IR version 8 is what opset 17 came with; every onnxruntime since 1.13 loads it
IR_VERSION = 8
FLOAT_FILE = "model.onnx"
INT_FILE = "model-int.onnx"
FLOAT_INPUT, FLOAT_OUTPUT = "image", "probabilities"
INT_INPUT, INT_OUTPUT = "image_int", "logits"
#: every tensor of an integer graph is within +-STATE_LIMIT (saturated states, spikes, their products)
STATE_LIMIT = 1 << (STATE_BITS - 1)


class _Builder:
    """Collects ONNX nodes and initializers while one IR node at a time is lowered.

    Every ONNX tensor an IR node's lowering creates is named ``<IR node>/<op><n>``; its result is
    then renamed to the IR node's name, so the ONNX graph reads like the IR (and shape inference
    can be compared with the IR node by node).
    """

    def __init__(self, graph: Graph, dtype):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._scalars: dict[tuple, str] = {}
        self._casts: dict[tuple[str, int], str] = {}
        self.node_name = ""
        self._count = 0

    def const(self, value, dtype=None) -> str:
        """An initializer (in the model's dtype unless told); scalars are shared."""
        array = np.asarray(value, dtype=dtype or self.dtype)
        key = (array.dtype.str, array.item()) if array.ndim == 0 else None
        if key in self._scalars:
            return self._scalars[key]
        name = f"{self.node_name}/const{len(self.initializers)}" if key is None else f"scalar/{array.dtype}/{array.item()!r}"
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._scalars[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs):
        """Append one ONNX node; returns its output name (or names, when ``outputs`` > 1)."""
        self._count += 1
        name = f"{self.node_name}/{op_type}{self._count}"
        names = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def cast(self, name: str, to: int) -> str:
        """``name`` cast to ONNX type ``to``, once per tensor and type."""
        if (name, to) not in self._casts:
            self._casts[(name, to)] = self.op("Cast", [name], to=to)
        return self._casts[(name, to)]

    def scaled(self, x: str, factor) -> str:
        """x * factor; no op for a factor of one."""
        return x if np.all(np.asarray(factor) == 1) else self.op("Mul", [x, self.const(factor)])

    def shifted(self, x: str, offset) -> str:
        """x + offset; no op for an offset of zero."""
        return x if not np.any(np.asarray(offset)) else self.op("Add", [x, self.const(offset)])

    def name_result(self, out: str, name: str) -> None:
        """Give the IR node's result its name: rename the op that made it, or add an Identity."""
        last = self.nodes[-1] if self.nodes else None
        if last is not None and list(last.output) == [out] and out.startswith(f"{name}/") and out not in self._casts.values():
            last.output[0] = last.name = name
        else:
            self.nodes.append(helper.make_node("Identity", [out], [name], name=name))

    def input_shape(self, node: Node) -> tuple[int, ...]:
        return tuple(self.graph[node.inputs[0]].tensor.shape)


def _per_channel(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1, 1)


def _sum(b: _Builder, terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else b.op("Add" if len(terms) == 2 else "Sum", terms)


def _conv_attrs(op) -> dict:
    (ph, pw), (kh, kw) = op.padding, op.kernel
    return dict(kernel_shape=[kh, kw], strides=list(op.stride), pads=[ph, pw, ph, pw], group=op.groups)


# -- ops whose lowering is the same in both models (they only move or add exact values) -------

def group_sum(b: _Builder, node: Node, x: str) -> str:
    groups, channels = node.op.groups, b.input_shape(node)[0]
    parts = b.op("Split", [x, b.const(np.full(groups, channels // groups), np.int64)], outputs=groups, axis=1)
    axis = b.const(np.array([1]), np.int64)
    return b.op("Concat", [b.op("ReduceSum", [p, axis], keepdims=1) for p in parts], axis=1)


def group_broadcast(b: _Builder, node: Node, x: str) -> str:
    groups = b.input_shape(node)[0]
    return b.op("Gather", [x, b.const(np.repeat(np.arange(groups), node.op.repeats), np.int64)], axis=1)


def concat(b: _Builder, node: Node, *xs: str) -> str:
    return b.op("Concat", list(xs), axis=1)


def mul(b: _Builder, node: Node, x: str, y: str) -> str:
    return b.op("Mul", [x, y])


def complement(b: _Builder, node: Node, x: str) -> str:
    return b.op("Sub", [b.const(node.op.one), x])


def channel_slice(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    return b.op("Slice", [x, b.const([op.start], np.int64), b.const([op.stop], np.int64), b.const([1], np.int64)])


def maxpool2d(b: _Builder, node: Node, x: str) -> str:
    k, s = node.op.kernel, node.op.stride
    return b.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s])


# -- float model (float32, stored values of the float IR) --------------------------------------

def input_float(b: _Builder, node: Node) -> str:
    return FLOAT_INPUT


def conv2d_float(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    if op.groups == op.out_channels and op.weight.shape[1] > 1:
        return _pairwise_conv_float(b, op, x)
    inputs = [x, b.const(op.weight)] + ([b.const(op.bias)] if op.bias is not None else [])
    return b.op("Conv", inputs, **_conv_attrs(op))


def _pairwise_conv_float(b: _Builder, op, x: str) -> str:
    """A grouped convolution with one output per group (SDQK's q and k: each output sees two
    input channels) as a depthwise convolution, each input channel with its output's kernel,
    then a 1x1 convolution with 0/1 weights that sums each group. Same sums; onnxruntime runs
    both as fast blocked convolutions, whereas a grouped convolution runs one tiny matrix
    product per group."""
    out_channels, per_group = op.weight.shape[:2]
    depthwise = b.op("Conv", [x, b.const(op.weight.reshape(-1, 1, *op.kernel))],
                     **{**_conv_attrs(op), "group": out_channels * per_group})
    group_sum = np.kron(np.eye(out_channels), np.ones(per_group)).reshape(out_channels, -1, 1, 1)
    inputs = [depthwise, b.const(group_sum)] + ([b.const(op.bias)] if op.bias is not None else [])
    return b.op("Conv", inputs, kernel_shape=[1, 1])


def conv_transpose2d_float(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    (ph, pw), (kh, kw) = op.padding, op.kernel
    inputs = [x, b.const(op.weight)] + ([b.const(op.bias)] if op.bias is not None else [])
    return b.op("ConvTranspose", inputs, kernel_shape=[kh, kw], strides=list(op.stride), pads=[ph, pw, ph, pw])


def upsample_float(b: _Builder, node: Node, x: str) -> str:
    # scales (not sizes) keep height and width dynamic; align_corners + linear is torch's bilinear,
    # asymmetric + floor torch's nearest
    f = node.op.factor
    scales = b.const([1, 1, f, f], np.float32)
    if node.op.mode == "nearest":
        return b.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
    return b.op("Resize", [x, "", scales], mode="linear", coordinate_transformation_mode="align_corners")


def nisf_float(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    v = b.scaled(x, op.in_scale)
    if op.threshold is not None:
        spikes = b.op("Cast", [b.op("GreaterOrEqual", [v, b.const(op.threshold)])], to=TensorProto.FLOAT)
    else:
        spikes = b.op("Round", [b.op("Clip", [v, b.const(0), b.const(op.levels)])])
    return spikes if op.integer_output else b.scaled(spikes, op.spike_scale)


def relu_float(b: _Builder, node: Node, x: str) -> str:
    return b.op("Relu", [x])


def sigmoid_float(b: _Builder, node: Node, x: str) -> str:
    return b.op("Sigmoid", [b.scaled(x, node.op.in_scale)])


def softmax_float(b: _Builder, node: Node, x: str) -> str:
    return b.op("Softmax", [b.scaled(x, node.op.in_scale)], axis=1)


def add_float(b: _Builder, node: Node, *xs: str) -> str:
    return _sum(b, [b.scaled(x, c) for x, c in zip(xs, node.op.coefficients)])


def _channel_affine(b: _Builder, x: str, scale: np.ndarray, offset: np.ndarray) -> str:
    # a 1x1 depthwise convolution: one pass over x (Mul then Add would be two), and it stays in
    # onnxruntime's blocked layout between the convolutions around it
    return b.op("Conv", [x, b.const(np.reshape(scale, (-1, 1, 1, 1))), b.const(offset)], kernel_shape=[1, 1], group=len(scale))


def affine_float(b: _Builder, node: Node, x: str) -> str:
    return _channel_affine(b, x, node.op.scale, node.op.offset)


def batchnorm_float(b: _Builder, node: Node, x: str) -> str:
    return _channel_affine(b, x, *node.op.scale_offset())


FLOAT_OPS = {
    Input: input_float, syn.Conv2d: conv2d_float, syn.ConvTranspose2d: conv_transpose2d_float,
    syn.Upsample: upsample_float, neurons.NISF: nisf_float, neurons.ReLU: relu_float,
    neurons.Sigmoid: sigmoid_float, neurons.Softmax: softmax_float, ew.Add: add_float, ew.Mul: mul,
    ew.Affine: affine_float, ew.BatchNorm: batchnorm_float, ew.Complement: complement,
    ew.GroupSum: group_sum, ew.GroupBroadcast: group_broadcast, ew.Concat: concat,
    ew.ChannelSlice: channel_slice, ew.MaxPool2d: maxpool2d,
}


# -- integer model (float64 holding integers; see the module docstring for why it is exact) -----

def _require_exact(b: _Builder, bound: float) -> None:
    """Refuse to build a model whose float64 intermediates could leave the exact integers."""
    if bound >= FLOAT64_EXACT:
        raise ValueError(f"node {b.node_name}: integer intermediates up to {bound:.3g} exceed 2**53, "
                         "beyond float64's exact integers; the integer ONNX model cannot be bit-exact")


def _requantize(b: _Builder, v: str, k: int, peak: float, multiplier=1, offset=0) -> str:
    """``fixed_point.shift_round(v * multiplier + offset, k)`` for |v| <= peak, exactly, in float64:
    ``Floor(v * (multiplier * 2**-k) + (offset + 2**(k-1)) * 2**-k)``. Both terms are the exact
    integers ``v * multiplier`` and ``offset + 2**(k-1)`` (below 2**53, checked) times a power of
    two, so the product, the sum and the floor are exact."""
    half = 2.0 ** (k - 1) if k > 0 else 0.0
    _require_exact(b, (peak * np.max(np.abs(multiplier)) + np.max(np.abs(offset)) + half) * max(1.0, 2.0**-k))
    y = b.shifted(b.scaled(v, np.asarray(multiplier, dtype=np.float64) * 2.0**-k),
                  (np.asarray(offset, dtype=np.float64) + half) * 2.0**-k)
    return b.op("Floor", [y]) if k > 0 else y


def _saturate(b: _Builder, v: str) -> str:
    return b.op("Clip", [v, b.const(STATE_MIN), b.const(STATE_MAX)])


def input_int(b: _Builder, node: Node) -> str:
    return b.op("Cast", [INT_INPUT], to=TensorProto.DOUBLE)  # 24-bit integers: exact in float64


def _digit_planes(b: _Builder, x: str, bits: int) -> list[tuple[str, float]]:
    """Split a 24-bit state into planes x = sum_p plane_p * 2**(bits * p): the low planes are
    digits 0..2**bits - 1, the top one signed (|top| <= 2**(bits-1) because bits * count >= 24)."""
    planes, rest = [], x
    for p in range(math.ceil(STATE_BITS / bits) - 1):
        high = b.op("Floor", [b.scaled(rest, 2.0**-bits)])
        planes.append((b.op("Sub", [rest, b.scaled(high, 2.0**bits)]), 2.0 ** (bits * p)))
        rest = high
    planes.append((rest, 2.0 ** (bits * len(planes))))
    return planes


def conv2d_int(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    source = b.graph[node.inputs[0]].tensor
    peak = source.levels if source.kind == SPIKE else STATE_LIMIT
    weight_sum = largest_weight_sum(op.weight_mantissa)
    bits = float32_plane_bits(peak, weight_sum)
    if bits == 0:
        raise ValueError(f"node {node.name}: weights with sum|w| = {weight_sum} cannot be convolved exactly in float32")
    planes = [(x, 1.0)] if bits is None else _digit_planes(b, x, bits)
    weight = b.const(op.weight_mantissa, np.float32)
    partial = [b.scaled(b.cast(b.op("Conv", [b.cast(plane, TensorProto.FLOAT), weight], **_conv_attrs(op)),
                               TensorProto.DOUBLE), place)
               for plane, place in planes]
    return _saturate(b, _requantize(b, _sum(b, partial), op.shift, peak * weight_sum, offset=_per_channel(op.bias_acc)))


def upsample_int(b: _Builder, node: Node, x: str) -> str:
    _, h, w = b.input_shape(node)
    frac = node.op.frac_bits
    rows = b.const(node.op.matrix_int(h))
    cols = b.const(node.op.matrix_int(w).T)
    # interpolation rows sum to 2**frac per axis: |Uh @ x @ Uw.T| <= STATE_LIMIT * 2**(2 * frac)
    return _requantize(b, b.op("MatMul", [b.op("MatMul", [rows, x]), cols]), 2 * frac, STATE_LIMIT * 4.0**frac)


def nisf_int(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    if op.threshold is not None:
        return b.op("Cast", [b.op("GreaterOrEqual", [x, b.const(op.threshold_int)])], to=TensorProto.DOUBLE)
    # Round is half-to-even, and x * multiplier * 2**-shift is exact: shift_round_half_even
    _require_exact(b, STATE_LIMIT * abs(op.multiplier))
    return b.op("Clip", [b.op("Round", [b.scaled(x, op.multiplier * 2.0**-op.shift)]), b.const(0), b.const(op.levels)])


def output_activation_int(b: _Builder, node: Node, x: str) -> str:
    return x  # the integer logits; the host applies the activation (neurons.output_values)


def add_int(b: _Builder, node: Node, *xs: str) -> str:
    op = node.op
    return _saturate(b, _sum(b, [_requantize(b, x, k, STATE_LIMIT, multiplier=m) for x, m, k in zip(xs, op.multipliers, op.shifts)]))


def affine_int(b: _Builder, node: Node, x: str) -> str:
    op = node.op
    return _saturate(b, _requantize(b, x, op.shift, STATE_LIMIT, multiplier=_per_channel(op.multiplier), offset=_per_channel(op.offset_int)))



INT_OPS = {
    Input: input_int, syn.Conv2d: conv2d_int, syn.Upsample: upsample_int, syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: nisf_int, neurons.Sigmoid: output_activation_int, neurons.Softmax: output_activation_int,
    neurons.ReLU: FLOAT_ONLY, ew.Add: add_int, ew.Mul: mul, ew.Affine: affine_int, ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: complement, ew.GroupSum: group_sum, ew.GroupBroadcast: group_broadcast, ew.Concat: concat,
    ew.ChannelSlice: channel_slice, ew.MaxPool2d: maxpool2d,
}


# -- models ------------------------------------------------------------------------------------

def _lower(b: _Builder, ops: dict, model: str) -> None:
    for node in b.graph.nodes():
        try:
            lowering = rule(ops, node.op, f"lowering to the {model} ONNX model")
        except OpRefused as error:
            raise ValueError(f"node {node.name}: {error}") from error
        b.node_name = node.name
        b.name_result(lowering(b, node, *node.inputs), node.name)


def size_multiple(graph: Graph) -> int:
    """What H and W must be multiples of: the input's size over the smallest map's (16 for MedQKFormer)."""
    height = graph.input.tensor.shape[1]
    return height // min(node.tensor.shape[1] for node in graph.nodes())


def metadata(graph: Graph, meta: dict) -> dict[str, str]:
    """The converted model's provenance as ONNX metadata_props (strings; JSON where structured)."""
    from medqk import __version__

    config = meta.get("model_config", {})
    props = {
        "medqk_version": meta.get("medqk_version", __version__),
        "source_checkpoint_sha256": meta.get("source_checkpoint", {}).get("sha256"),
        "preprocessing": meta.get("preprocessing"),
        "nisf_levels": sorted({n.op.levels for n in graph.nodes() if isinstance(n.op, neurons.NISF)}),
        "widths": config.get("widths"),
        "image_size": meta.get("image_size"),
        "size_multiple": size_multiple(graph),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items() if v is not None}


def _model(b: _Builder, inputs, outputs, props: dict[str, str], doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, "medqk", inputs, outputs, b.initializers, doc_string=doc)
    from medqk import __version__

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="medqk", producer_version=__version__)
    helper.set_model_props(model, props)
    return model


def float_model(graph: Graph, meta: dict | None = None) -> onnx.ModelProto:
    """ONNX model of a prepared float graph: float32 image [N, C, H, W] -> the network's output
    [N, K, H, W] (probabilities after a sigmoid or softmax, else logits), batch, height and width dynamic."""
    b = _Builder(graph, np.float32)
    _lower(b, FLOAT_OPS, "float")
    b.nodes.append(helper.make_node("Identity", [graph.output.name], [FLOAT_OUTPUT], name=FLOAT_OUTPUT))
    (channels, *size), (out_channels, *out_size) = graph.input.tensor.shape, graph.output.tensor.shape
    out_dims = ["H", "W"] if out_size == size else [None, None]  # MedQKFormer: same size; others: unknown
    return _model(b, [helper.make_tensor_value_info(FLOAT_INPUT, TensorProto.FLOAT, ["N", channels, "H", "W"])],
                  [helper.make_tensor_value_info(FLOAT_OUTPUT, TensorProto.FLOAT, ["N", out_channels, *out_dims])],
                  metadata(graph, meta or {}),
                  "MedQKFormer float model lowered from medqk's spike-graph IR: preprocessed image in, probabilities out.")


def int_model(qgraph: Graph, meta: dict | None = None) -> onnx.ModelProto:
    """ONNX model of a quantized graph, bit-exact with ``interpret_int``: int64 image
    (``io.quantize_input``) [N, C, H, W] -> int64 logits [N, K, H, W]; H and W fixed. The metadata's
    ``logit_scale`` and ``output_activation`` turn them into the network's output (``neurons.output_values``)."""
    b = _Builder(qgraph, np.float64)
    _lower(b, INT_OPS, "integer")
    b.nodes.append(helper.make_node("Cast", [qgraph.output.name], [INT_OUTPUT], name=INT_OUTPUT, to=TensorProto.INT64))
    props = {**metadata(qgraph, meta or {}), "input_frac_bits": str(qgraph.input.tensor.frac_bits),
             "logit_scale": repr(output_scale(qgraph)), "output_activation": output_activation(qgraph)}
    return _model(b, [helper.make_tensor_value_info(INT_INPUT, TensorProto.INT64, ["N", *qgraph.input.tensor.shape])],
                  [helper.make_tensor_value_info(INT_OUTPUT, TensorProto.INT64, ["N", *qgraph.output.tensor.shape])], props,
                  "MedQKFormer integer model, bit-exact with medqk's integer interpreter: image quantized with "
                  "input_frac_bits in, integer logits out (real logits = logits * logit_scale; probabilities = "
                  "output_activation (sigmoid, softmax over channels, or none) of them).")


def write_onnx_models(directory: Path, model) -> None:
    """Writer for ``medqk convert`` (``serialize.save_model`` extra_writers): model.onnx and model-int.onnx."""
    directory = Path(directory)
    onnx.save_model(float_model(model.float_graph, model.meta), directory / FLOAT_FILE)
    onnx.save_model(int_model(model.int_graph, model.meta), directory / INT_FILE)
