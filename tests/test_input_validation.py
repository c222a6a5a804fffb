"""Hostile and unusual inputs: deep images, impossible sizes, out-of-range network inputs, damaged
activity counts, masks that do not fit their images, and which share of a folder eval scores."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medqk.checkpoint import save_checkpoint
from medqk.cli import main
from medqk.convert.io import quantize_input
from medqk.convert.serialize import load_model
from medqk.data import PairDataset, Preprocessing, load_image, load_mask, load_split
from medqk.data.sizes import CONVERSION_COPIES, check_conversion_size, forward_bytes
from medqk.defaults import default_image
from medqk.energy import activity as act
from medqk.errors import DataError, InputError
from medqk.model import ModelConfig

from test_data import build_pairs, write_mask

SIZE = 32


def one_line_error(capsys, *fragments: str) -> str:
    """The command's stderr, checked to be one line that says every fragment."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The embedded default model converted at 32x32."""
    out = tmp_path_factory.mktemp("input-validation") / "model"
    assert main(["-q", "convert", "--image-size", str(SIZE), str(SIZE), "-o", str(out)]) == 0
    return out


def grey_picture(size: int = SIZE) -> np.ndarray:
    """uint8 [H, W]: the built-in synthetic picture (targets and look-alikes) in grey."""
    return np.rint(default_image((size, size)).image.mean(axis=0) * 255).astype(np.uint8)


def write_png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# -- 16-bit and floating-point images ---------------------------------------------------------


@pytest.mark.parametrize("prep", [Preprocessing((SIZE, SIZE)), Preprocessing((SIZE, SIZE), "GRAY")], ids=["BGR", "GRAY"])
def test_a_16bit_png_reads_as_its_8bit_twin(tmp_path, prep):
    grey = grey_picture()
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as image:
        assert image.mode == "I;16"  # a real 16-bit file
    deep = load_image(tmp_path / "16.png", prep)
    assert np.array_equal(deep, load_image(tmp_path / "8.png", prep))
    assert np.mean(deep >= 1.0) < 0.01  # not the clipped, almost white picture


