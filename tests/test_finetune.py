"""Integer-aware fine-tuning: the torch twin of the integer graph is the integer graph, bit for bit;
its parameters computed from a module's weights are the converter's; fine-tuning learns through
it, records the formats, and convert then builds exactly the graph that was trained."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medqk.checkpoint import load_checkpoint_payload
from medqk.convert import interpret_int, interpret_torch, passes
from medqk.convert.finetune import FinetuneOptions, IntegerAwareNetwork, ModuleParameters, finetune, network_for
from medqk.convert.io import quantize_input
from medqk.convert.pipeline import convert_checkpoint, int_probabilities
from medqk.convert.quantize import quantize, recorded_formats
from medqk.convert.trace import trace
from medqk.defaults import default_calibration_images, default_checkpoint_path
from medqk.errors import InputError
from medqk.metrics import segmentation_loss

SIZE = 32
SHAPE = (3, SIZE, SIZE)
MEDQK = [sys.executable, "-m", "medqk.cli"]


@pytest.fixture(scope="module")
def converted_default():
    model, metadata = load_checkpoint_payload(default_checkpoint_path())
    images = default_calibration_images(3, SIZE)
    qgraph, _ = quantize(passes.prepare(trace(model, SHAPE)), images)
    return model, metadata, qgraph, images


def _torch_stored(qgraph, parameters, images):
    x = torch.as_tensor(quantize_input(images, qgraph.input.tensor.frac_bits), dtype=torch.float64)
    with torch.no_grad():
        return interpret_torch.run(qgraph, parameters, x).numpy()


def test_the_torch_twin_in_float64_is_the_integer_interpreter_bit_for_bit(converted_default):
    _, _, qgraph, images = converted_default
    expected = interpret_int.run(qgraph, quantize_input(images, qgraph.input.tensor.frac_bits))
    assert np.array_equal(_torch_stored(qgraph, interpret_torch.graph_parameters(qgraph), images), expected)


def test_the_twin_is_bit_exact_on_the_trained_checkpoint(monuseg_trained):
    # its graph at 256x256 runs a 64x64 window of a validation image (every op is size-agnostic)
    qgraph, image = monuseg_trained.qgraph, monuseg_trained.images[:1, :, 96:160, 96:160]
    expected = interpret_int.run(qgraph, quantize_input(image, qgraph.input.tensor.frac_bits))
    assert np.array_equal(_torch_stored(qgraph, interpret_torch.graph_parameters(qgraph), image), expected)


def test_parameters_computed_from_the_module_are_the_converters(converted_default):
    model, _, qgraph, _ = converted_default
    twin = ModuleParameters(model.double(), trace(model, SHAPE), passes.prepare(trace(model, SHAPE)), qgraph)
    computed = twin()
    model.float()
    assert len(computed) == len(interpret_torch.graph_parameters(qgraph)) > 50
    for name, params in interpret_torch.graph_parameters(qgraph).items():
        for key, value in params.items():
            got = computed[name][key]
            assert (np.array_equal(got.detach().numpy(), value.numpy()) if torch.is_tensor(value) else got == value), (name, key)


def test_recorded_formats_rebuild_the_same_integer_graph(converted_default):
    model, _, qgraph, images = converted_default
    again, _ = quantize(passes.prepare(trace(model, SHAPE)), default_calibration_images(1, SIZE), recorded_formats(qgraph))
    x = quantize_input(images, qgraph.input.tensor.frac_bits)
    assert np.array_equal(interpret_int.run(again, x), interpret_int.run(qgraph, x))


def test_gradients_reach_the_weights_and_training_through_the_twin_lowers_the_loss(converted_default):
    model, _, qgraph, images = converted_default
    model = load_checkpoint_payload(default_checkpoint_path())[0]  # a copy this test may train
    network = IntegerAwareNetwork(model, qgraph)
    x = torch.as_tensor(images)
    target = (torch.as_tensor(images).mean(dim=1, keepdim=True) < 0.5).float()  # a fixed target it has not learnt
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = segmentation_loss(network(x), target)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.head1[0].weight.grad.abs().sum() > 0
    assert model.encoder_stages[0].patch.patch_cnn[0].norm.weight.grad.abs().sum() > 0  # BatchNorm folded, trained
    assert min(losses[-3:]) < 0.9 * losses[0]


def _options(tmp_path, **overrides):
    settings = dict(checkpoint=None, data="synthetic", out=tmp_path / "ft.pt", epochs=1, image_size=(SIZE, SIZE),
                    crop=None, batch_size=8, synthetic_count=16, augment=False)
    return FinetuneOptions(**{**settings, **overrides})


def test_finetune_records_formats_and_convert_builds_the_graph_it_trained(tmp_path):
    result = finetune(_options(tmp_path, epochs=2, lr=1e-3))
    assert [entry["epoch"] for entry in result.history] == [0, 1, 2]
    model, metadata = load_checkpoint_payload(result.path)
    formats = metadata["training"]["integer_formats"]
    assert metadata["training"]["finetune"]["best_epoch"] == result.best["epoch"]
    converted, _, agreement, _ = convert_checkpoint(result.path, (SIZE, SIZE))
    assert recorded_formats(converted.int_graph) == formats
    # torch for this checkpoint is its integer graph's forward pass, computed from its weights
    images = default_calibration_images(4, SIZE)
    reference = network_for(model, metadata, SHAPE)
    with torch.no_grad():
        torch_out = reference(torch.as_tensor(images)).numpy()
    assert np.array_equal(torch_out > 0.5, int_probabilities(converted.int_graph, images) > 0.5)
    assert agreement["integer_aware"] and agreement["dice"] == 1.0 and "dice" in agreement["float_module"]


def test_a_bare_state_dict_fine_tunes(tmp_path):
    model, _ = load_checkpoint_payload(default_checkpoint_path())
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    result = finetune(_options(tmp_path, checkpoint=bare))
    assert load_checkpoint_payload(result.path)[1]["training"]["integer_formats"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import medqk.metrics

    calls = []

    def diverging_loss(probabilities, target):  # the fourth step's loss is NaN, as a blown-up run's
        calls.append(1)
        loss = segmentation_loss(probabilities, target)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(medqk.metrics, "segmentation_loss", diverging_loss)
    result = finetune(_options(tmp_path, epochs=3))  # 2 steps per epoch: NaN in epoch 2
    assert result.diverged and "nan" in result.stopped and len(result.history) == 2
    model, metadata = load_checkpoint_payload(result.path)  # a whole, loadable checkpoint
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    assert metadata["training"]["finetune"]["best_epoch"] == result.best["epoch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.pt"]  # no temporary file left


def test_a_checkpoint_whose_input_channels_do_not_fit_the_data_is_refused(tmp_path):
    from medqk import MedQKFormer

    grey = tmp_path / "grey.pt"  # a bare state_dict of a one-channel network; the data is colour
    torch.save(MedQKFormer(widths=(8, 16, 32, 64), in_channels=1).state_dict(), grey)
    with pytest.raises(InputError, match="takes 1-channel images but synthetic gives 3 channels"):
        finetune(_options(tmp_path, checkpoint=grey))


def test_cli_refuses_to_overwrite_the_checkpoint_it_reads(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(default_checkpoint_path().read_bytes())
    done = subprocess.run([*MEDQK, "finetune", str(source), "-o", str(source)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "is the checkpoint being fine-tuned" in done.stderr and "Traceback" not in done.stderr
    assert source.read_bytes() == default_checkpoint_path().read_bytes()


def test_two_process_data_parallel_fine_tuning_on_cpu(tmp_path):
    out = tmp_path / "ddp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "medqk.cli", "-q", "finetune", "--data", "synthetic", "--image-size", str(SIZE), str(SIZE),
               "--no-crop", "--synthetic-count", "16", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
               "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    training = load_checkpoint_payload(out)[1]["training"]
    assert training["finetune"]["world_size"] == 2 and training["integer_formats"]


def test_eval_runs_a_fine_tuned_checkpoint_through_its_integer_graph(tmp_path, capsys):
    from medqk.cli import main

    assert main(["eval", "--count", "2", "--json", str(tmp_path / "eval.json")]) == 0  # the embedded default is fine-tuned
    assert "through its integer graph" in capsys.readouterr().out
    model, metadata = load_checkpoint_payload(default_checkpoint_path())
    plain = dict(metadata, training={k: v for k, v in metadata["training"].items() if k != "integer_formats"})
    assert network_for(model, plain, SHAPE) is model
