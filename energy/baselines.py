"""ANN baselines, counted by the same code as the SNN with every input real-valued (all MACs).

Built in: ``unet`` (the U-Net of the paper's table) and ``ann-twin`` (the SNN's own graph with
every NISF replaced by a real-valued activation: same synaptic layers, all MACs). Any torch module
(``package.module:Class``, constructed without arguments) is traced into the IR; an ONNX file is
read node by node (Conv, ConvTranspose, Gemm, MatMul, Resize) after shape inference.
"""
from __future__ import annotations

import dataclasses
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


def from_module(name: str, module, input_shape: tuple[int, int, int]) -> Baseline:
    """Trace a torch module at ``input_shape`` (C, H, W) and count it all-MAC; raises the tracer's
    error (naming the op and module path) for anything the IR cannot represent."""
    from medqk.convert.trace import trace
    from medqk.model import count_parameters

    try:
        traced = trace(module, input_shape)
    except MedqkError as error:
        raise type(error)(f"baseline {name}: {error}") from error
    thop = sum(thop_counts(traced).values())
    return Baseline(name, count_parameters(module), count_layers(traced, all_real=True), thop)


def unet(input_shape: tuple[int, int, int]) -> Baseline:
    from medqk.energy.unet import UNet

    return from_module("unet", UNet(in_channels=input_shape[0]), input_shape)


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


def _onnx_macs(node, shapes: dict[str, list], path: Path) -> int:
    def shape(name):
        dims = shapes.get(name)
        if dims is None or any(d is None for d in dims):
            raise InputError(f"baseline {path}: no static shape for {name!r} of node {node.name or node.op_type} ({node.op_type})")
        return dims

    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":  # weight [O, C/g, kh, kw]: outputs x C/g x kh x kw
        return int(np.prod(shape(node.output[0])) * np.prod(shape(node.input[1])[1:]))
    if node.op_type == "ConvTranspose":  # weight [C, O/g, kh, kw]: every input reaches O/g x kh x kw
        return int(np.prod(shape(node.input[0])) * np.prod(shape(node.input[1])[1:]))
    if node.op_type == "Gemm":
        a = shape(node.input[0])
        k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
        return int(np.prod(shape(node.output[0])) * k)
    if node.op_type == "MatMul":
        return int(np.prod(shape(node.output[0])) * shape(node.input[0])[-1])
    if node.op_type == "Resize":
        return _onnx_resize_macs(node, attrs, shape(node.input[0]), shape(node.output[0]), path)
    raise AssertionError(node.op_type)


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
            macs = _onnx_macs(node, shapes, Path(path)) // batch
            layers.append(LayerCount(node.name or f"{node.op_type}_{index}", node.op_type, REAL, macs))
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
