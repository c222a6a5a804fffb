"""The energy report: one dict (the JSON), and its terminal, Markdown and chart renderings.

Every number in the report is per image (means over the images analysed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medqk.energy.activity import Activity
from medqk.energy.baselines import Baseline
from medqk.energy.chip import chip_view, per_step_view
from medqk.energy.counting import LayerCount
from medqk.energy.models import EnergyModel

CONVENTIONS = {
    "taps": "exact taps for every network (SNN, ANN twin, U-Net, other baselines): a layer's connections are the "
            "kernel taps that land inside its input, borders and strides included (a tap on zero padding is not "
            "an operation); bilinear upsampling: 2 taps per output along H, then along W (separable)",
    "thop_macs": "thop's rule, kept for comparison with papers: every kernel tap, padding included; transposed "
                 "convolutions sized by their output; a layer's figure whatever its input; a network's figure is "
                 "thop's whole count (BatchNorm's 4 per element and nn.Upsample's 11 per output included)",
    "input_kind": "synaptic layers are classified by the kind of their input tensor in the IR: an integer NISF spike "
                  "map (0..D) is 'spike', anything else (image, BN output, a sum of branches, an upsampled map) is "
                  "'real'",
    "macs": "real input: MACs = its exact taps (bias and BN excluded)",
    "acs": "spike input: ACs = sum of s x exact fan-out (unit-spike convention: a spike s is s accumulates per "
           "connection)",
    "events": "spike input: events = number of nonzero s x exact fan-out (graded-spike convention: one synaptic op "
              "per nonzero spike per connection)",
    "other_ops": "other operations (neuron updates, additions, spike products, affine, complements, output sigmoid) "
                 "are counted in their own categories and never added to MACs or ACs",
    "energy": "energy_pj = compute_pj + memory_pj; compute-only models (float45, int45, loihi) leave memory out "
              "(memory_pj = 0), which favours sparse networks (Lemaire et al. 2022; Dampfhoffer et al. 2022); "
              "lemaire prices addressing and memory traffic for every network alike; totals include the NISF "
              "neurons where the model prices them (loihi, lemaire)",
}


def _layer_row(layer: LayerCount, model: EnergyModel, twin: LayerCount) -> dict:
    row = {"name": layer.name, "op": layer.op, "input_kind": layer.input_kind, "macs": layer.macs,
           "thop_macs": layer.thop_macs, "acs": layer.acs, "events": layer.events, "spikes_in": layer.spikes_in,
           **model.layer_energy(layer)}
    twin_energy = model.layer_energy(twin)
    return {**row, **{f"ann_twin_{k}": twin_energy[k] for k in ("compute_pj", "memory_pj", "energy_pj")}}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _baseline_row(b: Baseline, model: EnergyModel, snn: dict) -> dict:
    energies = [model.layer_energy(layer) for layer in b.layers]
    pj = {k: sum(e[k] for e in energies) for k in ("compute_pj", "memory_pj", "energy_pj")}
    return {"name": b.name, "params": b.params, "macs": b.macs, "thop_macs": b.thop_macs, "acs": 0, "events": 0,
            "macs_by_op": b.macs_by_op, **pj, "energy_vs_snn": _ratio(pj["energy_pj"], snn["energy_pj"]),
            "compute_vs_snn": _ratio(pj["compute_pj"], snn["compute_pj"])}


def neuron_populations(activity: Activity) -> list[tuple[float, float]]:
    """(neurons, nonzero spikes per image) of each NISF population."""
    return [(f["neurons"], f["neurons"] * f["fraction_nonzero"]) for f in activity.firing().values()]


def neurobench_figures(graph, activity: Activity, totals: dict, twin: Baseline, params: int) -> dict:
    """medqk's figures under NeuroBench's metric names, for a NeuroBench table (per image)."""
    weights = [n.op.weight_mantissa if getattr(n.op, "weight_mantissa", None) is not None else n.op.weight
               for n in graph.nodes() if n.op.synaptic and getattr(n.op, "weight", None) is not None]
    firing = activity.firing().values()
    neurons = sum(f["neurons"] for f in firing)
    return {
        "Footprint": 4 * params,
        "ConnectionSparsity": sum(int(np.sum(w == 0)) for w in weights) / max(1, sum(w.size for w in weights)),
        "ActivationSparsity": 1 - sum(f["neurons"] * f["fraction_nonzero"] for f in firing) / max(1, neurons),
        "SynapticOperations": {
            "Effective_MACs": totals["macs"],
            "Effective_ACs": {"per_nonzero_spike": totals["events"], "per_unit_of_spike_value": totals["acs"]},
            "Dense": twin.macs,
        },
        "notes": "Footprint: the trained parameters as float32 (NeuroBench on the torch model also counts "
                 "BatchNorm's buffers; `medqk energy peers` shows both). ConnectionSparsity: zero weights (8-bit mantissas once "
                 "quantized). ActivationSparsity: NISF outputs that are 0. Effective_MACs: the real-fed layers' exact "
                 "taps, zero inputs included (NeuroBench skips them, and counts graded spikes as MACs). "
                 "Effective_ACs per_nonzero_spike is NeuroBench's convention (medqk's events), per_unit_of_spike_value "
                 "medqk's ACs. Dense: every connection, exact taps (the ANN twin's MACs).",
    }


def build(model: dict, layers: list[LayerCount], other_ops: dict[str, int], activity: Activity,
          energy_model: EnergyModel, baselines: list[Baseline], graph=None) -> dict:
    """The report. ``model``: name, params, thop_macs, input_shape, sha256 of the analysed network;
    ``baselines`` must include the ANN twin (its layers pair with ``layers``); ``graph`` (the
    analysed graph) adds the NeuroBench-named figures."""
    twin = next(b for b in baselines if b.name == "ann-twin")
    rows = [_layer_row(layer, energy_model, t) for layer, t in zip(layers, twin.layers)]
    neurons = energy_model.neuron_energy(neuron_populations(activity))
    totals = {"macs": sum(r["macs"] for r in rows), "thop_macs": model["thop_macs"],
              **{k: sum(r[k] for r in rows) for k in ("acs", "events")}}
    for k in ("compute_pj", "memory_pj"):
        totals[k] = sum(r[k] for r in rows) + (neurons[k] if neurons else 0.0)
    totals["energy_pj"] = totals["compute_pj"] + totals["memory_pj"]
    synaptic_pj = sum(r["energy_pj"] for r in rows)
    return {
        "model": model,
        "conventions": CONVENTIONS,
        "energy_model": energy_model.to_dict(),
        "activity": {"source": activity.source, "images": activity.images},
        "layers": rows,
        "totals": totals,
        "other_ops": other_ops,
        "other_energy_pj": {} if neurons is None else {"neuron_updates": neurons["compute_pj"],
                                                       "neuron_memory": neurons["memory_pj"]},
        "synaptic_energy_pj": synaptic_pj,
        "firing": activity.firing(),
        "baselines": [_baseline_row(b, energy_model, totals) for b in baselines],
        "per_image": [{**p, "ops_pj": energy_model.ops_pj(totals["macs"], p["acs"], p["events"])}
                      for p in activity.per_image],
        "chip": chip_view(activity, layers),
        **({"chip_per_step": per_step_view(activity.per_step, activity.images)} if activity.per_step else {}),
        **({} if graph is None else {"neurobench": neurobench_figures(graph, activity, totals, twin, model["params"])}),
    }


# -- rendering ---------------------------------------------------------------------------------------

def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (engineering prefixes, three significant digits)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def energy(pj: float) -> str:
    """pJ in the unit that reads best (pJ, nJ, uJ, mJ, J)."""
    for factor, unit in ((1e12, "J"), (1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if pj >= factor:
            return f"{pj / factor:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _layer_table(report: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    synaptic = report["synaptic_energy_pj"] or 1.0
    header = ("layer", "input", "MACs", "ACs", "events", "compute", "memory", "energy", "share")
    count = lambda v: si(v) if v else "-"
    body = [(r["name"], r["input_kind"], count(r["macs"]), count(r["acs"]), count(r["events"]), energy(r["compute_pj"]),
             energy(r["memory_pj"]) if r["memory_pj"] else "-", energy(r["energy_pj"]),
             f"{100 * r['energy_pj'] / synaptic:.1f}%") for r in report["layers"]]
    t = report["totals"]
    synaptic_compute = sum(r["compute_pj"] for r in report["layers"])
    synaptic_memory = sum(r["memory_pj"] for r in report["layers"])
    body.append(("total (synaptic)", "", si(t["macs"]), si(t["acs"]), si(t["events"]), energy(synaptic_compute),
                 energy(synaptic_memory) if synaptic_memory else "-", energy(report["synaptic_energy_pj"]), "100%"))
    return header, body


def baseline_table(report: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("network", "params", "MACs (exact taps)", "thop count", "ACs", "compute", "memory", "energy",
              "x SNN", "x SNN, compute only")
    ratio = lambda v: f"{v:.2f}" if v else "-"
    m, t = report["model"], report["totals"]
    rows = [(f"{m['name']} (SNN)", m["params"], t, 1.0, 1.0)]
    rows += [(b["name"], b["params"], b, b["energy_vs_snn"], b["compute_vs_snn"]) for b in report["baselines"]]
    body = [(name, si(params), si(e["macs"]), si(e["thop_macs"]) if e["thop_macs"] else "-",
             si(e["acs"]) if e["acs"] else "-", energy(e["compute_pj"]), energy(e["memory_pj"]) if e["memory_pj"] else "-",
             energy(e["energy_pj"]), ratio(with_memory), ratio(compute_only))
            for name, params, e, with_memory, compute_only in rows]
    return header, body


def _text_table(header, body) -> str:
    numeric = [i > 0 and all(_is_numeric(row[i]) for row in body) for i in range(len(header))]
    widths = [max(len(str(row[i])) for row in (header, *body)) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)])


def _is_numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell == "-"


def _firing_summary(report: dict) -> str:
    firing = report["firing"]
    neurons = sum(f["neurons"] for f in firing.values()) or 1
    mean = sum(f["mean_spike"] * f["neurons"] for f in firing.values()) / neurons
    nonzero = sum(f["fraction_nonzero"] * f["neurons"] for f in firing.values()) / neurons
    return (f"{len(firing)} NISF populations, {si(neurons)} neurons: mean spike value {mean:.3f}, "
            f"{100 * nonzero:.1f}% of neurons fire (s > 0)")


def _summary_lines(report: dict) -> list[str]:
    em, m = report["energy_model"], report["model"]
    lines = [
        f"model      {m['name']}  input {'x'.join(map(str, m['input_shape']))}  activity: {report['activity']['source']}",
        f"energy     {em['title']}: MAC {em['e_mac_pj']} pJ, {'AC' if em['spike_count'] == 'acs' else 'event'} "
        f"{em['e_spike_op_pj']} pJ  ({em['notes']})",
        f"source     {em['source']}",
        f"firing     {_firing_summary(report)}",
        "other ops  " + ", ".join(f"{k.replace('_', ' ')} {si(v)}" for k, v in report["other_ops"].items()),
    ]
    for k, v in report["other_energy_pj"].items():
        lines.append(f"           {k.replace('_', ' ')}: {energy(v)} (in the SNN's total, not in the synaptic layers')")
    lines.append("memory     " + ("addressing and SRAM traffic priced for every network (Lemaire et al. 2022)"
                                  if em["memory"] else "not priced (favours sparse networks)"))
    return lines


def chip_table(report: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("on a Loihi-style chip", "idealised", "chip", "price", "idealised energy", "chip energy")
    chip = report["chip"]
    body = [(r["quantity"], si(r["idealised"]), si(r["chip"]), f"{r['price_pj']} pJ" if r["price_pj"] else "-",
             energy(r["idealised_pj"]), energy(r["chip_pj"])) for r in chip["rows"]]
    body.append(("total", "", "", "", energy(chip["idealised_pj"]), energy(chip["chip_pj"])))
    return header, body


def _chip_notes(report: dict) -> str:
    notes = f"prices: Loihi 1 figures ({report['chip']['source']}); estimates: " + "; ".join(report["chip"]["estimates"])
    view = report.get("chip_per_step")
    if view is None:
        return notes
    counts = ", ".join(f"{r['quantity']} {si(r['count'])}" for r in view["rows"])
    return f"{notes}\nthe Lava run, per step ({view['steps']} steps): {counts} -> {energy(view['energy_pj'])}"


def format_terminal(report: dict) -> str:
    return "\n\n".join([
        _text_table(*_layer_table(report)),
        "\n".join(_summary_lines(report)),
        _text_table(*baseline_table(report)),
        _text_table(*chip_table(report)) + "\n" + _chip_notes(report),
    ])


def _markdown_table(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    m = report["model"]
    return "\n\n".join([
        f"# Energy report: {m['name']}",
        "\n".join(f"- {line}" for line in _summary_lines(report)),
        "## Comparison", _markdown_table(*baseline_table(report)),
        "## On a Loihi-style chip", _markdown_table(*chip_table(report)), _chip_notes(report),
        "## Per layer (per image)", _markdown_table(*_layer_table(report)),
        "## Conventions", "\n".join(f"- **{name}**: {rule}" for name, rule in report["conventions"].items()),
    ]) + "\n"


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def draw_layers(ax, report: dict) -> None:
    """Per-layer energy of the ANN twin and the SNN side by side (log scale), each bar split into
    compute (solid) and memory (hatched, where the model prices it)."""
    rows = report["layers"]
    x = np.arange(len(rows))
    for offset, prefix, label, color in ((-0.2, "ann_twin_", "ANN twin (all MACs)", "#4e79a7"),
                                         (0.2, "", "SNN (spike-fed layers as ACs)", "#f28e2b")):
        compute = np.array([r[f"{prefix}compute_pj"] for r in rows]) / 1e6
        memory = np.array([r[f"{prefix}memory_pj"] for r in rows]) / 1e6
        ax.bar(x + offset, compute, 0.4, label=f"{label}: compute", color=color)
        if memory.any():
            ax.bar(x + offset, memory, 0.4, bottom=compute, label=f"{label}: memory", color=color, alpha=0.45,
                   hatch="///", edgecolor="white")
    ax.set_yscale("log")
    ax.set_ylabel("energy per image (uJ)")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=5)
    ax.legend(fontsize=7)


def plot(report: dict, path: Path) -> Path:
    """``draw_layers`` saved to ``path`` (PLOT_SUFFIXES)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(report["layers"])), 5.5))
    draw_layers(ax, report)
    ax.set_title(f"{report['model']['name']}: per-layer energy, {report['energy_model']['title']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)
