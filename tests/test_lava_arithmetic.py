"""medqk's integer arithmetic is Lava's: Lava's OWN fixed-point process models (Conv, Sparse,
ProdNeuron, GradedVec under Loihi2SimCfg(select_tag="fixed_pt")) run on layers of real converted
graphs (the embedded default model and the trained published-width MoNuSeg checkpoint, 32x32) and
on constructed layers whose dendritic sums come near 2**23, and equal medqk's kernels bit for bit.

Lava's Conv wraps its dendritic sum modulo 2**24 (``signed_clamp``); medqk never lets a sum get
there: a layer's input travels whole when ``peak * weight_sum <= 2**23 - 1`` (spike maps always
do) and as digit planes otherwise (``kernels.dendritic_plane_bits``). One test shows the wrap.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")

sys.path.insert(0, str(Path(__file__).parent))
import support  # noqa: E402

from medqk.convert import interpret_int, kernels  # noqa: E402
from medqk.convert.fixed_point import STATE_MAX, STATE_MIN, saturate  # noqa: E402
from medqk.convert.io import quantize_input  # noqa: E402
from medqk.deploy.lava_layout import (combine_planes, from_whc, lava_conv_groups, lava_conv_weight, split_planes,  # noqa: E402
                                       to_whc, xy)  # noqa: E402
from medqk.deploy.lava_runtime import lava_run, require_lava  # noqa: E402

require_lava()
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava.proc.conv.process import Conv  # noqa: E402
from lava.proc.graded.process import GradedVec  # noqa: E402
from lava.proc.io.sink import RingBuffer as Sink  # noqa: E402
from lava.proc.io.source import RingBuffer as Source  # noqa: E402
from lava.proc.prodneuron.process import ProdNeuron  # noqa: E402
from lava.proc.sparse.process import Sparse  # noqa: E402

CROP = 8
#: the whole 24-bit state range: the bound a real-valued input is planned for
REAL_PEAK = 1 << 23


def run_library(process, feeds, out_port, steps: int = 3) -> np.ndarray:
    """Send each array of ``feeds`` [(in port, value)] once, at step 1, into ``process`` under Lava's
    fixed-point models; returns what ``out_port`` sent at every step, (*shape, steps) int64."""
    sources = []
    for port, value in feeds:
        value = np.asarray(value, np.int32)
        data = np.zeros((*value.shape, steps), np.int32)
        data[..., 0] = value
        sources.append(Source(data=data))
        sources[-1].s_out.connect(port)
    sink = Sink(shape=out_port.shape, buffer=steps)
    out_port.connect(sink.a_in)
    with lava_run([sink, process, *sources], steps, run_cfg=Loihi2SimCfg(select_tag="fixed_pt")):
        return np.rint(sink.data.get()).astype(np.int64)


def lava_conv_sums(op, x: np.ndarray, bits: int | None, peak: int) -> tuple[np.ndarray, np.ndarray]:
    """Lava's Conv on ``x`` [1, C, H, W] with ``op``'s mantissas, the input split into digit planes of
    ``bits``: (the per-plane dendritic sums (W, H, P * O), their recombination [1, O, H, W])."""
    planes = kernels.plane_count(bits, peak) if bits is not None else 1
    x_in = split_planes(to_whc(x), bits, peak)
    conv = Conv(weight=lava_conv_weight(op.weight_mantissa, planes, op.groups), input_shape=x_in.shape,
                stride=xy(op.stride), padding=xy(op.padding), groups=lava_conv_groups(op.groups, planes), num_message_bits=24)
    sent = run_library(conv, [(conv.s_in, x_in)], conv.a_out)
    assert not sent[..., 0].any() and not sent[..., 2].any()  # one step of delay, nothing left behind
    return sent[..., 1], from_whc(combine_planes(sent[..., 1], bits, planes))


def input_peak(graph, node) -> int:
    """The bound the lowering plans a conv's input for: D for spike maps, the 24-bit range otherwise."""
    source = graph[node.inputs[0]]
    return int(source.op.levels) if source.op.type == "nisf" else REAL_PEAK


