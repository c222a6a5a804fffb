"""`medqk energy report` end to end: checkpoint and converted directory, outputs, bad inputs."""
import json

import numpy as np
import pytest
from PIL import Image

from medqk.checkpoint import save_checkpoint
from medqk.cli import main
from medqk.convert.pipeline import convert_graphs
from medqk.data.preprocess import Preprocessing
from medqk.energy import activity as act
from medqk.energy.commands import open_subject
from support import random_images, small_model

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt", small_model(), Preprocessing(size=(SIZE, SIZE)))


@pytest.fixture(scope="module")
def model_dir(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "small"
    assert main(["-q", "convert", str(checkpoint), "-o", str(out), "--calibration-count", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, x in enumerate(random_images(2, 48)):  # files of another size: preprocessing resizes them
        Image.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_report_over_a_folder_writes_json_markdown_and_plot(model_dir, image_dir, tmp_path, capsys):
    out = {k: tmp_path / f"report.{k}" for k in ("json", "md", "png")}
    assert main(["energy", "report", str(model_dir), "--images", str(image_dir), "--json", str(out["json"]),
                 "--markdown", str(out["md"]), "--plot", str(out["png"])]) == 0
    text = capsys.readouterr().out
    assert "total (synaptic)" in text and "ann-twin" in text and "unet" in text
    report = json.loads(out["json"].read_text())
    assert report["activity"]["images"] == 2 and [p["image"] for p in report["per_image"]] == ["img0.png", "img1.png"]
    assert out["md"].read_text().startswith("# Energy report") and out["png"].stat().st_size > 0


def test_report_from_a_checkpoint_with_an_npy_input_and_the_integer_model(checkpoint, tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, random_images(1, SIZE)[0])
    out = tmp_path / "r.json"
    assert main(["-q", "energy", "report", str(checkpoint), "--image", str(npy), "--energy-model", "int45",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["energy_model"]["name"] == "int45" and report["model"]["input_shape"] == [3, SIZE, SIZE]


def test_report_from_a_lava_activity_file(model_dir, tmp_path):
    converted = open_subject(model_dir, None)
    activity = act.from_images(converted.int_graph, [("x", random_images(1, SIZE)[0])], 1)
    path = act.write_file(tmp_path / "activity.json", activity, converted.int_graph)
    out = tmp_path / "r.json"
    assert main(["-q", "energy", "report", str(model_dir), "--activity", str(path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["activity"]["source"].startswith("Lava activity file")
    assert report["totals"]["acs"] == sum(a for a, _ in activity.synapses.values())


@pytest.mark.parametrize("extra, message", [
    (["--images", "EMPTY"], "holds no images"),
    (["--image", "NOFILE.png"], "NOFILE.png"),
    (["--baseline", "test_energy_baselines:GeluNet"], "cannot represent module GELU"),
    (["--image-size", "64", "64"], "built for 32x32"),
    (["--plot", "energy.txt"], "use a file name ending in .png"),
])
def test_bad_inputs_end_with_a_clear_message(model_dir, tmp_path, capsys, extra, message):
    (tmp_path / "EMPTY").mkdir()
    extra = [str(tmp_path / e) if e in ("EMPTY", "NOFILE.png") else e for e in extra]
    assert main(["-q", "energy", "report", str(model_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medqk energy: error:") and message in err


def test_activity_file_of_another_model_is_refused(model_dir, tmp_path, capsys):
    other = convert_graphs(small_model(seed=1), (3, SIZE, SIZE), random_images(1, SIZE), {})[0]
    activity = act.from_images(other.int_graph, [("x", random_images(1, SIZE)[0])], 1)
    path = act.write_file(tmp_path / "activity.json", activity, other.int_graph)
    assert main(["-q", "energy", "report", str(model_dir), "--activity", str(path)]) == 2
    assert "was recorded on another model" in capsys.readouterr().err


def test_energy_report_writes_a_self_contained_html_page(tmp_path):
    from medqk.cli import main

    page = tmp_path / "energy.html"
    assert main(["-q", "energy", "report", "--html", str(page)]) == 0
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "Energy: SNN vs ANN twin vs U-Net" in html
    assert html.count('src="data:image/png;base64,') == 4  # input, its mask, energy chart, firing chart
    assert "http" not in html.split("<body>")[1]  # nothing to fetch
