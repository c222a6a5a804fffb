"""The sensitivity report (convert/sensitivity.py): torch under weight noise, and the float graph
with one of the integer graph's roundings put back at a time, on the embedded default model at 32x32."""
import json

import numpy as np
import pytest
import torch

from medqk.checkpoint import load_checkpoint
from medqk.cli import main
from medqk.convert import interpret_float, sensitivity
from medqk.convert.pipeline import float_graph_of, int_probabilities, torch_probabilities
from medqk.convert.quantize import quantize
from medqk.defaults import default_calibration_images, default_checkpoint_path

SIZE = 32


@pytest.fixture(scope="module")
def converted():
    model = load_checkpoint(default_checkpoint_path())
    images = default_calibration_images(4, (SIZE, SIZE))
    fgraph = float_graph_of(model, (SIZE, SIZE))
    qgraph, _ = quantize(fgraph, images)
    return model, images, fgraph, qgraph, torch_probabilities(model, images)


def test_nothing_put_back_is_the_float_graph(converted):
    _, images, fgraph, qgraph, _ = converted
    outputs = sensitivity.requantized_outputs(fgraph, qgraph, images, [])
    assert np.array_equal(outputs, interpret_float.run(fgraph, images))


def test_every_source_put_back_is_the_integer_graph(converted):
    """The sources are complete: together they compute the integer graph's values (up to rounding a
    sum's terms one by one, which the integer add does), so its agreement with torch is reproduced."""
    _, images, fgraph, qgraph, reference = converted
    together = sensitivity.requantized_outputs(fgraph, qgraph, images, list(sensitivity.SOURCES))
    integer = int_probabilities(qgraph, images)
    score = sensitivity.label_score(reference, "sigmoid")
    assert sensitivity.label_score(integer, "sigmoid")(together)["pixel_agreement"] >= 0.995
    assert abs(score(together)["dice"] - score(integer)["dice"]) <= 0.01


def test_each_source_changes_only_its_own_parameters(converted):
    _, _, fgraph, qgraph, _ = converted
    changed_by = {source: {n.name for n in sensitivity.requantized_graph(fgraph, qgraph, [source]).nodes()
                           if n.op.arrays().keys() != fgraph[n.name].op.arrays().keys()
                           or any(not np.array_equal(v, fgraph[n.name].op.arrays()[k]) for k, v in n.op.arrays().items())
                           or n.op.attrs() != fgraph[n.name].op.attrs()}
                  for source in sensitivity.SOURCES}
    op_types = {source: {fgraph[name].op.type for name in names} for source, names in changed_by.items()}
    assert op_types["weights"] == {"conv2d"}
    assert op_types["multipliers"] <= {"affine", "nisf", "add"} and "affine" in op_types["multipliers"]
    assert op_types["upsampling_weights"] == {"upsample"}
    # states and the input are rounded while the graph runs, not in its parameters
    assert not changed_by["state_fraction_bits"] and not changed_by["input_quantization"]


def test_put_back_weights_are_8_bit_mantissas_on_the_integer_grid(converted):
    _, _, fgraph, qgraph, _ = converted
    graph = sensitivity.requantized_graph(fgraph, qgraph, ["weights"])
    for node in graph.nodes():
        if node.op.type == "conv2d":
            q = qgraph[node.name]
            r_in = sensitivity.stored_ratio(qgraph[node.inputs[0]])
            mantissas = node.op.weight * r_in / 2.0**q.op.weight_exponent
            assert np.array_equal(mantissas, q.op.weight_mantissa) and np.abs(mantissas).max() <= 127


def test_state_rounding_puts_real_states_on_their_grid_and_leaves_spikes(converted):
    _, images, fgraph, qgraph, _ = converted
    _, values = interpret_float.run(fgraph, images[:1], record=True,
                                    round_result=sensitivity.state_rounding(qgraph))
    for node in qgraph.nodes():
        stored = values[node.name] / sensitivity.stored_ratio(node)
        if node.op.type not in ("input", "sigmoid"):
            assert np.array_equal(stored, np.round(stored)), node.name
    assert not np.array_equal(values[qgraph.input.name] * 2.0**qgraph.input.tensor.frac_bits,
                              np.round(values[qgraph.input.name] * 2.0**qgraph.input.tensor.frac_bits))


def test_weight_noise_perturbs_convolutions_by_its_size_and_restores_them(converted):
    model = converted[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with sensitivity.perturbed(model, 9, seed=0) as noisy:
        ratios = [(p / before[k] - 1)[before[k] != 0].abs() for k, p in noisy.state_dict().items() if p.dim() > 1]
        assert 0 < max(float(r.max()) for r in ratios) < 8 * 2.0**-9  # N(0,1) draws stay within 8 sigma
        assert all(torch.equal(p, before[k]) for k, p in noisy.state_dict().items() if p.dim() <= 1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_report_orders_the_noise_levels_and_bounds_every_figure(converted):
    model, images, fgraph, qgraph, reference = converted
    integer = sensitivity.label_score(reference, "sigmoid")(int_probabilities(qgraph, images))
    report = sensitivity.sensitivity_report(model, fgraph, qgraph, images, reference, integer)
    assert set(report["noise"]) == {"2^-9", "2^-16"} and set(report["attribution"]) == set(sensitivity.SOURCES)
    # smaller noise keeps the masks at least as well (a margin for one unlucky draw)
    assert report["noise"]["2^-16"]["dice"] >= report["noise"]["2^-9"]["dice"] - 0.02
    figures = [*report["noise"].values(), report["integer_vs_torch"], *report["attribution"].values()]
    assert all(0 <= f[key] <= 1 for f in figures for key in ("dice", "pixel_agreement"))
    table = "\n".join(sensitivity.format_report(report))
    assert "2^-9" in table and "integer graph" in table and all(s in table for s in sensitivity.SOURCES.values())


def test_unknown_source_is_refused(converted):
    _, _, fgraph, qgraph, _ = converted
    with pytest.raises(ValueError, match="biases"):
        sensitivity.requantized_graph(fgraph, qgraph, ["biases"])


def test_convert_writes_the_report_to_model_json_unless_told_not_to(tmp_path, capsys):
    common = ["--image-size", "16", "16", "--calibration-count", "2"]
    assert main(["convert", "-o", str(tmp_path / "with"), *common]) == 0
    assert "sensitivity" in capsys.readouterr().out
    report = json.loads((tmp_path / "with" / "model.json").read_text())["sensitivity"]
    assert set(report) >= {"noise", "integer_vs_torch", "attribution"} and report["images"] == 2
    assert main(["convert", "-o", str(tmp_path / "without"), "--no-sensitivity", *common]) == 0
    assert "sensitivity" not in capsys.readouterr().out
    assert "sensitivity" not in json.loads((tmp_path / "without" / "model.json").read_text())


def test_every_op_type_is_decided():
    """An op added to the IR must say which rounding its integer parameters carry (or none)."""
    from medqk.convert.op import OP_TYPES

    assert set(OP_TYPES.values()) <= set(sensitivity.PARAMETER_ROUNDING)
    assert {entry[0] for entry in sensitivity.PARAMETER_ROUNDING.values() if isinstance(entry, tuple)} - {None} \
        == set(sensitivity.SOURCES) - {"state_fraction_bits", "input_quantization"}
