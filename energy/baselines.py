"""ANN baselines, counted by the same code as the SNN with every input real-valued (all MACs).

Built in: ``unet`` (the U-Net of the paper's table) and ``ann-twin`` (the SNN's own graph with
every NISF replaced by a real-valued activation: same synaptic layers, all MACs). Any torch module
(``package.module:Class``, constructed without arguments) is traced into the IR; an ONNX file is
read node by node (Conv, ConvTranspose, Gemm, MatMul, Resize) after shape inference.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path

import numpy as np

from medqk.convert.graph import REAL, Graph
from medqk.energy.counting import LayerCount, count_layers, macs_by_op, thop_counts
from medqk.errors import InputError, MedqkError

BUILT_IN = ("unet", "ann-twin")


@dataclasses.dataclass
class Baseline:
    name: str
    params: int
    layers: list[LayerCount]
    #: thop's count of the same network (None where thop's view is not defined, e.g. ONNX)
    thop_macs: int | None = None

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def macs_by_op(self) -> dict[str, int]:
        return macs_by_op(self.layers)


def from_module(name: str, module, input_shape: tuple[int, int, int],
                traced_at: tuple[int, int, int] | None = None) -> Baseline:
    """Trace a torch module at ``input_shape`` (C, H, W) and count it all-MAC; raises the tracer's
    error (naming the op and module path) for anything the IR cannot represent. A fully
    convolutional module may be traced ``traced_at`` a smaller shape: shape inference then gives
    its graph the shapes of ``input_shape`` without running it there."""
    from medqk.convert.trace import trace
    from medqk.model import count_parameters

    try:
        traced = trace(module, traced_at or input_shape)
    except MedqkError as error:
        raise type(error)(f"baseline {name}: {error}") from error
    traced.input.op.shape = tuple(input_shape)
    thop = sum(thop_counts(traced).values())  # infers the tensors at input_shape
    return Baseline(name, count_parameters(module), count_layers(traced, all_real=True), thop)


@functools.lru_cache(maxsize=4)
def unet(input_shape: tuple[int, int, int]) -> Baseline:
    """The paper's U-Net (it depends on the input shape only, hence cached). Traced at 16x16 (its four
    poolings' smallest input) with uninitialised weights: running its 30 G MACs at 256x256, or
    initialising 14.8 M weights, only to learn the shapes would cost more than the SNN's report."""
    import torch

    from medqk.unet import UNet

    c, h, w = input_shape
    if h % 16 or w % 16:
        raise InputError(f"baseline unet: its four 2x2 poolings need H and W divisible by 16, not {h}x{w}")
    with torch.device("meta"):
        module = UNet(in_channels=c)
    module = module.to_empty(device="cpu")
    for tensor in (*module.parameters(), *module.buffers()):  # only the shapes count; zeros keep the forward cheap
        tensor.data.zero_()
    return from_module("unet", module, input_shape, traced_at=(c, 16, 16))


def ann_twin(graph: Graph, params: int, thop_macs: int | None) -> Baseline:
    """The SNN's graph counted with every synaptic input real (what it costs without spikes)."""
    return Baseline("ann-twin", params, count_layers(graph, all_real=True), thop_macs)


def _import_module_class(spec: str):
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        raise InputError(f"baseline {spec}: cannot import {module_name} ({error})") from None
    except AttributeError:
        raise InputError(f"baseline {spec}: {module_name} has no {class_name}") from None
    try:
        module = cls()
    except Exception as error:
        raise InputError(f"baseline {spec}: {class_name}() failed ({type(error).__name__}: {error}); "
                         f"the class must build without arguments") from None
    from torch import nn

    if not isinstance(module, nn.Module):
        raise InputError(f"baseline {spec}: {class_name}() is a {type(module).__name__}, not a torch nn.Module")
    return module


def resolve(spec: str, input_shape: tuple[int, int, int]) -> Baseline:
    """A baseline from ``unet``, ``package.module:Class`` or ``file.onnx`` (not ``ann-twin``: the
    caller builds it from the SNN's graph)."""
    if spec == "unet":
        return unet(input_shape)
    if spec.lower().endswith(".onnx"):
        return from_onnx(Path(spec), input_shape)
    if ":" in spec:
        return from_module(spec, _import_module_class(spec), input_shape)
    raise InputError(f"baseline {spec!r}: use {' or '.join(BUILT_IN)}, package.module:Class, or a .onnx file")


# -- ONNX -----------------------------------------------------------------------------------------

