"""The onnx and onnx-int backends: written by `medqk convert`, run by `medqk run`, clear errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medqk.convert.commands import OUTPUT_WRITERS
from medqk.convert.pipeline import float_graph_of, int_probabilities
from medqk.convert.quantize import quantize
from medqk.convert.serialize import ConvertedModel, save_model
from medqk.convert import interpret_float, to_onnx
from medqk.deploy import onnx_runtime
from medqk.deploy.backends import BACKENDS, ModelHandle
from medqk.errors import InputError
from support import random_images, small_model

SIZE = 32


@pytest.fixture(scope="module")
def converted():
    fgraph = float_graph_of(small_model(seed=2), (SIZE, SIZE))
    qgraph, _ = quantize(fgraph, random_images(1, SIZE))
    return ConvertedModel(fgraph, qgraph, {"preprocessing": {"size": [SIZE, SIZE]}, "source_checkpoint": {"sha256": "cd" * 32},
                                           "model_config": {"widths": [8, 16, 32, 64], "levels": 4}})


@pytest.fixture(scope="module")
def model_dir(converted, tmp_path_factory):
    return save_model(converted, tmp_path_factory.mktemp("m") / "model", extra_writers=OUTPUT_WRITERS)


def test_convert_writes_both_onnx_models(model_dir):
    for name in (to_onnx.FLOAT_FILE, to_onnx.INT_FILE):
        onnx.checker.check_model(str(model_dir / name), full_check=True)


def test_backends_are_registered():
    assert BACKENDS["onnx"] is onnx_runtime.run_onnx and BACKENDS["onnx-int"] is onnx_runtime.run_onnx_int


def test_onnx_int_backend_gives_the_integer_interpreters_probabilities(converted, model_dir):
    images = random_images(3, SIZE, seed=4)
    result = BACKENDS["onnx-int"](ModelHandle(model_dir), images)
    assert np.array_equal(result.probabilities, int_probabilities(converted.int_graph, images))
    assert result.info["onnx_model"] == str(model_dir / to_onnx.INT_FILE)


def test_onnx_backend_gives_the_float_irs_probabilities(converted, model_dir):
    images = random_images(2, SIZE, seed=5)
    result = BACKENDS["onnx"](ModelHandle(model_dir), images)
    assert result.probabilities.dtype == np.float32 and result.probabilities.shape == (2, 1, SIZE, SIZE)
    assert np.abs(result.probabilities - interpret_float.run(converted.float_graph, images)).max() < 1e-4
    assert result.info["threads"] == onnx_runtime.cpu_threads()


class _CheckpointHandle:
    """A MODEL that is a checkpoint: no directory, converted in memory."""

    directory = None

    def __init__(self, converted):
        self.converted = converted


def test_a_checkpoint_is_lowered_in_memory(converted):
    images = random_images(1, SIZE, seed=6)
    result = onnx_runtime.run_onnx_int(_CheckpointHandle(converted), images)
    assert np.array_equal(result.probabilities, int_probabilities(converted.int_graph, images))
    assert "in memory" in result.info["onnx_model"]


def test_session_uses_every_core_and_all_graph_optimizations():
    import onnxruntime as ort

    options = onnx_runtime.session_options()
    assert options.intra_op_num_threads == onnx_runtime.cpu_threads()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


# -- errors ------------------------------------------------------------------------------------

def test_a_directory_without_onnx_models_says_to_run_convert(converted, tmp_path):
    bare = save_model(converted, tmp_path / "bare")
    with pytest.raises(InputError, match=r"has no model\.onnx.*medqk convert"):
        BACKENDS["onnx"](ModelHandle(bare), random_images(1, SIZE))


@pytest.mark.parametrize("shape, expected", [
    ((1, 4, SIZE, SIZE), r"expects input 'image' of shape \[N, 3, H, W\].*got \[1, 4, 32, 32\]"),
    ((1, 3, 40, SIZE), r"H and W multiples of 16; got \[1, 3, 40, 32\]"),
    ((3, SIZE, SIZE), r"got \[3, 32, 32\]"),
])
def test_float_input_of_the_wrong_shape_names_expected_and_got(model_dir, shape, expected):
    with pytest.raises(InputError, match=expected):
        BACKENDS["onnx"](ModelHandle(model_dir), np.zeros(shape, np.float32))


def test_int_model_is_fixed_size_and_says_so(model_dir):
    with pytest.raises(InputError, match=r"'image_int' of shape \[N, 3, 32, 32\].*got \[1, 3, 64, 64\]"):
        BACKENDS["onnx-int"](ModelHandle(model_dir), random_images(1, 64))


def _one_node_model(op_type: str, dtype=TensorProto.DOUBLE) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1)), "w")
    graph = helper.make_graph([helper.make_node(op_type, ["x", "w"], ["y"], name="the_node")], "g",
                              [helper.make_tensor_value_info("x", dtype, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", dtype, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", to_onnx.OPSET)], ir_version=to_onnx.IR_VERSION)


def test_a_missing_kernel_names_the_op_and_node():
    with pytest.raises(onnx_runtime.OnnxRuntimeError, match=r"no CPU kernel for Conv .*'the_node' of test\.onnx"):
        onnx_runtime.open_session(_one_node_model("Conv"), "test.onnx")


def test_an_unknown_op_is_named():
    with pytest.raises(onnx_runtime.OnnxRuntimeError, match=r"does not know op Frobnicate at opset 17"):
        onnx_runtime.open_session(_one_node_model("Frobnicate"), "test.onnx")