def converted(checkpoint):
    """A checkpoint's integer graph at 32x32 calibrated on one image, and the interpreter's tensors
    on that image."""
    from medqk.checkpoint import load_checkpoint_payload
    from medqk.convert.pipeline import float_graph_of
    from medqk.convert.quantize import quantize
    from medqk.defaults import default_calibration_images, default_checkpoint_path

    model, _ = load_checkpoint_payload(checkpoint or default_checkpoint_path())
    image = (support.monuseg_crops(32, 1) if (support.MONUSEG_VAL / "img").is_dir()
             else default_calibration_images(1, (32, 32)))
    graph, _ = quantize(float_graph_of(model, (32, 32)), image)
    _, values, _ = interpret_int.run(graph, quantize_input(image, graph.input.tensor.frac_bits), record=True)
    return graph, values


@pytest.fixture(scope="module", params=["default", "monuseg-published"])
def real_graph(request):
    return converted(None if request.param == "default" else support.MONUSEG_CHECKPOINT)


def _conv_layers(graph):
    """A first (image-fed), a spike-fed, an affine-fed and the last convolution of the graph."""
    convs = [n for n in graph.nodes() if n.op.type == "conv2d"]
    spike_fed = next(n for n in convs if graph[n.inputs[0]].op.type == "nisf")
    affine_fed = next(n for n in convs if graph[n.inputs[0]].op.type == "affine")
    return [convs[0], spike_fed, affine_fed, convs[-1]]


def test_conv_layers_of_converted_graphs_equal_lavas_conv(real_graph):
    """Each chosen layer on an 8x8 crop of the input the interpreter recorded (at most 8 output
    channels: every output sums on its own): Lava's Conv, per digit plane, gives exactly
    ``kernels.exact_int``'s sums, and the layer's requantization of them gives the interpreter's output."""
    graph, values = real_graph
    for node in _conv_layers(graph):
        op = copy.copy(node.op)
        peak = input_peak(graph, node)
        bits = kernels.dendritic_plane_bits(peak, kernels.largest_weight_sum(op.weight_mantissa))
        if op.groups == 1:  # grouped ones are cheap whole: one input group per output
            op.weight_mantissa, op.bias_acc = op.weight_mantissa[:8], op.bias_acc[:8]
        x = values[node.inputs[0]][:, :, :CROP, :CROP]
        plane_sums, acc = lava_conv_sums(op, x, bits, peak)
        assert np.abs(plane_sums).max() <= kernels.DENDRITE_MAX
        exact = kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding, op.groups,
                                  weight_sum=kernels.largest_weight_sum(op.weight_mantissa))
        assert np.array_equal(acc, exact), node.name
        expected, _ = interpret_int.evaluate(op, x)
        assert np.array_equal(saturate(interpret_int.conv2d_requantize(op, acc)), expected), node.name
    # real-valued inputs do need planes: their whole sums leave 24 bits on these graphs
    assert any(kernels.dendritic_plane_bits(input_peak(graph, n), kernels.largest_weight_sum(n.op.weight_mantissa))
               for n in _conv_layers(graph))


def _near_limit_conv(channels: int):
    """1-output-pair 3x3 conv over ``channels`` spike channels, weights +127 / -127: with every input
    4, its two sums are +-4 * 127 * 9 * channels."""
    from medqk.convert.synapses import Conv2d

    w = np.ones((2, channels, 3, 3), np.int64) * 127
    w[1] = -127
    op = Conv2d(weight=w.astype(np.float64))
    op.weight_mantissa, op.weight_exponent, op.bias_acc, op.shift = w, 0, np.zeros(2, np.int64), 0
    return op, np.full((1, channels, 3, 3), 4, np.int64)


