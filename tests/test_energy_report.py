"""The energy report: its JSON keys, prices, activity files (hash check) and renderings."""
import json

import pytest

from medqk.convert.pipeline import convert_graphs
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
    return convert_graphs(model, (3, SIZE, SIZE), images, {"model_config": model.config.to_dict()})[0]


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
    money = {"macs", "thop_macs", "acs", "events", "compute_pj", "memory_pj", "energy_pj"}
    assert set(report["totals"]) == money
    assert {b["name"] for b in report["baselines"]} == {"unet", "ann-twin"}
    for b in report["baselines"]:
        assert money | {"name", "params", "energy_vs_snn", "compute_vs_snn"} <= b.keys()
        assert b["memory_pj"] == 0 and b["energy_pj"] == b["compute_pj"]
    assert {"taps", "thop_macs", "macs", "acs", "events", "energy"} <= report["conventions"].keys()
    assert report["activity"]["images"] == 2 and len(report["per_image"]) == 2
    json.dumps(report)  # serialisable as it is


def test_layer_energy_and_totals_follow_the_model(report):
    spike = [l for l in report["layers"] if l["input_kind"] == "spike"]
    real = [l for l in report["layers"] if l["input_kind"] == "real"]
    assert spike and real and report["totals"]["acs"] > 0
    assert all(l["macs"] == 0 for l in spike) and all(l["acs"] == l["events"] == 0 for l in real)
    for l in report["layers"]:
        assert l["energy_pj"] == l["compute_pj"] == pytest.approx(4.6 * l["macs"] + 0.9 * l["acs"])
    for key in ("macs", "acs", "events", "energy_pj"):  # float45 prices no neuron: totals are the layers'
        assert report["totals"][key] == pytest.approx(sum(l[key] for l in report["layers"]))
    assert report["totals"]["thop_macs"] == report["model"]["thop_macs"] > report["totals"]["macs"]
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
    assert r["totals"]["energy_pj"] == pytest.approx(sum(l["energy_pj"] for l in r["layers"]) + 81 * active + 52 * inactive)


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
    # the file carries no input-spike counts: they come back from the input populations
    assert back.per_image_synapses() == activity.per_image_synapses()


def test_activity_file_from_another_model_is_refused(tmp_path, converted, activity):
    other = convert_graphs(small_model(seed=1), (3, SIZE, SIZE), random_images(1, SIZE), {})[0]
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


def test_lemaire_prices_memory_for_every_network(converted, activity):
    r = analyze(converted, activity, get_model("lemaire"), [], "small")
    t = r["totals"]
    assert t["memory_pj"] > 0 and t["energy_pj"] == pytest.approx(t["compute_pj"] + t["memory_pj"])
    neurons = r["other_energy_pj"]
    assert t["memory_pj"] == pytest.approx(sum(l["memory_pj"] for l in r["layers"]) + neurons["neuron_memory"])
    for l in r["layers"]:
        parts = l["memory"].keys()
        assert parts == ({"weights", "inputs", "state"} if l["input_kind"] == "spike" else {"weights", "inputs", "outputs"})
    for b in r["baselines"]:
        assert b["memory_pj"] > 0 and b["energy_pj"] == pytest.approx(b["compute_pj"] + b["memory_pj"])
        assert b["energy_vs_snn"] == pytest.approx(b["energy_pj"] / t["energy_pj"])
        assert b["compute_vs_snn"] == pytest.approx(b["compute_pj"] / t["compute_pj"])
    twin = next(b for b in r["baselines"] if b["name"] == "ann-twin")
    assert twin["memory_pj"] == pytest.approx(sum(l["ann_twin_memory_pj"] for l in r["layers"]))
    assert "memory" in format_terminal(r) and "x SNN, compute only" in format_terminal(r)


def test_neurobench_named_figures(report, converted, activity):
    nb = report["neurobench"]
    ops = nb["SynapticOperations"]
    t = report["totals"]
    assert ops["Effective_ACs"] == {"per_nonzero_spike": t["events"], "per_unit_of_spike_value": t["acs"]}
    assert ops["Effective_MACs"] == t["macs"] and ops["Dense"] == next(b["macs"] for b in report["baselines"]
                                                                        if b["name"] == "ann-twin")
    firing = report["firing"].values()
    silent = sum(f["neurons"] * (1 - f["fraction_nonzero"]) for f in firing) / sum(f["neurons"] for f in firing)
    assert nb["ActivationSparsity"] == pytest.approx(silent) and 0 <= nb["ConnectionSparsity"] < 1
    assert nb["Footprint"] == 4 * report["model"]["params"]
