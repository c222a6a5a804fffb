"""`medqk convert` and `medqk inspect` as a user runs them."""
import json

import pytest

from medqk.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "model"
    summary = out.parent / "summary.json"
    assert main(["-q", "convert", "-o", str(out), "--calibration-count", "2", "--json", str(summary)]) == 0
    return out


def test_convert_writes_the_model_directory(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.json", "graph-float.json", "graph-int.json", "tensors.npz", "model.onnx", "model-int.onnx"} <= names
    summary = json.loads((model_dir.parent / "summary.json").read_text())
    assert summary["nodes"] > 200 and summary["parameters"] == 468_329  # 470,137 trained, BN folded
    assert summary["tensor_kinds"]["spike"] > 0 and 0.0 <= summary["agreement_with_torch"]["dice"] <= 1.0
    assert "worst_nodes" in summary["quantization"]


def test_convert_prints_a_summary(tmp_path, capsys):
    assert main(["convert", "-o", str(tmp_path / "m"), "--calibration-count", "1", "--image-size", "32", "32"]) == 0
    out = capsys.readouterr().out
    for line in ("graph ", "ops ", "tensors ", "quantized ", "vs torch "):
        assert line in out
    assert "input 32x32" in out


def test_convert_replaces_only_a_model_directory_and_only_with_force(tmp_path, capsys):
    target = tmp_path / "m"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    assert main(["convert", "-o", str(target), "--calibration-count", "1", "--image-size", "32", "32"]) == 2
    assert "not empty" in capsys.readouterr().err and (target / "mine.txt").exists()
    assert main(["convert", "-o", str(target), "--calibration-count", "1", "--image-size", "32", "32", "--force"]) == 2
    assert "not a medqk model directory" in capsys.readouterr().err and (target / "mine.txt").exists()
    (target / "mine.txt").unlink()
    assert main(["-q", "convert", "-o", str(target), "--calibration-count", "1", "--image-size", "32", "32"]) == 0
    assert main(["-q", "convert", "-o", str(target), "--calibration-count", "1", "--image-size", "32", "32", "--force"]) == 0


def test_convert_error_on_unreadable_checkpoint_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    assert main(["convert", str(bad), "-o", str(tmp_path / "m")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_inspect_prints_the_node_table_and_draws_the_graph(model_dir, tmp_path, capsys):
    svg = tmp_path / "graph.svg"
    assert main(["inspect", str(model_dir), "--draw", str(svg), "--json", str(tmp_path / "nodes.json")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["#", "name", "op", "shape", "kind"] and "MACs" in header
    assert "encoder_stages.0.SDQK.q_lif" in out and "spike" in out
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    nodes = json.loads((tmp_path / "nodes.json").read_text())["nodes"]
    conv = next(n for n in nodes if n["op"] == "conv2d")
    assert conv["macs"] > 0 and conv["quantization"].startswith("w 8b")


def test_inspect_of_a_folder_that_is_no_model(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "medqk convert" in capsys.readouterr().err
