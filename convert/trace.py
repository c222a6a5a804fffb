"""Trace a torch module into the spike-graph IR (torch.fx; neurons and SDQK's head ops kept as leaves).

Handles MedQKFormer at any width, plain conv / BatchNorm / ReLU / pooling / transposed-conv networks
(the U-Net baseline) and the user's own spiking networks: their neuron classes are declared with
``neuron_registry.register_neuron`` and checked on a probe before they are trusted (see there).

Tensors of the IR are [C, H, W] maps. A torch tensor may be a *view* of one: flattened, reshaped or
permuted (``x.flatten(2).transpose(1, 2)`` for token-style ``nn.Linear`` layers). The tracer keeps,
for every torch tensor, the IR map it views and its *layout*: which logical axes (N, C, H, W) each
torch axis holds, in order. Layout changes cost nothing; ``nn.Linear`` needs the channels as its
last axis (a 1x1 convolution), element-wise ops need equal layouts, concatenation and slicing act
on the channel axis wherever it is, and every other op needs the plain [N, C, H, W] layout.

Anything else fails with ``TraceError`` naming the op, the module path and what is supported.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re

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
from medqk.convert.neuron_registry import TraceError, check_neurons, declaration_of
from medqk.model import HeadBroadcast, HeadSum

SUPPORTED = (
    "modules: Conv2d, ConvTranspose2d, BatchNorm2d, Linear (over channels), AvgPool2d, MaxPool2d, "
    "Upsample (bilinear align_corners=True, or nearest; integer factor), ReLU, Sigmoid, Softmax(dim=1), "
    "Flatten, Identity, Dropout, medqk's NISF and neurons declared with medqk.convert.register_neuron; "
    "functions: +, -, *, 1 - x, torch.cat / chunk / split and slicing along channels, flatten / reshape / view / "
    "permute / transpose, torch.sigmoid, softmax(dim=1), relu, F.interpolate (bilinear align_corners=True, or nearest)"
)

#: the plain layout: torch axes 0..3 hold N, C, H, W
STANDARD = ((0,), (1,), (2,), (3,))
AXIS_NAMES = "NCHW"
CHANNELS = (1,)

_NEURON_LIKE = re.compile(r"spike|neuron|lif|fire|heaviside|(^|[^a-z])if([^a-z]|$)|integrate", re.IGNORECASE)
_NEURON_FUNCTIONS = {"clamp", "clip", "round", "floor", "ceil", "ge", "gt", "heaviside", "where", "sign", "float"}


@dataclasses.dataclass(frozen=True)
class _View:
    """A torch tensor: the IR node whose [C, H, W] map it views, and its layout."""

    name: str
    layout: tuple[tuple[int, ...], ...] = STANDARD


@dataclasses.dataclass(frozen=True)
class _Parts:
    """A tuple of tensors (chunk, split)."""

    views: tuple[_View, ...]


def _layout_text(layout) -> str:
    return "[" + ", ".join("*".join(AXIS_NAMES[a] for a in group) for group in layout) + "]"


def _fail(what: str, where: str, hint: str = "") -> TraceError:
    return TraceError(f"cannot represent {what} at {where or 'the top level'} in the spike-graph IR; "
                      f"supported: {SUPPORTED}{hint}")


def _neuron_hint(cls: type | None, function: str = "") -> str:
    """A pointer to register_neuron where the failing module looks like a spiking neuron."""
    if cls is None or cls.__module__.startswith("torch."):
        return ""
    if _NEURON_LIKE.search(cls.__name__) or function in _NEURON_FUNCTIONS:
        return (f". If {cls.__name__} is a spiking neuron, declare what it computes with "
                f"medqk.convert.register_neuron({cls.__name__}, output='integer'|'normalized'|'binary', "
                "levels=..., threshold=...)")
    return ""


class _Tracer(torch.fx.Tracer):
    LEAVES = (HeadSum, HeadBroadcast)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.LEAVES) or declaration_of(m) is not None or super().is_leaf_module(m, qualname)


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy().copy()


def _square(value, what: str, path: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise _fail(f"{what} {tuple(value)} (only square windows)", path)
        value = value[0]
    return int(value)


def _avgpool_op(m: nn.AvgPool2d, channels: int, path: str) -> synapses.Conv2d:
    """Average pooling as the depthwise convolution it is: fixed weights 1/k^2 (zero padding counted)."""
    k, s, p = _square(m.kernel_size, "AvgPool2d kernel", path), _square(m.stride or m.kernel_size, "AvgPool2d stride", path), \
        _square(m.padding, "AvgPool2d padding", path)
    if m.ceil_mode or m.divisor_override is not None or (p and not m.count_include_pad):
        raise _fail("AvgPool2d with ceil_mode, divisor_override or count_include_pad=False", path)
    return synapses.Conv2d(np.full((channels, 1, k, k), 1.0 / (k * k)), None, s, p, channels)


def _module_op(m: nn.Module, path: str, fx_node: torch.fx.Node, in_shape):
    """IR op for a leaf module call applied to a standard-layout tensor of ``in_shape`` (N, C, H, W)."""
    if isinstance(m, nn.Conv2d):
        if m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise _fail(f"Conv2d with dilation {m.dilation}, padding {m.padding!r}, padding_mode {m.padding_mode}", path)
        return synapses.Conv2d(_array(m.weight), _array(m.bias), m.stride, m.padding, m.groups)
    if isinstance(m, nn.ConvTranspose2d):
        if m.groups != 1 or m.dilation != (1, 1) or any(m.output_padding):
            raise _fail("ConvTranspose2d with groups, dilation or output_padding", path)
        return synapses.ConvTranspose2d(_array(m.weight), _array(m.bias), m.stride, m.padding)
    if isinstance(m, nn.BatchNorm2d):
        if m.running_mean is None:
            raise _fail("BatchNorm2d without running statistics", path)
        weight = _array(m.weight) if m.affine else np.ones(m.num_features)
        bias = _array(m.bias) if m.affine else np.zeros(m.num_features)
        return ew.BatchNorm(_array(m.running_mean), _array(m.running_var), weight, bias, float(m.eps))
    if isinstance(m, HeadSum):
        return ew.GroupSum(groups=m.heads)
    if isinstance(m, HeadBroadcast):
        like = fx_node.args[1].meta["tensor_meta"].shape
        return ew.GroupBroadcast(repeats=int(like[1]) // m.heads)
    if isinstance(m, nn.ReLU):
        return neurons.ReLU()
    if isinstance(m, nn.Sigmoid):
        return neurons.Sigmoid()
    if isinstance(m, nn.Softmax):
        return _softmax_op(m.dim, path)
    if isinstance(m, nn.MaxPool2d):
        if m.padding or m.dilation != 1 or m.ceil_mode:
            raise _fail("MaxPool2d with padding, dilation or ceil_mode", path)
        k = _square(m.kernel_size, "MaxPool2d kernel", path)
        return ew.MaxPool2d(k, _square(m.stride or k, "MaxPool2d stride", path))
    if isinstance(m, nn.AvgPool2d):
        return _avgpool_op(m, int(in_shape[1]), path)
    if isinstance(m, nn.Upsample):
        return _upsample_op(m.mode, m.align_corners, m.scale_factor, path)
    raise _fail(f"module {type(m).__name__}", path, _neuron_hint(type(m)))


def _softmax_op(dim, path):
    if dim not in (1, -3):
        raise _fail(f"softmax over dim {dim} (only over the channels, dim=1)", path)
    return neurons.Softmax()


def _upsample_op(mode, align_corners, scale_factor, path):
    factor = scale_factor[0] if isinstance(scale_factor, (tuple, list)) else scale_factor
    integer = factor is not None and float(factor) == int(factor)
    if not integer or not ((mode == "bilinear" and align_corners) or mode == "nearest"):
        raise _fail(f"upsampling mode={mode} align_corners={align_corners} scale={scale_factor}", path)
    return synapses.Upsample(factor=int(factor), mode=mode)


def _is_node(a) -> bool:
    return isinstance(a, torch.fx.Node)


def _arg(fx_node: torch.fx.Node, index: int, name: str, default=None):
    if len(fx_node.args) > index:
        return fx_node.args[index]
    return fx_node.kwargs.get(name, default)


def _function_op(fx_node: torch.fx.Node, path: str):
    """IR op for an element-wise or output function call, and the indices of its graph inputs."""
    target, args = fx_node.target, fx_node.args
    if target in (operator.add, torch.add, "add") and all(map(_is_node, args[:2])):
        return ew.Add(coefficients=(1.0, 1.0)), [0, 1]
    if target in (operator.sub, torch.sub, "sub"):
        if all(map(_is_node, args[:2])):
            return ew.Add(coefficients=(1.0, -1.0)), [0, 1]
        if not _is_node(args[0]) and _is_node(args[1]):
            return ew.Complement(one=float(args[0])), [1]
    if target is torch.rsub and _is_node(args[0]) and not _is_node(args[1]):
        return ew.Complement(one=float(args[1])), [0]
    if target in (operator.mul, torch.mul, "mul") and all(map(_is_node, args[:2])):
        return ew.Mul(), [0, 1]
    if target in (torch.sigmoid, F.sigmoid, "sigmoid"):
        return neurons.Sigmoid(), [0]
    if target in (torch.softmax, F.softmax, "softmax"):
        return _softmax_op(_arg(fx_node, 1, "dim"), path), [0]
    if target in (torch.relu, F.relu, "relu"):
        return neurons.ReLU(), [0]
    if target is F.interpolate:
        kw = fx_node.kwargs
        return _upsample_op(kw.get("mode", "nearest"), kw.get("align_corners"), kw.get("scale_factor"), path), [0]
    return None, None


def _module_path(fx_node: torch.fx.Node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    return list(stack.keys())[-1] if stack else ""


def _module_class(fx_node: torch.fx.Node) -> type | None:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    cls = list(stack.values())[-1]
    return cls[1] if isinstance(cls, tuple) else cls


def _name_of(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _regroup(layout, sizes: list[int], shape, what: str, path: str):
    """The layout after a reshape to ``shape``: consecutive logical axes grouped to match each size."""
    axes = [a for group in layout for a in group]
    groups = []
    for target in shape:
        run = []
        while axes and (not run or math.prod(sizes[a] for a in run) < target):
            run.append(axes.pop(0))
        if math.prod(sizes[a] for a in run) != target:
            raise _fail(f"{what} to {list(shape)}, which splits an axis of the [N, C, H, W] map it views", path)
        groups.append(tuple(run))
    if axes:
        raise _fail(f"{what} to {list(shape)}", path)
    return tuple(groups)


class _Recorder(ShapeProp):
    """ShapeProp that also keeps every non-tensor result (sizes, shape arithmetic), so that slices
    and split sizes computed from ``x.shape`` are known."""

    def __init__(self, gm):
        super().__init__(gm)
        self.constants: dict[torch.fx.Node, object] = {}

    def run_node(self, n):
        result = super().run_node(n)
        if not isinstance(result, torch.Tensor):
            self.constants[n] = result
        return result


class _Converter:
    """Turns the fx graph into IR nodes, one fx node at a time (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule, input_shape, constants: dict):
        self.gm = gm
        self.constants = constants
        self.graph = Graph()
        self.values: dict[torch.fx.Node, object] = {}
        self.used: dict[str, int] = {}
        self.input_shape = tuple(input_shape)
        self.shapes: dict[str, tuple[int, ...]] = {}  # IR node -> its [C, H, W]

    def unique(self, name: str) -> str:
        self.used[name] = self.used.get(name, 0) + 1
        return name if self.used[name] == 1 else f"{name}@{self.used[name] - 1}"

    def add(self, name: str, op, inputs: list[str], source: str) -> str:
        try:
            shape = tuple(op.out_shape([self.shapes[i] for i in inputs]))
        except ValueError as error:
            raise _fail(f"{op.type} here ({error})", source) from None
        node = self.graph.add(Node(self.unique(name), op, inputs, source=source))
        self.shapes[node.name] = shape
        return node.name

    def view(self, a, path: str) -> _View:
        value = self.values.get(a) if _is_node(a) else None
        if not isinstance(value, _View):
            raise _fail(f"an operand {a!r} that is not a tensor of the network", path)
        return value

    def standard(self, view: _View, what: str, path: str) -> str:
        if view.layout != STANDARD:
            raise _fail(f"{what} on a tensor viewed as {_layout_text(view.layout)}; it needs an [N, C, H, W] map "
                        "(reshape or permute it back first)", path)
        return view.name

    def sizes_of(self, view: _View) -> list[int]:
        """Logical axis sizes (N, C, H, W) of the map ``view`` shows (N is 1 while tracing)."""
        return [1, *self.shapes[view.name]]

    def channel_axis(self, view: _View, dim, what: str, path: str) -> int:
        axis = dim % len(view.layout)
        if view.layout[axis] != CHANNELS:
            raise _fail(f"{what} along {AXIS_NAMES[view.layout[axis][0]] if len(view.layout[axis]) == 1 else 'a merged axis'} "
                        f"of a tensor viewed as {_layout_text(view.layout)} (only along the channels)", path)
        return axis

    # -- one fx node -------------------------------------------------------------------------
    def convert(self, fx_node: torch.fx.Node):
        if fx_node.op == "placeholder":
            return _View(self.add("input", Input(shape=self.input_shape), [], "input"))
        if "tensor_meta" not in fx_node.meta:  # shape arithmetic (x.shape, sizes): no tensor, no IR
            return None
        if fx_node.op == "call_module":
            return self.module_call(fx_node)
        if fx_node.op in ("call_function", "call_method"):
            return self.function_call(fx_node)
        raise _fail(f"fx operation {fx_node.op} {fx_node.target}", _module_path(fx_node))

    def module_call(self, fx_node: torch.fx.Node):
        path = str(fx_node.target)
        m = self.gm.get_submodule(path)
        x = self.view(fx_node.args[0], path)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(m, nn.Flatten):
            return self.reshaped(fx_node, x, "Flatten", path)
        declaration = declaration_of(m)
        if declaration is not None:  # element-wise: any layout
            return _View(self.add(path, declaration.op(m), [x.name], path), x.layout)
        if isinstance(m, nn.Linear):
            self.channel_axis(x, -1, "Linear", path)
            weight = _array(m.weight)[:, :, None, None]
            return _View(self.add(path, synapses.Conv2d(weight, _array(m.bias)), [x.name], path), x.layout)
        op = _module_op(m, path, fx_node, fx_node.args[0].meta["tensor_meta"].shape)
        inputs = [self.standard(x, f"module {type(m).__name__}", path)]
        return _View(self.add(path, op, inputs, path))

    def function_call(self, fx_node: torch.fx.Node):
        path, target, args = _module_path(fx_node), fx_node.target, fx_node.args
        name = _name_of(target)
        node_name = f"{path}.{fx_node.name}" if path else fx_node.name
        if target is operator.getitem:
            return self.getitem(fx_node, path, node_name)
        if name in ("flatten", "reshape", "view", "permute", "transpose", "contiguous"):
            x = self.view(args[0], path)
            if name == "contiguous":
                return x
            if name == "permute":
                dims = self.concrete(args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:])
                return _View(x.name, tuple(x.layout[d % len(x.layout)] for d in dims))
            if name == "transpose":
                layout = list(x.layout)
                a, b = self.concrete(args[1]) % len(layout), self.concrete(args[2]) % len(layout)
                layout[a], layout[b] = layout[b], layout[a]
                return _View(x.name, tuple(layout))
            return self.reshaped(fx_node, x, name, path)
        if target is torch.cat or name == "cat":
            views = [self.view(a, path) for a in args[0]]
            if len({v.layout for v in views}) != 1:
                raise _fail("torch.cat of tensors viewed in different layouts", path)
            self.channel_axis(views[0], self.concrete(_arg(fx_node, 1, "dim", 0)), "torch.cat", path)
            return _View(self.add(node_name, ew.Concat(), [v.name for v in views], path), views[0].layout)
        if name in ("chunk", "split", "tensor_split"):
            x = self.view(args[0], path)
            axis = self.channel_axis(x, self.concrete(_arg(fx_node, 2, "dim", 0)), f"torch.{name}", path)
            start, parts = 0, []
            for i, meta in enumerate(fx_node.meta["tensor_meta"]):
                stop = start + int(meta.shape[axis])
                parts.append(_View(self.add(f"{node_name}.{i}", ew.ChannelSlice(start, stop), [x.name], path), x.layout))
                start = stop
            return _Parts(tuple(parts))
        op, slots = _function_op(fx_node, path)
        if op is None:
            constant = " with a constant operand" if target in (operator.add, operator.mul, operator.sub, "add", "mul", "sub") else ""
            raise _fail(f"function {name}{constant}", path, _neuron_hint(_module_class(fx_node), name))
        views = [self.view(args[i], path) for i in slots]
        if len({v.layout for v in views}) != 1:
            raise _fail(f"{name} of tensors viewed in different layouts", path)
        elementwise = isinstance(op, (ew.Add, ew.Mul, ew.Complement))
        inputs = [v.name if elementwise else self.standard(v, name, path) for v in views]
        return _View(self.add(node_name, op, inputs, path), views[0].layout if elementwise else STANDARD)

    def reshaped(self, fx_node, x: _View, what: str, path: str) -> _View:
        shape = list(fx_node.meta["tensor_meta"].shape)
        return _View(x.name, _regroup(x.layout, self.sizes_of(x), shape, what, path))

    def concrete(self, a):
        """``a`` with every fx node in it replaced by the value it had while tracing."""
        if _is_node(a):
            return self.constants[a]
        if isinstance(a, slice):
            return slice(self.concrete(a.start), self.concrete(a.stop), self.concrete(a.step))
        if isinstance(a, (tuple, list)):
            return type(a)(self.concrete(x) for x in a)
        return a

    def getitem(self, fx_node, path: str, node_name: str):
        source, index = fx_node.args[0], self.concrete(fx_node.args[1])
        value = self.values.get(source)
        if isinstance(value, _Parts):
            return value.views[index]
        x = self.view(source, path)
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (len(x.layout) - len(index) + 1) + index[at + 1:]
        sliced = [(i, s) for i, s in enumerate(index) if s != slice(None)]
        if len(sliced) != 1 or not isinstance(sliced[0][1], slice) or sliced[0][1].step not in (None, 1):
            raise _fail(f"indexing {index!r} (only one contiguous slice along the channels)", path)
        axis, s = sliced[0]
        self.channel_axis(x, axis, "slicing", path)
        start, stop, _ = s.indices(self.sizes_of(x)[1])
        return _View(self.add(node_name, ew.ChannelSlice(start, stop), [x.name], path), x.layout)


