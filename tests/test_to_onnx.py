"""Lowering the IR to ONNX: checker, shape inference, metadata, float agreement with torch, and the
integer model's bit-exactness with the integer interpreter (real images, batches, extremes)."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from medqk.convert import interpret_float, interpret_int, passes, to_onnx
from medqk.convert.elementwise import Add, Affine
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input, quantize_input
from medqk.convert.neurons import NISF, Sigmoid
from medqk.convert.pipeline import float_graph_of, mask_agreement, torch_probabilities
from medqk.convert.quantize import quantize
from medqk.convert.synapses import Conv2d, Upsample
from support import monuseg_crops, needs_monuseg, random_images, small_model

SIZE = 64
META = {"medqk_version": "9.9.9", "source_checkpoint": {"path": "/x.pt", "sha256": "ab" * 32},
        "model_config": {"widths": [8, 16, 32, 64], "levels": 4},
        "preprocessing": {"size": [SIZE, SIZE], "channel_order": "BGR", "scale": 1 / 255}, "image_size": [SIZE, SIZE]}


def session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model_or_session, x):
    s = session(model_or_session) if isinstance(model_or_session, onnx.ModelProto) else model_or_session
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def varied_images() -> np.ndarray:
    """Images of different content: noise, a smooth gradient, flat grey, high-contrast stripes."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    gradient = np.stack([xx, yy, (xx + yy) / 2])
    stripes = np.stack([(np.sin(xx * 40) > 0).astype(float)] * 3)
    return np.concatenate([random_images(2, SIZE, seed=3), np.stack([gradient, np.full_like(gradient, 0.5), stripes])]).astype(np.float32)


@pytest.fixture(scope="module")
def converted():
    torch_model = small_model(seed=1)
    fgraph = float_graph_of(torch_model, (SIZE, SIZE))
    qgraph, _ = quantize(fgraph, random_images(2, SIZE, seed=7))
    return torch_model, fgraph, qgraph


@pytest.fixture(scope="module")
def models(converted):
    _, fgraph, qgraph = converted
    return to_onnx.float_model(fgraph, META), to_onnx.int_model(qgraph, META)


def test_both_models_pass_the_full_checker(models):
    for model in models:
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17


