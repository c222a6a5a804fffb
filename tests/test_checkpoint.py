"""Checkpoints: the reference's bare state_dict, medqk's own format, and every way a file is wrong."""
import os
from pathlib import Path

import pytest
import torch

from support import SMALL_WIDTHS, randomize_batchnorm
from medqk import MedQKFormer, ModelConfig, load_checkpoint
from medqk.checkpoint import file_sha256, load_checkpoint_payload, save_checkpoint
from medqk.data import Preprocessing
from medqk.errors import CheckpointError


def outputs(model, size=32):
    x = torch.rand(2, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x)


def test_reference_bare_state_dict_loads_and_gives_identical_outputs(tmp_path, small_model):
    path = tmp_path / "reference.pth"
    torch.save(small_model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == ModelConfig(widths=SMALL_WIDTHS)
    assert torch.equal(outputs(loaded), outputs(small_model))


def test_published_configuration_is_inferred_from_a_bare_state_dict(tmp_path):
    model = randomize_batchnorm(MedQKFormer())
    path = tmp_path / "published.pth"
    torch.save(model.state_dict(), path)
    loaded, metadata = load_checkpoint_payload(path)
    assert loaded.config == ModelConfig()
    assert metadata["format"] == "bare-state-dict" and metadata["format_version"] is None
    assert metadata["preprocessing"] == Preprocessing().to_dict()
    assert torch.equal(outputs(loaded), outputs(model))


@pytest.mark.parametrize("wrap", [lambda sd: {"state_dict": sd}, lambda sd: {"model": sd},
                                  lambda sd: {f"module.{k}": v for k, v in sd.items()}])
def test_common_wrappings_of_a_state_dict_load(tmp_path, small_model, wrap):
    torch.save(wrap(small_model.state_dict()), tmp_path / "wrapped.pt")
    assert torch.equal(outputs(load_checkpoint(tmp_path / "wrapped.pt")), outputs(small_model))


def test_other_input_and_output_channels_are_inferred(tmp_path):
    model = MedQKFormer(ModelConfig(widths=(16, 16, 32, 32), in_channels=1, out_channels=2)).eval()
    torch.save(model.state_dict(), tmp_path / "gray.pt")
    assert load_checkpoint(tmp_path / "gray.pt").config == model.config


def test_medqk_checkpoint_round_trip_keeps_everything(tmp_path):
    model = randomize_batchnorm(MedQKFormer(ModelConfig(widths=SMALL_WIDTHS, levels=2)))
    prep = Preprocessing(size=(64, 96), channel_order="RGB")
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, prep, {"epoch": 3, "val": {"DSC": 0.5}})
    loaded, metadata = load_checkpoint_payload(path)
    assert loaded.config.levels == 2
    assert metadata["format"] == "medqk" and metadata["format_version"] == 1
    assert Preprocessing.from_dict(metadata["preprocessing"]) == prep
    assert metadata["training"] == {"epoch": 3, "val": {"DSC": 0.5}}
    assert metadata["sha256"] == file_sha256(path) and len(metadata["sha256"]) == 64
    assert torch.equal(outputs(loaded), outputs(model))


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    path = tmp_path / "bytes.bin"
    path.write_bytes(b"medqk" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"medqk" * 1000).hexdigest()


# -- bad files -------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a torch file"):
        load_checkpoint(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


def test_truncated_file(tmp_path, small_model):
    path = tmp_path / "cut.pt"
    save_checkpoint(path, small_model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys_are_named_and_counted(tmp_path, small_model):
    state = small_model.state_dict()
    missing = sorted(k for k in state if k.startswith("decoder_stages.3.sc."))
    for key in missing:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "keys.pt")
    message = str(caught.value)
    assert f"{len(missing)} missing key(s): {missing[0]}" in message
    assert f"and {len(missing) - 5} more" in message
    assert "1 unexpected key(s): extra.weight" in message


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, small_model):
    state = small_model.state_dict()
    key = "encoder_stages.1.SDQK.msc.conv1.0.conv.weight"
    state[key] = torch.zeros(16, 16, 1, 1)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=rf"{key} expected \[16, 16, 3, 3\], found \[16, 16, 1, 1\]"):
        load_checkpoint(tmp_path / "shape.pt")


def test_medqk_checkpoint_whose_weights_do_not_fit_its_config(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "c.pt", small_model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["widths"] = [16, 32, 64, 128]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="wrong shape.*expected \\[16, 3, 3, 3\\], found \\[8, 3, 3, 3\\]"):
        load_checkpoint(path)


def test_non_finite_weights_are_named(tmp_path, small_model):
    state = small_model.state_dict()
    key = "decoder_stages.0.nConv.0.norm.running_var"
    state[key][2] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"non-finite weights.*{key}"):
        load_checkpoint(tmp_path / "nan.pt")


def test_a_state_dict_of_another_network_says_what_it_is(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="not a MedQKFormer state_dict.*weight"):
        load_checkpoint(tmp_path / "linear.pt")


def test_something_that_is_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="neither a medqk checkpoint nor a state_dict.*list"):
        load_checkpoint(tmp_path / "list.pt")


def test_newer_format_version_is_refused(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "new.pt", small_model)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_runs_code_from_the_file(tmp_path, small_model):
    marker = tmp_path / "code-ran"
    state = dict(small_model.state_dict(), payload=_RunsCodeWhenUnpickled(marker))
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_what_to_do(tmp_path, small_model):
    torch.save(small_model, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"save model\.state_dict\(\) instead"):
        load_checkpoint(tmp_path / "whole.pt")


# -- atomic writing --------------------------------------------------------------------------

def test_a_crash_while_writing_keeps_the_old_file_and_leaves_no_debris(tmp_path, small_model, monkeypatch):
    path = save_checkpoint(tmp_path / "best.pt", small_model, training={"epoch": 1})
    before = path.read_bytes()
    real_save = torch.save

    def crash_half_way(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.seek(file.tell() // 2)
        file.truncate()
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, small_model, training={"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    monkeypatch.undo()
    assert load_checkpoint_payload(path)[1]["training"] == {"epoch": 1}


def test_a_crash_before_the_first_save_leaves_no_file(tmp_path, small_model, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new.pt", small_model)
    assert os.listdir(tmp_path) == []
