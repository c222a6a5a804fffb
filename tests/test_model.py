"""MedQKFormer as published: size, MACs, output, module names and input checks."""
import pytest
import torch

from conftest import SHARED
from support import SMALL_WIDTHS
from medqk import MedQKFormer, ModelConfig
from medqk.errors import InputError
from medqk.model import count_parameters

PUBLISHED_PARAMETERS = 7_429_345
PUBLISHED_THOP_MACS = 18_828_230_656
REFERENCE_STATE_DICT = SHARED / "spec" / "reference-state-dict.txt"


@pytest.fixture(scope="module")
def published():
    return MedQKFormer().eval()


def test_parameter_count_is_the_papers(published):
    assert count_parameters(published) == PUBLISHED_PARAMETERS
    assert len(published.state_dict()) == 466


def test_thop_macs_are_the_papers():
    import thop  # a test dependency (pyproject: [test])
    # A model of its own: thop adds counting buffers to every module it profiles.
    macs, params = thop.profile(MedQKFormer().eval(), inputs=(torch.rand(1, 3, 256, 256),), verbose=False)
    assert int(macs) == PUBLISHED_THOP_MACS
    assert int(params) == PUBLISHED_PARAMETERS


def test_output_is_probabilities_of_the_input_size(published):
    with torch.no_grad():
        out = published(torch.rand(1, 3, 256, 256))
    assert out.shape == (1, 1, 256, 256)
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0  # not a constant map


@pytest.mark.skipif(not REFERENCE_STATE_DICT.is_file(), reason="../shared/spec is absent")
def test_module_names_and_shapes_follow_the_reference_layout(published):
    expected = {}
    for line in REFERENCE_STATE_DICT.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            expected[name] = [] if shape == "scalar" else [int(n) for n in shape.split("x")]
    assert {name: list(t.shape) for name, t in published.state_dict().items()} == expected


def test_configurable_widths_channels_and_levels():
    model = MedQKFormer(ModelConfig(widths=SMALL_WIDTHS, in_channels=1, out_channels=2, levels=2)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 2, 32, 48)
    assert {m.levels for m in model.modules() if hasattr(m, "levels")} == {2}


@pytest.mark.parametrize("height, width, hint", [(250, 256, "240 or 256"), (256, 100, "96 or 112"), (8, 16, "16")])
def test_sizes_that_are_not_multiples_of_16_name_the_sizes_that_work(height, width, hint):
    model = MedQKFormer(widths=SMALL_WIDTHS)
    with pytest.raises(InputError, match="multiples of 16") as caught:
        model(torch.rand(1, 3, height, width))
    assert hint in str(caught.value)


def test_wrong_channel_count_is_an_input_error():
    with pytest.raises(InputError, match="3 input channels; got 1"):
        MedQKFormer(widths=SMALL_WIDTHS)(torch.rand(1, 1, 64, 64))


def test_config_round_trips_through_a_dict():
    config = ModelConfig(widths=SMALL_WIDTHS, in_channels=1, levels=3)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_widths_that_cannot_split_into_heads_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        ModelConfig(widths=(8, 16, 32, 60))