def _concrete(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    for dim, n in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = n
    return model


@pytest.mark.parametrize("which", [0, 1], ids=["float", "int"])
def test_shape_inference_agrees_with_the_ir_node_by_node(converted, models, which):
    graph = converted[1 + which]
    inferred = onnx.shape_inference.infer_shapes(_concrete(models[which], [2, 3, SIZE, SIZE]), strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in graph.nodes():
        assert shapes[node.name] == [2, *node.tensor.shape], node.name
    out = inferred.graph.output[0]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [2, *graph.output.tensor.shape]


def test_float_model_keeps_batch_height_and_width_dynamic(models):
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (models[0].graph.input[0], models[0].graph.output[0])]
    assert dims == [["N", 3, "H", "W"], ["N", 1, "H", "W"]]


def test_metadata_records_the_provenance(models, converted):
    for model in models:
        props = {p.key: p.value for p in model.metadata_props}
        assert props["medqk_version"] == "9.9.9"
        assert props["source_checkpoint_sha256"] == "ab" * 32
        assert props["widths"] == "[8, 16, 32, 64]" and props["nisf_levels"] == "[4]"
        assert '"channel_order": "BGR"' in props["preprocessing"]
        assert props["size_multiple"] == "16"
    props = {p.key: p.value for p in models[1].metadata_props}
    assert int(props["input_frac_bits"]) == converted[2].input.tensor.frac_bits
    assert float(props["logit_scale"]) == converted[2].output.op.in_scale


def _check_float_against_torch(torch_model, fgraph, model, images, with_ir: bool | None = None):
    """Masks as torch's; probabilities as close to torch's as the float IR's (computed at the tests'
    usual size, or when ``with_ir``; else within 1e-5)."""
    onnx_probs = run(model, images)
    torch_probs = torch_probabilities(torch_model, images)
    with_ir = images.shape[2:] == (SIZE, SIZE) if with_ir is None else with_ir
    ir_probs = interpret_float.run(fgraph, images) if with_ir else None
    assert onnx_probs.shape == torch_probs.shape
    assert mask_agreement(onnx_probs, torch_probs)["pixel_agreement"] >= 0.999
    # as close as the float IR: float32 rounding only (the IR is float64, torch float32)
    ir_error = np.abs(ir_probs - torch_probs).max() if ir_probs is not None else 1e-5
    assert np.abs(onnx_probs - torch_probs).max() <= max(4 * ir_error, 2e-5)


def test_float_model_matches_torch_on_varied_images(converted, models):
    torch_model, fgraph, _ = converted
    _check_float_against_torch(torch_model, fgraph, models[0], varied_images())


@needs_monuseg
def test_float_model_matches_torch_on_monuseg_crops(converted, models):
    torch_model, fgraph, _ = converted
    _check_float_against_torch(torch_model, fgraph, models[0], monuseg_crops(SIZE, count=6))


def test_both_models_on_a_trained_checkpoint_and_real_images(monuseg_trained):
    """The published-width MoNuSeg checkpoint on the 6 validation images at 256x256: the float
    model as close to torch as the float IR (both 1.2e-3 at most, at 0.007% of the pixels, where
    torch's float32 rounds a NISF input at a level boundary the other way), the integer model
    equal to the interpreter."""
    m = monuseg_trained
    _check_float_against_torch(m.model, m.graph, to_onnx.float_model(m.graph), m.images, with_ir=True)
    _assert_int_exact(m.qgraph, to_onnx.int_model(m.qgraph), m.images)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 48, 80)])
def test_float_model_runs_any_batch_and_size_multiple_of_16(converted, models, shape):
    torch_model, fgraph, _ = converted
    _check_float_against_torch(torch_model, fgraph, models[0], random_images(shape[0], 96, seed=11)[:, :, :shape[2], :shape[3]].copy())


def test_resize_is_torch_bilinear_align_corners_at_every_size():
    graph = Graph()
    graph.add(Node("input", Input(shape=(2, 5, 7)), []))
    graph.add(Node("up", Upsample(factor=2), ["input"]))
    passes.infer_tensors(graph)
    s = session(to_onnx.float_model(graph))
    for h, w in ((5, 7), (8, 8), (13, 4)):
        x = np.random.default_rng(h).random((2, 2, h, w)).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=True).numpy()
        assert np.abs(run(s, x) - expected).max() < 1e-6


# -- integer model: bit-exact ----------------------------------------------------------------

def _assert_int_exact(qgraph, model, images, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    x_int = quantize_input(images, qgraph.input.tensor.frac_bits)
    expected = interpret_int.run(qgraph, x_int)
    got = run(session(model, level), x_int)
    assert got.dtype == np.int64 and got.shape == expected.shape
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} logits differ"


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL],
                         ids=["optimized", "unoptimized"])
def test_int_model_equals_the_interpreter_on_a_batch_of_varied_images(converted, models, level):
    _assert_int_exact(converted[2], models[1], varied_images(), level)


@needs_monuseg
def test_int_model_equals_the_interpreter_on_monuseg_crops(converted, models):
    crops = np.concatenate([monuseg_crops(SIZE, count=6), monuseg_crops(SIZE, count=6, offset=100)])
    _assert_int_exact(converted[2], models[1], crops)