def test_a_16bit_png_is_scaled_by_its_full_range_when_resized(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    x = load_image(tmp_path / "ramp.png", Preprocessing((32, 32), "GRAY"))
    assert x.min() >= 0 and x.max() <= 1
    assert abs(float(x.mean()) - float(ramp.mean()) / 65535) < 0.01


def test_a_16bit_colour_png_reads_at_8_bits(tmp_path):
    rgb = np.stack([grey_picture(), 255 - grey_picture(), np.full((SIZE, SIZE), 77, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "8.png")
    write_png16_rgb(tmp_path / "16.png", rgb.astype(np.uint16) * 257)
    prep = Preprocessing((SIZE, SIZE))
    assert np.array_equal(load_image(tmp_path / "16.png", prep), load_image(tmp_path / "8.png", prep))


def test_32bit_integer_and_float_images_follow_the_documented_rule(tmp_path):
    grey = grey_picture()
    prep = Preprocessing((SIZE, SIZE), "GRAY")
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.int32) * 257).save(tmp_path / "i32.tif")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tif")
    eight_bit = load_image(tmp_path / "8.png", prep)
    assert np.array_equal(load_image(tmp_path / "i32.tif", prep), eight_bit)
    assert np.allclose(load_image(tmp_path / "f.tif", prep), eight_bit, atol=1e-6)
    Image.fromarray(np.full((SIZE, SIZE), 70000, np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((SIZE, SIZE), 3.0, np.float32)).save(tmp_path / "bright.tif")
    with pytest.raises(InputError, match="0..65535"):
        load_image(tmp_path / "wide.tif", prep)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(tmp_path / "bright.tif", prep)


def test_a_16bit_mask_scales_by_its_full_range(tmp_path):
    pixels = np.zeros((SIZE, SIZE), np.uint16)
    pixels[4:20, 8:24] = 65535
    pixels[20:22, 8:24] = 16384  # a soft edge, a quarter of full scale
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", (SIZE, SIZE))[0]
    assert np.array_equal(mask[4:20, 8:24], np.ones((16, 16))) and np.allclose(mask[20:22, 8:24], 16384 / 65535)
    assert mask.sum() == pytest.approx(16 * 16 + 2 * 16 * 16384 / 65535)


def test_a_16bit_mask_of_0_and_1_is_taken_as_it_is(tmp_path):
    pixels = np.zeros((SIZE, SIZE), np.uint16)
    pixels[4:20, 8:24] = 1
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    assert np.array_equal(load_mask(tmp_path / "mask.png", (SIZE, SIZE))[0], pixels.astype(np.float32))


def test_run_on_a_16bit_png_gives_the_8bit_pictures_mask(model_dir, tmp_path):
    grey = grey_picture()
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    for name in ("8", "16"):
        assert main(["-q", "run", str(model_dir), "--image", str(tmp_path / f"{name}.png"),
                     "--out", str(tmp_path / f"mask-{name}.png")]) == 0
    masks = [np.asarray(Image.open(tmp_path / f"mask-{name}.png")) for name in ("8", "16")]
    assert np.array_equal(masks[0], masks[1])


# -- image sizes and memory -----------------------------------------------------------------


@pytest.mark.parametrize("size", [("-16", "-16"), ("0", "32"), ("40", "32")])
def test_convert_refuses_sizes_the_network_cannot_take(tmp_path, capsys, size):
    assert main(["-q", "convert", "--image-size", *size, "-o", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "multiples of 16")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("size", ["-16", "0", "40"])
def test_train_refuses_sizes_the_network_cannot_take(tmp_path, capsys, size):
    assert main(["-q", "train", "--image-size", size, "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "multiples of 16")


def test_sizes_that_cannot_fit_in_memory_are_refused_with_the_estimate(tmp_path, capsys):
    assert main(["-q", "convert", "--image-size", "65536", "65536", "-o", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "converting at 65536x65536 needs about", "GiB is available")
    assert main(["-q", "train", "--image-size", "65536", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "training at 65536x65536 with 8 image(s) at once needs about")


def test_the_memory_estimate_lets_normal_sizes_run():
    published = ModelConfig()
    # the published network's forward creates about 1 GiB of tensors at 256x256 (the meta-device
    # count at that very size was 1.01 GiB): a conversion at 512x512 is estimated at about 12 GiB
    assert 0.95 * 2**30 < forward_bytes(published, (256, 256)) < 1.1 * 2**30
    assert CONVERSION_COPIES * forward_bytes(published, (512, 512)) < 13 * 2**30
    assert check_conversion_size(ModelConfig(widths=(8, 16, 32, 64)), (256, 256)) == (256, 256)


# -- network inputs outside the integer input format ----------------------------------------


def test_quantize_input_refuses_values_beyond_its_format_instead_of_wrapping():
    assert quantize_input(np.array([0.0, 0.5, 1.0]), 16).tolist() == [0, 32768, 65536]
    for value in (1e30, -1e30, 200.0, np.nan):
        with pytest.raises(InputError, match=r"-128 to 128"):
            quantize_input(np.array([0.5, value]), 16)


@pytest.mark.parametrize("backend", ["ir-int", "onnx-int"])
def test_run_refuses_a_huge_npy_on_integer_backends(model_dir, tmp_path, capsys, backend):
    np.save(tmp_path / "huge.npy", np.full((3, SIZE, SIZE), 1e30, np.float32))
    assert main(["-q", "run", str(model_dir), "--image", str(tmp_path / "huge.npy"), "--backend", backend,
                 "--out", str(tmp_path / "mask.png")]) == 2
    one_line_error(capsys, "outside the integer graph's input format", "fractional bits")
    assert not (tmp_path / "mask.png").exists()


# -- activity files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def activity_file(model_dir, tmp_path_factory) -> Path:
    """A true activity file of the converted model on one image."""
    graph = load_model(model_dir).int_graph
    activity = act.from_images(graph, iter([("demo", default_image((SIZE, SIZE)).image)]), 1)
    return act.write_file(tmp_path_factory.mktemp("activity") / "activity.json", activity, graph)


def _firing(doc: dict) -> str:
    return next(name for name, p in doc["populations"].items() if 0 < p["nonzero"] < p["spike_sum"])


def _active_synapse(doc: dict) -> str:
    return next(name for name, s in doc["synapses"].items() if 0 < s["events"] < s["acs"])


def _set(part: str, key: str, value):
    def change(doc):
        name = _firing(doc) if part == "populations" else _active_synapse(doc)
        entry = doc[part][name]
        entry[key] = value(entry) if callable(value) else value

    return change


BAD_COUNTS = {
    "images as text": (lambda doc: doc.update(images="1"), "not a count"),
    "images as a boolean": (lambda doc: doc.update(images=True), "not a count"),
    "a fractional spike sum": (_set("populations", "spike_sum", 10.5), "not a count"),
    "a negative nonzero count": (_set("populations", "nonzero", -1), "not a count"),
    "a boolean event count": (_set("synapses", "events", True), "not a count"),
    "negative ACs": (_set("synapses", "acs", -1000), "not a count"),
    "more nonzero spikes than neurons": (_set("populations", "nonzero", lambda p: p["neurons"] + 1), "more than"),
    "a spike sum above D x nonzero": (_set("populations", "spike_sum", lambda p: 4 * p["nonzero"] + 1), "more than"),
    "a spike sum below nonzero": (_set("populations", "spike_sum", lambda p: p["nonzero"] - 1), "below"),
    "more events than connections": (_set("synapses", "events", 10 ** 15), "more than"),
    "ACs above D x events": (_set("synapses", "acs", lambda s: 4 * s["events"] + 1), "more than"),
    "fewer ACs than events": (_set("synapses", "acs", lambda s: s["events"] - 1), "fewer than"),
    "a negative per-step count": (lambda doc: doc.update(per_step=[{"step": 1, "spikes": -1, "synaptic_events": 0,
                                                                   "neuron_updates": 0}]), "not a count"),
    "per-step counts that are not a list": (lambda doc: doc.update(per_step=7), "not a list"),
}


def test_a_true_activity_file_is_read(model_dir, activity_file):
    graph = load_model(model_dir).int_graph
    activity = act.from_file(activity_file, graph)
    doc = json.loads(activity_file.read_text())
    name = _firing(doc)
    assert activity.populations[name].spike_sum == doc["populations"][name]["spike_sum"]


@pytest.mark.parametrize("case", BAD_COUNTS, ids=list(BAD_COUNTS))
def test_an_impossible_activity_count_is_refused(model_dir, activity_file, tmp_path, capsys, case):
    change, message = BAD_COUNTS[case]
    doc = json.loads(activity_file.read_text())
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main(["-q", "energy", "report", str(model_dir), "--activity", str(bad)]) == 2
    one_line_error(capsys, str(bad), message, "--activity F")


# -- datasets: masks that do not fit, and which share eval scores ---------------------------


def test_a_mask_of_another_size_than_its_image_is_an_error(model_dir, tmp_path, capsys):
    build_pairs(tmp_path / "data/img", tmp_path / "data/labelcol", ["a", "b", "c"])
    write_mask(tmp_path / "data/labelcol/b.png", size=(32, 32))  # its image is 40x48
    pairs = load_split(tmp_path / "data", val_fraction=0.4)
    dataset = PairDataset(sorted(pairs.train + pairs.val, key=lambda p: p.name), Preprocessing((32, 32)))
    with pytest.raises(DataError, match="the mask is 32x32 but its image .* is 40x48"):
        dataset[1]
    assert main(["-q", "eval", "--data", str(tmp_path / "data")]) == 2
    one_line_error(capsys, "b.png", "32x32", "40x48")
    assert main(["-q", "compare", str(model_dir), "--data", str(tmp_path / "data"), "--backends", "ir"]) == 2
    one_line_error(capsys, "b.png", "32x32", "40x48")


def test_eval_on_a_folder_without_a_split_scores_every_image(tmp_path, small_model, capsys):
    checkpoint = save_checkpoint(tmp_path / "small.pt", small_model, Preprocessing((32, 32)))
    build_pairs(tmp_path / "test/img", tmp_path / "test/labelcol", [f"case{i:02d}" for i in range(7)])
    assert main(["eval", str(checkpoint), "--data", str(tmp_path / "test"), "--json", str(tmp_path / "all.json")]) == 0
    everything = json.loads((tmp_path / "all.json").read_text())
    assert everything["images"] == 7 and everything["share"] == f"all 7 images of {tmp_path / 'test'}"
    assert f"on all 7 images of {tmp_path / 'test'}" in capsys.readouterr().out
    assert main(["-q", "eval", str(checkpoint), "--data", str(tmp_path / "test"), "--split", "val",
                 "--json", str(tmp_path / "val.json")]) == 0
    held_out = json.loads((tmp_path / "val.json").read_text())
    assert held_out["images"] == 2 and "2 of its 7 images" in held_out["share"]