def test_spike_sums_next_to_2_pow_23_are_exact_and_one_more_channel_wraps_in_lava():
    op, x = _near_limit_conv(1834)
    near = 4 * 127 * 9 * 1834
    assert 2**23 - 4000 < near <= kernels.DENDRITE_MAX
    assert kernels.dendritic_plane_bits(4, kernels.largest_weight_sum(op.weight_mantissa)) is None
    _, acc = lava_conv_sums(op, x, None, 4)
    assert acc.ravel().tolist() == [near, -near]

    op, x = _near_limit_conv(1835)
    over = 4 * 127 * 9 * 1835
    assert over > kernels.DENDRITE_MAX
    bits = kernels.dendritic_plane_bits(4, kernels.largest_weight_sum(op.weight_mantissa))
    assert bits == 2
    _, wrapped = lava_conv_sums(op, x, None, 4)  # Lava itself wraps modulo 2**24 ...
    assert wrapped.ravel().tolist() == [over - 2**24, 2**24 - over]
    plane_sums, acc = lava_conv_sums(op, x, bits, 4)  # ... which the digit planes never let happen
    assert acc.ravel().tolist() == [over, -over]
    assert np.abs(plane_sums).max() <= kernels.DENDRITE_MAX


def test_real_valued_planes_next_to_2_pow_23_are_exact(real_graph):
    """A layer built from the weight magnitudes of the graph's real-fed ungrouped convolution with the
    largest weight sum, fed the largest 24-bit state everywhere: every low plane's digit is
    2**bits - 1, so its sums come within a factor 2 of 2**23."""
    graph, _ = real_graph
    node = max((n for n in graph.nodes() if n.op.type == "conv2d" and n.op.groups == 1 and input_peak(graph, n) == REAL_PEAK),
               key=lambda n: kernels.largest_weight_sum(n.op.weight_mantissa))
    op = copy.copy(node.op)
    top = int(np.argmax(np.abs(op.weight_mantissa).reshape(len(op.weight_mantissa), -1).sum(1)))
    op.weight_mantissa = np.abs(op.weight_mantissa[top:top + 1])
    op.bias_acc = op.bias_acc[top:top + 1]
    ws = kernels.largest_weight_sum(op.weight_mantissa)
    bits = kernels.dendritic_plane_bits(REAL_PEAK, ws)
    x = np.full((1, op.weight_mantissa.shape[1] * op.groups, CROP, CROP), STATE_MAX, np.int64)
    plane_sums, acc = lava_conv_sums(op, x, bits, REAL_PEAK)
    assert 2**22 < np.abs(plane_sums).max() <= kernels.DENDRITE_MAX
    assert np.array_equal(acc, kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding,
                                                 op.groups, weight_sum=ws))
    x[...] = STATE_MIN  # the negative end: the top plane carries the sign
    plane_sums, acc = lava_conv_sums(op, x, bits, REAL_PEAK)
    assert np.abs(plane_sums).max() <= kernels.DENDRITE_MAX
    assert np.array_equal(acc, kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding,
                                                 op.groups, weight_sum=ws))


def _first(graph, op_type):
    return next(n for n in graph.nodes() if n.op.type == op_type)


def _channel_map(matrix: np.ndarray, shape_whc) -> np.ndarray:
    """A per-pixel channel map (C_out, C_in) as the (W*H*C_out, W*H*C_in) matrix of flattened
    (W, H, C) vectors: Sparse connects one pixel's channels only."""
    import scipy.sparse

    return scipy.sparse.kron(scipy.sparse.identity(shape_whc[0] * shape_whc[1], dtype=np.int32),
                             scipy.sparse.csr_matrix(matrix.astype(np.int32))).tocsr()