def test_int_model_equals_the_interpreter_where_states_saturate(converted, models):
    """Inputs far outside [0, 1], at the edges of the input format (+-128), drive states to the 24-bit
    limits: the worst case of every bound."""
    rng = np.random.default_rng(5)
    extreme = np.clip(rng.choice([-1.0, 1.0], (2, 3, SIZE, SIZE)) * 120 + rng.normal(0, 6, (2, 3, SIZE, SIZE)),
                      -127, 127).astype(np.float32)
    _, _, saturated = interpret_int.run(converted[2], quantize_input(extreme, converted[2].input.tensor.frac_bits), record=True)
    assert sum(saturated.values()) > 0
    _assert_int_exact(converted[2], models[1], extreme)


def _tiny_int_graph(*ops) -> Graph:
    """input -> ops... -> sigmoid, with shapes inferred (ops already quantized by hand)."""
    graph = Graph()
    graph.add(Node("input", Input(shape=(16, 6, 6)), []))
    previous = "input"
    for i, op in enumerate(ops):
        previous = graph.add(Node(f"n{i}", op, [previous] * (op.arity or len(op.coefficients)))).name
    graph.add(Node("out", Sigmoid(in_scale=2.0**-16), [previous]))
    passes.infer_tensors(graph)
    graph.input.tensor.frac_bits = 16
    return graph


def test_int_model_is_exact_for_worst_case_convolutions_and_rounding_ties():
    rng = np.random.default_rng(0)
    full_scale = rng.choice([-127, 127], (16, 16, 3, 3))  # sum|w| = 18,288 per output: digit planes needed
    conv = Conv2d(full_scale.astype(float), padding=(1, 1), weight_mantissa=full_scale, weight_exponent=0,
                  bias_acc=rng.integers(-2**30, 2**30, 16), shift=13)
    affine = Affine(np.ones(16), np.zeros(16), multiplier=rng.integers(-2**15, 2**15, 16),
                    offset_int=rng.integers(-2**30, 2**30, 16), shift=15)
    add = Add(coefficients=(1.0, 1.0), multipliers=(3, -(2**23) + 1), shifts=(-2, 24))
    nisf = NISF(levels=4, integer_output=True, multiplier=5, shift=3)
    graph = _tiny_int_graph(conv, affine, add, Upsample(factor=2, frac_bits=12), nisf)
    limit = 2**23
    x = np.concatenate([rng.integers(-limit, limit, (3, 16, 6, 6)), np.full((1, 16, 6, 6), limit - 1), np.full((1, 16, 6, 6), -limit)])
    model = to_onnx.int_model(graph)
    onnx.checker.check_model(model, full_check=True)
    _, values, _ = interpret_int.run(graph, x, record=True)
    got = run(model, x)
    assert np.array_equal(got, interpret_int.run(graph, x))
    assert len(np.unique(values["n4"])) > 1  # the spikes are not trivially constant


def test_nisf_rounds_ties_half_to_even_like_the_interpreter():
    graph = _tiny_int_graph(NISF(levels=255, integer_output=True, multiplier=1, shift=2))
    x = np.arange(-64, 2 * 16 * 36 - 64).reshape(2, 16, 6, 6)  # every residue mod 4, ties included
    assert np.array_equal(run(to_onnx.int_model(graph), x), interpret_int.run(graph, x))


def test_a_graph_beyond_float64_exact_integers_is_refused():
    huge = Affine(np.ones(16), np.zeros(16), multiplier=np.full(16, 2**31), offset_int=np.zeros(16, dtype=np.int64), shift=0)
    with pytest.raises(ValueError, match=r"node n0: .*exceed 2\*\*53"):
        to_onnx.int_model(_tiny_int_graph(huge))


def test_an_ann_baseline_lowers_too():
    """Conv, BatchNorm, ReLU, max pooling and transposed convolution (the U-Net baseline's ops)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.ConvTranspose2d(8, 4, 2, stride=2), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 1), torch.nn.Sigmoid()).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    model = to_onnx.float_model(float_graph_of(net, (16, 16)))
    onnx.checker.check_model(model, full_check=True)
    x = random_images(2, 32, seed=1)
    assert np.abs(run(model, x) - torch_probabilities(net, x)).max() < 1e-5
