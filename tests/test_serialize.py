import json
import subprocess
import sys

import numpy as np
import pytest

from medqk.convert import interpret_float, interpret_int
from medqk.convert.io import quantize_input
from medqk.convert.pipeline import float_graph_of
from medqk.convert.quantize import quantize
from medqk.convert.serialize import ConvertedModel, graph_to_json, load_model, save_model
from medqk.errors import InputError
from support import random_images, small_model


@pytest.fixture(scope="module")
def converted():
    fgraph = float_graph_of(small_model(), (32, 32))
    qgraph, _ = quantize(fgraph, random_images(1, 32))
    return ConvertedModel(fgraph, qgraph, {"preprocessing": {"size": [32, 32]}, "source_checkpoint": {"sha256": "ab" * 32}})


def test_save_and_load_round_trip_exactly(converted, tmp_path):
    save_model(converted, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    for key in ("float", "int"):
        a, b = getattr(converted, f"{key}_graph"), getattr(loaded, f"{key}_graph")
        arrays_a, arrays_b = {}, {}
        assert graph_to_json(a, key, arrays_a) == graph_to_json(b, key, arrays_b)
        assert arrays_a.keys() == arrays_b.keys()
        assert all(np.array_equal(arrays_a[k], arrays_b[k]) and arrays_a[k].dtype == arrays_b[k].dtype for k in arrays_a)
    assert loaded.meta == converted.meta
    x = random_images(1, 32, seed=5)
    assert np.array_equal(interpret_float.run(loaded.float_graph, x), interpret_float.run(converted.float_graph, x))
    xi = quantize_input(x, loaded.int_graph.input.tensor.frac_bits)
    assert np.array_equal(interpret_int.run(loaded.int_graph, xi), interpret_int.run(converted.int_graph, xi))


def test_graph_json_is_readable_and_versioned(converted, tmp_path):
    save_model(converted, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "graph-int.json").read_text())
    assert doc["format"] == "medqk-spike-graph" and doc["version"] == 1
    conv = next(n for n in doc["nodes"] if n["op"] == "conv2d")
    assert {"name", "inputs", "tensor", "attrs", "arrays"} <= conv.keys()
    assert "weight_mantissa" in conv["arrays"] and isinstance(conv["attrs"]["shift"], int)


def test_loading_needs_no_torch(converted, tmp_path):
    save_model(converted, tmp_path / "m")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from medqk.convert.serialize import load_model\n"
            f"m = load_model({str(tmp_path / 'm')!r}); print(len(m.int_graph))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(converted.int_graph)


def test_non_empty_directory_is_refused_without_force(converted, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty.*--force"):
        save_model(converted, target)
    with pytest.raises(InputError, match="not a medqk model directory"):  # --force replaces model directories only
        save_model(converted, target, force=True)
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    (target / "keep.txt").unlink()
    save_model(converted, target)
    save_model(converted, target, force=True)
    assert (target / "model.json").is_file()


def test_failed_write_leaves_nothing_behind(converted, tmp_path):
    def broken_writer(directory, model):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model(converted, tmp_path / "m", extra_writers=[broken_writer])
    assert list(tmp_path.iterdir()) == []


def test_missing_or_damaged_model_directory_is_explained(converted, tmp_path):
    with pytest.raises(InputError, match="not a converted medqk model: missing model.json"):
        load_model(tmp_path)
    save_model(converted, tmp_path / "m")
    (tmp_path / "m" / "graph-int.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged"):
        load_model(tmp_path / "m")
