"""Baselines and thop: the paper's figures at 1x3x256x256, reproduced or explained op by op."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medqk import MedQKFormer
from medqk.convert.passes import prepare
from medqk.convert.trace import TraceError, trace
from medqk.energy import baselines as bl
from medqk.energy.counting import thop_counts, thop_reconciliation
from medqk.unet import UNet
from medqk.errors import InputError
from medqk.model import count_parameters
from support import SMALL_WIDTHS

FULL = (3, 256, 256)


@pytest.fixture(scope="module")
def medqk_traced():
    return trace(MedQKFormer(), FULL)


@pytest.fixture(scope="module")
def unet_baseline():
    return bl.unet(FULL)


def exact_conv_taps(model: torch.nn.Module, shape) -> int:
    """Independent exact-tap count of a torch model's convolutions: for each nn.Conv2d call, an
    all-ones kernel run over an all-ones map of its input's size (padded taps add nothing)."""
    taps = []

    def hook(m, inputs, _):
        plane = F.conv2d(torch.ones(1, 1, *inputs[0].shape[2:], dtype=torch.float64),
                         torch.ones(1, 1, *m.kernel_size, dtype=torch.float64), None, m.stride, m.padding)
        taps.append(int(plane.sum().item()) * m.out_channels * m.in_channels // m.groups)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return sum(taps)


def test_ann_twin_synaptic_macs_at_256(medqk_traced):
    twin = bl.ann_twin(prepare(copy.deepcopy(medqk_traced)), 7_429_345, None)
    assert twin.macs_by_op["conv2d"] == exact_conv_taps(MedQKFormer().eval(), FULL)
    # thop's rule counts the taps on padding too: 18,517,327,872 for the same convolutions
    assert sum(layer.thop_macs for layer in twin.layers if layer.op == "conv2d") == 18_517_327_872
    # the four bilinear x2 upsamplings (decoders, 256/128/64/32 channels at 16/32/64/128 px) are
    # fixed synapses fed by real values: 2 taps per output along H, then along W = 12 x C x H x W
    assert twin.macs_by_op["upsample"] == 12 * (256 * 16**2 + 128 * 32**2 + 64 * 64**2 + 32 * 128**2) == 11_796_480
    assert twin.macs == twin.macs_by_op["conv2d"] + 11_796_480
    assert all(layer.input_kind == "real" for layer in twin.layers)


def test_unet_macs_and_parameters_at_256(unet_baseline):
    assert unet_baseline.params == 14_751_873
    # 2x2 stride-2 transposed convolutions have no padding: inputs x C_out x 4, every tap exact
    assert unet_baseline.macs_by_op["conv_transpose2d"] == 1_073_741_824
    assert unet_baseline.macs_by_op["conv2d"] == exact_conv_taps(UNet().eval(), FULL)
    # thop's rule on the same layers (transposed convolutions at their true MACs): 29,578,231,808
    padded = sum(l.thop_macs for l in unet_baseline.layers if l.op == "conv2d") + 1_073_741_824
    assert padded == 29_578_231_808 and unet_baseline.macs < padded


def test_thop_figures_reproduced_and_differences_explained(medqk_traced, unet_baseline):
    assert sum(thop_counts(medqk_traced).values()) == 18_828_230_656
    assert unet_baseline.thop_macs == 32_894_877_696
    rows = {r["op"]: r for r in thop_reconciliation(medqk_traced)}
    # MedQKFormer: thop counts the convolutions' taps on padding; it adds 4 per BatchNorm element
    # (88 BN calls; here folded into the convolutions, or affine in other_ops) and 11 per output of
    # each nn.Upsample (here 3 per output: 2 taps per axis, separable)
    assert rows["conv2d"]["thop"] == 18_517_327_872
    assert rows["conv2d"]["analyzer_macs"] == exact_conv_taps(MedQKFormer().eval(), FULL)
    assert rows["batchnorm"]["analyzer_macs"] == 0
    assert rows["upsample"]["thop"] == 11 * 4 * 11_796_480 // 12 and rows["upsample"]["analyzer_macs"] == 11_796_480
    assert sum(r["thop"] for r in rows.values()) == 18_828_230_656
    unet_rows = {r["op"]: r for r in thop_reconciliation(trace(UNet(), FULL))}
    # U-Net: thop sizes the 2x2 stride-2 transposed convolutions by their output, 4x their true MACs
    assert unet_rows["conv_transpose2d"]["thop"] == 4 * unet_rows["conv_transpose2d"]["analyzer_macs"] == 4 * 1_073_741_824
    assert unet_rows["conv2d"]["thop"] > unet_rows["conv2d"]["analyzer_macs"]
    assert 32_894_877_696 - 29_578_231_808 == unet_rows["batchnorm"]["thop"] + 3 * 1_073_741_824


@pytest.mark.parametrize("build", [lambda: MedQKFormer(widths=SMALL_WIDTHS), lambda: UNet(width=8)])
def test_thop_rules_match_the_installed_thop(build):
    thop = pytest.importorskip("thop")
    ops, _ = thop.profile(build(), (torch.zeros(1, 3, 32, 32),), verbose=False)
    assert sum(thop_counts(trace(build(), (3, 32, 32))).values()) == int(ops)


def test_module_baseline_by_name():
    b = bl.resolve("medqk.unet:UNet", (3, 32, 32))
    assert b.params == count_parameters(UNet()) and b.macs > 0 and b.thop_macs > b.macs


class GeluNet(torch.nn.Module):
    """A network the IR cannot represent (GELU)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x))


def test_untraceable_module_baseline_names_the_op():
    with pytest.raises(TraceError, match="baseline test_energy_baselines:GeluNet: cannot represent module GELU at act"):
        bl.resolve("test_energy_baselines:GeluNet", (3, 32, 32))


@pytest.mark.parametrize("spec, message", [
    ("no_such_package_xyz:Net", "cannot import no_such_package_xyz"),
    ("medqk.unet:Nope", "has no Nope"),
    ("torch.nn:Conv2d", r"Conv2d\(\) failed"),
    ("medqk.energy.models:EnergyModel", "failed"),
    ("resnet", "use unet or ann-twin"),
    ("missing.onnx", "no such file"),
])
def test_bad_baseline_specs(spec, message):
    with pytest.raises(InputError, match=message):
        bl.resolve(spec, (3, 32, 32))


def _onnx_model(tmp_path, extra_node=None):
    """Conv 3->4 (3x3, pad 1) -> Relu -> ConvTranspose 4->2 (2x2, stride 2) -> Resize x2 (linear)
    -> Flatten -> Gemm 2*32*32 -> 5, on a [N, 3, 8, 8] input with a symbolic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def init(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("ConvTranspose", ["r1", "w2"], ["c2"], name="up", strides=[2, 2]),
        helper.make_node("Resize", ["c2", "", "scales"], ["c3"], name="resize", mode="linear"),
        helper.make_node("Flatten", ["c3"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc", transB=1),
    ]
    if extra_node:
        nodes.append(helper.make_node(extra_node, ["y"], ["z"], name="odd"))
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    out = "z" if extra_node else "y"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 2, 2, 2), init("w3", 5, 2 * 32 * 32), scales])
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_baseline_counts_by_hand(tmp_path):
    b = bl.resolve(str(_onnx_model(tmp_path)), (3, 8, 8))
    # Conv, 3x3 pad 1 on 8x8: in-bounds taps per axis summed over the outputs = 8 x 3 - 2 = 22
    assert b.macs_by_op == {
        "Conv": 4 * 3 * 22 * 22,             # C_out x C_in x exact taps (thop: 4 x 8 x 8 x 3 x 9)
        "ConvTranspose": 4 * 8 * 8 * 2 * 4,  # inputs x C_out x 2x2
        "Resize": 2 * (2 * 32 * 16) + 2 * (2 * 32 * 32),  # 2 taps along H, then along W
        "Gemm": 5 * 2 * 32 * 32,
    }
    assert b.params == 4 * 27 + 4 + 4 * 2 * 4 + 5 * 2048
    thop = {layer.op: layer.thop_macs for layer in b.layers}
    assert thop["Conv"] == 4 * 8 * 8 * 3 * 9 and thop["ConvTranspose"] == 2 * 16 * 16 * 4 * 4


def test_onnx_baseline_with_an_uncountable_op_names_it(tmp_path):
    with pytest.raises(InputError, match="cannot count ONNX op Hardmax \\(node odd\\)"):
        bl.resolve(str(_onnx_model(tmp_path, "Hardmax")), (3, 8, 8))