def trace(module: nn.Module, input_shape: tuple[int, int, int]) -> Graph:
    """The IR graph of ``module`` (in eval mode) for inputs of ``input_shape`` (C, H, W)."""
    module = module.eval()
    check_neurons(module)
    try:
        fx_graph = _Tracer().trace(module)
    except TraceError:
        raise
    except Exception as error:  # fx cannot follow data-dependent Python control flow
        raise TraceError(f"torch.fx could not trace {type(module).__name__}: {error}") from error
    gm = torch.fx.GraphModule(module, fx_graph)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    with torch.no_grad():
        try:
            recorder = _Recorder(gm)
            recorder.propagate(torch.zeros((1,) + tuple(input_shape), dtype=dtype))
        except Exception as error:
            raise TraceError(f"{type(module).__name__} does not run on an input of shape {list(input_shape)} "
                             f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None

    converter = _Converter(gm, tuple(input_shape), recorder.constants)
    for fx_node in fx_graph.nodes:
        if fx_node.op == "output":
            out = converter.values.get(fx_node.args[0]) if _is_node(fx_node.args[0]) else None
            if not isinstance(out, _View):
                raise _fail("a network output that is not one tensor", "the output")
            converter.standard(out, "the network's output", "the output")
            continue
        converter.values[fx_node] = converter.convert(fx_node)
    return converter.graph