def test_head_sum_and_broadcast_are_lavas_sparse(real_graph):
    """SDQK's per-head channel sum and its broadcast back, as Lava Sparse processes (weights 1,
    weight_exp 0, graded 24-bit messages) on the graph's recorded spikes."""
    graph, values = real_graph
    for op_type in ("group_sum", "group_broadcast"):
        node = _first(graph, op_type)
        x = values[node.inputs[0]][:, :, :CROP, :CROP]
        c_in = x.shape[1]
        if op_type == "group_sum":
            per_pixel = np.kron(np.eye(node.op.groups), np.ones((1, c_in // node.op.groups)))
        else:
            per_pixel = np.kron(np.eye(c_in), np.ones((node.op.repeats, 1)))
        x_whc = to_whc(x)
        sparse = Sparse(weights=_channel_map(per_pixel, x_whc.shape), num_message_bits=24)
        sent = run_library(sparse, [(sparse.s_in, x_whc.ravel())], sparse.a_out)
        got = from_whc(sent[:, 1].reshape(*x_whc.shape[:2], -1))
        assert np.array_equal(got, interpret_int.evaluate(node.op, x)[0]), node.name


def test_spike_products_are_lavas_prodneuron(real_graph):
    """SDQK's Q x K-mask products: Lava's ProdNeuron with exp 0 and vth 0 (a product of 1 still
    spikes; ProdNeuron's default vth 1 would drop it) on the graph's recorded operands."""
    graph, values = real_graph
    node = max((n for n in graph.nodes() if n.op.type == "mul"), key=lambda n: np.count_nonzero(values[n.name]))
    a, b = (to_whc(values[i]) for i in node.inputs)
    prod = ProdNeuron(shape=a.shape, vth=0, exp=0)
    sent = run_library(prod, [(prod.a_in1, a), (prod.a_in2, b)], prod.s_out)
    expected = interpret_int.evaluate(node.op, from_whc(a), from_whc(b))[0]
    assert np.array_equal(from_whc(sent[..., 0]), expected) and expected.any()


def test_adds_are_lavas_dendritic_sum(real_graph):
    """A residual add of the graph: both operands sent into one GradedVec in port, which Lava sums
    point-wise (vth 0: the neuron passes the sum on). The 24-bit saturation of the IR's add stays
    medqk's (its neuron process); on the recorded values nothing saturates."""
    graph, values = real_graph
    node = next(n for n in graph.nodes() if n.op.type == "add" and graph[n.inputs[0]].tensor.kind == "real")
    assert node.op.multipliers == (1, 1) and node.op.shifts == (0, 0)
    a, b = (to_whc(values[i][:, :, :CROP, :CROP]) for i in node.inputs)
    neuron = GradedVec(shape=a.shape, vth=0)
    sent = run_library(neuron, [(neuron.a_in, a), (neuron.a_in, b)], neuron.s_out)
    expected, saturated = interpret_int.evaluate(node.op, from_whc(a), from_whc(b))
    assert saturated == 0 and np.array_equal(from_whc(sent[..., 0]), expected)


def test_convolutions_with_more_groups_than_lavas_int8_var():
    """Lava's Conv keeps ``groups`` in an int8 Var: a depthwise convolution of 256 channels on 24-bit
    states (2 digit planes of 256 groups each) runs with 64 groups of block-diagonal kernels, exactly."""
    from medqk.convert.synapses import Conv2d

    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (256, 1, 3, 3))
    op = Conv2d(weight=w.astype(np.float64), padding=(1, 1), groups=256)
    op.weight_mantissa = w
    x = rng.integers(STATE_MIN, STATE_MAX + 1, (1, 256, 4, 4))
    bits = kernels.dendritic_plane_bits(REAL_PEAK, kernels.largest_weight_sum(w))
    planes = kernels.plane_count(bits, REAL_PEAK)
    assert planes == 2 and lava_conv_groups(256, planes) == 64
    _, acc = lava_conv_sums(op, x, bits, REAL_PEAK)
    assert np.array_equal(acc, kernels.exact_int(kernels.conv2d, x, w, op.stride, op.padding, 256,
                                                 weight_sum=kernels.largest_weight_sum(w)))
