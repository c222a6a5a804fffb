"""The energy report: its JSON keys, prices, activity files (hash check) and renderings."""
import json

import pytest

from medqk.convert.pipeline import convert_module
from medqk.energy import activity as act
from medqk.energy.commands import analyze
from medqk.energy.models import MODELS, get_model
from medqk.energy.report import format_markdown, format_terminal, plot
from medqk.errors import InputError
from support import random_images, small_model

SIZE = 32


@pytest.fixture(scope="module")
def converted():
    model = small_model()
    images = random_images(2, SIZE)
    return convert_module(model, (SIZE, SIZE), images, {"model_config": model.config.to_dict()})[0]


@pytest.fixture(scope="module")
def activity(converted):
    return act.from_images(converted.int_graph, [(f"img{i}", x) for i, x in enumerate(random_images(2, SIZE, seed=1))], 2)


@pytest.fixture(scope="module")
def report(converted, activity):
    return analyze(converted, activity, get_model("float45"), [], "small")


def test_report_has_the_keys_the_issue_names(report):
    assert {"energy_model", "layers", "totals", "other_ops", "firing", "baselines"} <= report.keys()
    assert report["energy_model"]["name"] == "float45" and report["energy_model"]["e_mac_pj"] == 4.6
    for layer in report["layers"]:
        assert {"name", "op", "input_kind", "macs", "acs", "events", "energy_pj"} <= layer.keys()
        assert layer["input_kind"] in ("spike", "real")
    assert set(report["totals"]) == {"macs", "acs", "events", "energy_pj"}
    assert {b["name"] for b in report["baselines"]} == {"unet", "ann-twin"}
    for b in report["baselines"]:
        assert {"name", "params", "macs", "energy_pj"} <= b.keys()
    assert report["activity"]["images"] == 2 and len(report["per_image"]) == 2
    json.dumps(report)  # serialisable as it is


def test_layer_energy_and_totals_follow_the_model(report):
    spike = [l for l in report["layers"] if l["input_kind"] == "spike"]
    real = [l for l in report["layers"] if l["input_kind"] == "real"]
    assert spike and real and report["totals"]["acs"] > 0
    assert all(l["macs"] == 0 for l in spike) and all(l["acs"] == l["events"] == 0 for l in real)
    for l in report["layers"]:
        assert l["energy_pj"] == pytest.approx(4.6 * l["macs"] + 0.9 * l["acs"])
    for key in ("macs", "acs", "events", "energy_pj"):
        assert report["totals"][key] == pytest.approx(sum(l[key] for l in report["layers"]))
    twin = next(b for b in report["baselines"] if b["name"] == "ann-twin")
    assert twin["energy_pj"] == pytest.approx(4.6 * twin["macs"])
    # the twin is the same layers, all MACs: equal on real-fed layers, summing to the twin's total
    assert all(l["ann_twin_energy_pj"] == l["energy_pj"] for l in real)
    assert sum(l["ann_twin_energy_pj"] for l in report["layers"]) == pytest.approx(twin["energy_pj"])


def test_firing_is_per_population(report, converted):
    nisf = [n.name for n in converted.int_graph.nodes() if n.op.type == "nisf"]
    assert sorted(report["firing"]) == sorted(nisf)
    for f in report["firing"].values():
        assert 0 <= f["fraction_nonzero"] <= 1 and 0 <= f["mean_spike"] <= 4


def test_loihi_prices_events_and_neuron_updates(converted, activity):
    r = analyze(converted, activity, get_model("loihi"), [], "small")
    for l in r["layers"]:
        assert l["energy_pj"] == pytest.approx(23.6 * (l["macs"] + l["events"]))
    active, inactive = activity.active_inactive()
    assert r["other_energy_pj"]["neuron_updates"] == pytest.approx(81 * active + 52 * inactive)


def test_every_energy_model_names_its_source():
    for model in MODELS.values():
        assert model.source and model.spike_count in ("acs", "events")
    with pytest.raises(InputError, match="unknown energy model 'gpu'"):
        get_model("gpu")


def test_activity_file_round_trip(tmp_path, converted, activity):
    path = act.write_file(tmp_path / "activity.json", activity, converted.int_graph)
    back = act.from_file(path, converted.int_graph)
    assert back.images == activity.images and back.synapses == activity.synapses
    assert back.populations == activity.populations
    assert back.per_image_synapses() == activity.per_image_synapses()


def test_activity_file_from_another_model_is_refused(tmp_path, converted, activity):
    other = convert_module(small_model(seed=1), (SIZE, SIZE), random_images(1, SIZE), {})[0]
    path = act.write_file(tmp_path / "activity.json", activity, other.int_graph)
    with pytest.raises(InputError, match="was recorded on another model"):
        act.from_file(path, converted.int_graph)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["populations"].popitem(), "populations has no"),
    (lambda d: d.update(format="something"), "not a medqk activity file"),
    (lambda d: next(iter(d["synapses"].values())).pop("events"), "has no 'events'"),
    (lambda d: d.update(images=0), "covers 0 images"),
])
def test_damaged_activity_files(tmp_path, converted, activity, edit, message):
    path = act.write_file(tmp_path / "activity.json", activity, converted.int_graph)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message):
        act.from_file(path, converted.int_graph)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        act.from_file(path, converted.int_graph)


def test_no_images_is_an_error(converted):
    with pytest.raises(InputError, match="no images"):
        act.from_images(converted.int_graph, iter([]), 0)


def test_renderings(tmp_path, report):
    text = format_terminal(report)
    assert "total (synaptic)" in text and "ann-twin" in text and "unet" in text and "memory" in text
    md = format_markdown(report)
    assert md.startswith("# Energy report: small") and "| layer | input |" in md
    png = plot(report, tmp_path / "energy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
