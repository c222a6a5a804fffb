"""The Loihi 2 resource model on small cases computed by hand."""
import json

from medqk.deploy import loihi2
from medqk.deploy.loihi2 import LayerDemand, layer_resources, resource_report


def test_memory_bound_layer():
    # 288 one-byte weights + 6 bytes of state per neuron: 196,608 // 294 = 668 neurons per core
    layer, violations = layer_resources(LayerDemand("conv", neurons=10_000, synapses=2_880_000, weight_bits=8, fan_in=288))
    assert (layer.neurons_per_core, layer.cores) == (668, 15)  # 14 x 668 = 9,352 < 10,000
    assert layer.memory_bytes == 2_880_000 + 10_000 * 6
    assert violations == []


def test_neuron_bound_layer_and_chips():
    # 6 bytes per neuron would allow 32,768 per core; the neuron limit (8,192) binds
    small, _ = layer_resources(LayerDemand("head", neurons=100, synapses=1_000, weight_bits=8, fan_in=32))
    assert (small.neurons_per_core, small.cores, small.memory_bytes) == (8192, 1, 1_600)
    report = resource_report([LayerDemand("big", neurons=2_000_000, synapses=0, weight_bits=8, fan_in=1),
                              LayerDemand("head", neurons=100, synapses=1_000, weight_bits=8, fan_in=32)])
    assert report.cores == 245 + 1  # 244 x 8,192 = 1,998,848 < 2,000,000
    assert report.chips == 2  # 246 cores > 128, and 2,000,100 neurons > 1,048,576
    assert report.neurons == 2_000_100 and report.synapses == 1_000


def test_violations_name_layer_limit_and_confidence():
    _, violations = layer_resources(LayerDemand("wide", neurons=64, synapses=64 * 5000, weight_bits=16,
                                                fan_in=5000, payload_bits=32))
    found = {v.limit.what: (v.value, v.limit.confirmed) for v in violations}
    assert found[loihi2.WEIGHT_BITS.what] == (16, True)
    assert found[loihi2.PAYLOAD_BITS.what] == (32, True)
    assert found[loihi2.FAN_IN_PER_CORE.what] == (5000, False)  # Loihi 1's figure: an estimate
    assert all(str(v).startswith("wide: ") for v in violations)
    assert "estimated limit 4096" in str(next(v for v in violations if v.limit is loihi2.FAN_IN_PER_CORE))


def test_neuron_larger_than_a_core():
    # 200,000 one-byte weights + 6 bytes state = 200,006 bytes > 196,608: no neuron fits
    layer, violations = layer_resources(LayerDemand("huge", neurons=2, synapses=400_000, weight_bits=8, fan_in=200_000))
    memory = [v for v in violations if v.limit is loihi2.CORE_MEMORY_BYTES]
    assert len(memory) == 1 and memory[0].value == 200_006
    assert layer.neurons_per_core == 0 and layer.cores == 3  # ceil(400,012 / 196,608)


def test_report_is_json_with_sources():
    report = resource_report([LayerDemand("a", neurons=10, synapses=90, weight_bits=8, fan_in=9)])
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["totals"] == {"neurons": 10, "synapses": 90, "memory_bytes": 150, "cores": 1, "chips": 1}
    figures = {f["what"]: f for f in doc["figures"]}
    assert figures[loihi2.CORES_PER_CHIP.what]["confirmed"] is True
    assert figures[loihi2.NEURONS_PER_CORE.what]["confirmed"] is False
    assert all(f["source"] for f in doc["figures"])