#: ops with no synaptic multiply-accumulates (element-wise, normalisation, shape and data movement)
ONNX_FREE = frozenset("""
    Relu LeakyRelu PRelu Sigmoid Tanh Clip Elu Selu Gelu HardSigmoid HardSwish Softmax Softplus Erf Exp
    Add Sub Mul Div Sum Max Min Pow Sqrt Neg Abs Round Floor Ceil Not Equal Greater Less Where
    BatchNormalization InstanceNormalization LayerNormalization MaxPool AveragePool GlobalAveragePool
    GlobalMaxPool Concat Split Slice Reshape Flatten Transpose Squeeze Unsqueeze Identity Dropout Pad
    Constant ConstantOfShape Shape Gather Cast Expand Tile ReduceMean ReduceSum ReduceMax
    QuantizeLinear DequantizeLinear
""".split())


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _onnx_load(path: Path, input_shape: tuple[int, int, int]):
    """The model with its (first) input pinned to [1, C, H, W] where symbolic, shapes inferred."""
    import onnx

    if not path.is_file():
        raise InputError(f"baseline {path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as error:
        raise InputError(f"baseline {path}: not a readable ONNX model ({error})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise InputError(f"baseline {path}: the ONNX graph has no input")
    for dim, size in zip(inputs[0].type.tensor_type.shape.dim, (1, *input_shape)):
        if not dim.HasField("dim_value"):
            dim.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True), inputs[0].name
    except Exception as error:
        raise InputError(f"baseline {path}: ONNX shape inference failed ({error})") from None


def _axis_taps(n_in: int, n_out: int, k: int, stride: int, pad_begin: int, dilation: int) -> int:
    """Kernel taps along one axis that land inside the input, summed over the outputs."""
    pos = np.arange(n_out)[:, None] * stride + np.arange(k)[None, :] * dilation - pad_begin
    return int(((pos >= 0) & (pos < n_in)).sum())


def _onnx_layer(node, index: int, shapes: dict[str, list], path: Path, batch: int) -> LayerCount:
    """The LayerCount of one counted ONNX node (per image): exact taps and thop's count."""
    def shape(name):
        dims = shapes.get(name)
        if dims is None or any(d is None for d in dims):
            raise InputError(f"baseline {path}: no static shape for {name!r} of node {node.name or node.op_type} ({node.op_type})")
        return dims

    attrs = {a.name: a for a in node.attribute}
    ints = lambda key, default: list(attrs[key].ints) if key in attrs else default
    x, y = shape(node.input[0]), shape(node.output[0])
    inputs, outputs = int(np.prod(x[1:])), int(np.prod(y[1:]))
    weights = biases = kernel_positions = 0
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        weights = int(np.prod(shape(node.input[1])))
        biases = int(np.prod(shape(node.input[2]))) if len(node.input) > 2 and node.input[2] else 0
    if node.op_type == "Conv":  # weight [O, C/g, kh, kw]
        w = shape(node.input[1])
        pads, strides, dilations = ints("pads", [0] * 4), ints("strides", [1, 1]), ints("dilations", [1, 1])
        taps = w[0] * w[1] * int(np.prod([_axis_taps(x[2 + a], y[2 + a], w[2 + a], strides[a], pads[a], dilations[a])
                                          for a in range(2)]))
        thop, kernel_positions = outputs * int(np.prod(w[1:])), w[0] * w[2] * w[3]
    elif node.op_type == "ConvTranspose":  # weight [C, O/g, kh, kw]: every input reaches O/g x kh x kw outputs
        w = shape(node.input[1])
        taps, thop, kernel_positions = inputs * int(np.prod(w[1:])), outputs * w[0] * w[2] * w[3], y[1] * w[2] * w[3]
    elif node.op_type in ("Gemm", "MatMul"):
        a = shape(node.input[0])
        k = a[0] if "transA" in attrs and attrs["transA"].i else a[-1]
        taps = int(np.prod(y)) * k // batch
        thop = taps if node.op_type == "Gemm" else 0  # thop does not see a functional matmul
    else:  # Resize
        taps = _onnx_resize_macs(node, attrs, x, y, path) // batch
        thop = 11 * outputs
    return LayerCount(node.name or f"{node.op_type}_{index}", node.op_type, REAL, taps, taps, thop,
                      inputs, outputs, weights, biases, kernel_positions)


def _onnx_resize_macs(node, attrs, in_shape, out_shape, path) -> int:
    from medqk.convert.synapses import Upsample

    mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
    if mode == "nearest":
        return 0
    factors = {o // i if o % i == 0 else None for i, o in zip(in_shape[2:], out_shape[2:])}
    if mode != "linear" or len(in_shape) != 4 or len(factors) != 1 or None in factors:
        raise InputError(f"baseline {path}: cannot count Resize node {node.name} (mode {mode}, "
                         f"{in_shape} -> {out_shape}); only linear by one integer factor, or nearest")
    return in_shape[0] * Upsample(factor=factors.pop()).dense_macs(tuple(in_shape[1:]))


ONNX_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Resize")


def from_onnx(path: Path, input_shape: tuple[int, int, int]) -> Baseline:
    """Count an ONNX model's synaptic MACs per image at ``input_shape``; any op that is neither
    counted nor known to be MAC-free is an error naming it."""
    model, input_name = _onnx_load(Path(path), input_shape)
    g = model.graph
    shapes = {vi.name: _dims(vi) for vi in (*g.input, *g.value_info, *g.output)}
    shapes.update({i.name: list(i.dims) for i in g.initializer})
    batch = shapes[input_name][0] or 1
    layers, weight_names = [], set()
    for index, node in enumerate(g.node):
        if node.op_type in ONNX_COUNTED:
            layers.append(_onnx_layer(node, index, shapes, Path(path), batch))
            if node.op_type != "Resize":  # its other inputs are scales, not weights
                weight_names.update(node.input[1:])
        elif node.op_type == "BatchNormalization":
            weight_names.update(node.input[1:3])  # scale and bias (the running statistics are not trained)
        elif node.op_type not in ONNX_FREE:
            raise InputError(f"baseline {path}: cannot count ONNX op {node.op_type} (node {node.name or index}); "
                             f"counted: {', '.join(ONNX_COUNTED)}; known MAC-free: element-wise, pooling, "
                             f"normalisation and shape ops")
    params = sum(int(np.prod(i.dims)) for i in g.initializer if i.name in weight_names)
    return Baseline(Path(path).name, params, layers)
