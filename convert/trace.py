"""Trace a torch module into the spike-graph IR (torch.fx, NISF and SDQK's head ops kept as leaves).

Handles MedQKFormer at any width and plain conv / BatchNorm / ReLU / pooling / transposed-conv
networks (the U-Net baseline). Anything else fails with ``TraceError`` naming the op, the module
path and what is supported.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from medqk.convert import elementwise as ew
from medqk.convert import neurons, synapses
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input
from medqk.errors import MedqkError
from medqk.model import HeadBroadcast, HeadSum
from medqk.nisf import NISF

SUPPORTED = (
    "modules: Conv2d, ConvTranspose2d, BatchNorm2d, NISF, ReLU, Sigmoid, MaxPool2d(2), "
    "Upsample(bilinear, align_corners=True, integer factor), Identity, Dropout; functions: +, -, "
    "*, 1 - x, torch.cat(dim=1), torch.sigmoid, relu, F.interpolate(bilinear, align_corners=True)"
)


class TraceError(MedqkError):
    """A module or function the IR cannot represent."""


class _Tracer(torch.fx.Tracer):
    LEAVES = (NISF, HeadSum, HeadBroadcast)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.LEAVES) or super().is_leaf_module(m, qualname)


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy().copy()


def _fail(what: str, where: str) -> TraceError:
    return TraceError(f"cannot represent {what} at {where or 'the top level'} in the spike-graph IR; supported: {SUPPORTED}")


def _module_op(m: nn.Module, path: str, fx_node: torch.fx.Node):
    """IR op for a leaf module call, and the indices of the fx args that are graph inputs."""
    if isinstance(m, nn.Conv2d):
        if m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise _fail(f"Conv2d with dilation {m.dilation}, padding {m.padding!r}, padding_mode {m.padding_mode}", path)
        return synapses.Conv2d(_array(m.weight), _array(m.bias), m.stride, m.padding, m.groups), [0]
    if isinstance(m, nn.ConvTranspose2d):
        if m.groups != 1 or m.dilation != (1, 1) or any(m.output_padding):
            raise _fail("ConvTranspose2d with groups, dilation or output_padding", path)
        return synapses.ConvTranspose2d(_array(m.weight), _array(m.bias), m.stride, m.padding), [0]
    if isinstance(m, nn.BatchNorm2d):
        if m.running_mean is None:
            raise _fail("BatchNorm2d without running statistics", path)
        weight = _array(m.weight) if m.affine else np.ones(m.num_features)
        bias = _array(m.bias) if m.affine else np.zeros(m.num_features)
        return ew.BatchNorm(_array(m.running_mean), _array(m.running_var), weight, bias, float(m.eps)), [0]
    if isinstance(m, NISF):
        return neurons.NISF(levels=m.levels), [0]
    if isinstance(m, HeadSum):
        return ew.GroupSum(groups=m.heads), [0]
    if isinstance(m, HeadBroadcast):
        like = fx_node.args[1].meta["tensor_meta"].shape
        return ew.GroupBroadcast(repeats=int(like[1]) // m.heads), [0]
    if isinstance(m, nn.ReLU):
        return neurons.ReLU(), [0]
    if isinstance(m, nn.Sigmoid):
        return neurons.Sigmoid(), [0]
    if isinstance(m, nn.MaxPool2d):
        k, s = m.kernel_size, m.stride
        if m.padding or m.dilation != 1 or not np.isscalar(k):
            raise _fail("MaxPool2d with padding, dilation or non-square kernel", path)
        return ew.MaxPool2d(int(k), int(s)), [0]
    if isinstance(m, nn.Upsample):
        return _upsample_op(m.mode, m.align_corners, m.scale_factor, path), [0]
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return None, [0]
    raise _fail(f"module {type(m).__name__}", path)


def _upsample_op(mode, align_corners, scale_factor, path):
    factor = scale_factor[0] if isinstance(scale_factor, (tuple, list)) else scale_factor
    if mode != "bilinear" or not align_corners or factor is None or float(factor) != int(factor):
        raise _fail(f"upsampling mode={mode} align_corners={align_corners} scale={scale_factor}", path)
    return synapses.Upsample(factor=int(factor))


def _is_node(a) -> bool:
    return isinstance(a, torch.fx.Node)


def _function_op(fx_node: torch.fx.Node, path: str):
    """IR op for a function call, and the indices of the args that are graph inputs."""
    target, args = fx_node.target, fx_node.args
    if target in (operator.add, torch.add) and all(map(_is_node, args[:2])):
        return ew.Add(coefficients=(1.0, 1.0)), [0, 1]
    if target in (operator.sub, torch.sub):
        if all(map(_is_node, args[:2])):
            return ew.Add(coefficients=(1.0, -1.0)), [0, 1]
        if not _is_node(args[0]) and _is_node(args[1]):
            return ew.Complement(one=float(args[0])), [1]
    if target in (operator.mul, torch.mul) and all(map(_is_node, args[:2])):
        return ew.Mul(), [0, 1]
    if target is torch.cat:
        dim = fx_node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim not in (1, -3):
            raise _fail(f"torch.cat along dim {dim}", path)
        return ew.Concat(), ("list", len(args[0]))
    if target in (torch.sigmoid, F.sigmoid):
        return neurons.Sigmoid(), [0]
    if target in (torch.relu, F.relu):
        return neurons.ReLU(), [0]
    if target is F.interpolate:
        kw = fx_node.kwargs
        return _upsample_op(kw.get("mode", "nearest"), kw.get("align_corners"), kw.get("scale_factor"), path), [0]
    name = getattr(target, "__name__", str(target))
    raise _fail(f"function {name}{' with a constant operand' if target in (operator.add, operator.mul, operator.sub) else ''}", path)


def _module_path(fx_node: torch.fx.Node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def trace(module: nn.Module, input_shape: tuple[int, int, int]) -> Graph:
    """The IR graph of ``module`` (in eval mode) for inputs of ``input_shape`` (C, H, W)."""
    module = module.eval()
    try:
        fx_graph = _Tracer().trace(module)
    except TraceError:
        raise
    except Exception as error:  # fx cannot follow data-dependent Python control flow
        raise TraceError(f"torch.fx could not trace {type(module).__name__}: {error}") from error
    gm = torch.fx.GraphModule(module, fx_graph)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros((1,) + tuple(input_shape), dtype=dtype))

    graph = Graph()
    ir_name: dict[torch.fx.Node, str] = {}
    used: dict[str, int] = {}

    def unique(name: str) -> str:
        used[name] = used.get(name, 0) + 1
        return name if used[name] == 1 else f"{name}@{used[name] - 1}"

    for fx_node in fx_graph.nodes:
        if fx_node.op == "placeholder":
            ir_name[fx_node] = graph.add(Node("input", Input(shape=tuple(input_shape)), [], source="input")).name
            continue
        if fx_node.op == "output":
            continue
        if fx_node.op == "call_module":
            path = str(fx_node.target)
            op, slots = _module_op(gm.get_submodule(path), path, fx_node)
            name = unique(path)
        elif fx_node.op == "call_function":
            path = _module_path(fx_node)
            op, slots = _function_op(fx_node, path)
            name = unique(f"{path}.{fx_node.name}" if path else fx_node.name)
        else:
            raise _fail(f"fx operation {fx_node.op} {fx_node.target}", _module_path(fx_node))
        if isinstance(slots, tuple):  # a list argument (torch.cat)
            inputs = [ir_name[a] for a in fx_node.args[0]]
        else:
            inputs = [ir_name[fx_node.args[i]] for i in slots]
        if op is None:  # identity
            ir_name[fx_node] = inputs[0]
            continue
        ir_name[fx_node] = graph.add(Node(name, op, inputs, source=path)).name
    return graph
