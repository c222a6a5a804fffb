"""The energy report: one dict (the JSON), and its terminal, Markdown and chart renderings.

Every number in the report is per image (means over the images analysed).
"""
from __future__ import annotations

from pathlib import Path

from medqk.energy.activity import Activity
from medqk.energy.baselines import Baseline
from medqk.energy.counting import LayerCount
from medqk.energy.models import EnergyModel

CONVENTIONS = [
    "synaptic layers are classified by the kind of their input tensor in the IR: an integer NISF spike map "
    "(0..D) is 'spike', anything else (image, BN output, a sum of branches, an upsampled map) is 'real'",
    "real input: MACs = outputs x C_in/groups x kh x kw for convolutions (bias and BN excluded), inputs x C_out "
    "x kh x kw for transposed convolutions, 2 taps per output along H then along W for bilinear upsampling",
    "spike input: ACs = sum of s x exact fan-out (unit-spike convention, borders and strides included); "
    "events = number of nonzero s x exact fan-out (graded-spike convention)",
    "other operations (neuron updates, additions, spike products, affine, complements, output sigmoid) are "
    "counted in their own categories and never added to MACs or ACs",
    "memory access (weights, membrane state, activations) is not priced: this favours sparse networks "
    "(Lemaire et al. 2022; Dampfhoffer et al. 2022)",
]


def _layer_row(layer: LayerCount, model: EnergyModel, twin: LayerCount) -> dict:
    return {"name": layer.name, "op": layer.op, "input_kind": layer.input_kind, "macs": layer.macs,
            "acs": layer.acs, "events": layer.events,
            "energy_pj": model.layer_energy(layer.macs, layer.acs, layer.events),
            "ann_twin_energy_pj": model.layer_energy(twin.macs, 0, 0)}


def _baseline_row(b: Baseline, model: EnergyModel, snn_energy: float) -> dict:
    pj = model.layer_energy(b.macs, 0, 0)
    return {"name": b.name, "params": b.params, "macs": b.macs, "macs_by_op": b.macs_by_op,
            "thop_macs": b.thop_macs, "energy_pj": pj, "energy_vs_snn": pj / snn_energy if snn_energy else None}


def build(model: dict, layers: list[LayerCount], other_ops: dict[str, int], activity: Activity,
          energy_model: EnergyModel, baselines: list[Baseline]) -> dict:
    """The report. ``model``: name, params, thop_macs, input_shape, sha256 of the analysed network;
    ``baselines`` must include the ANN twin (its layers pair with ``layers``)."""
    twin = next(b for b in baselines if b.name == "ann-twin")
    rows = [_layer_row(layer, energy_model, t) for layer, t in zip(layers, twin.layers)]
    totals = {k: sum(r[k] for r in rows) for k in ("macs", "acs", "events", "energy_pj")}
    neuron_energy = energy_model.neuron_energy(*activity.active_inactive())
    return {
        "model": model,
        "conventions": CONVENTIONS,
        "energy_model": energy_model.to_dict(),
        "activity": {"source": activity.source, "images": activity.images},
        "layers": rows,
        "totals": totals,
        "other_ops": other_ops,
        "other_energy_pj": {} if neuron_energy is None else {"neuron_updates": neuron_energy},
        "firing": activity.firing(),
        "baselines": [_baseline_row(b, energy_model, totals["energy_pj"]) for b in baselines],
        "per_image": [{**p, "energy_pj": energy_model.layer_energy(totals["macs"], p["acs"], p["events"])}
                      for p in activity.per_image],
    }


# -- rendering ---------------------------------------------------------------------------------------

def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (engineering prefixes, three significant digits)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def energy(pj: float) -> str:
    """pJ in the unit that reads best (pJ, nJ, uJ, mJ)."""
    for factor, unit in ((1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if pj >= factor:
            return f"{pj / factor:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _layer_table(report: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    total = report["totals"]["energy_pj"] or 1.0
    header = ("layer", "input", "MACs", "ACs", "events", "energy", "share")
    body = [(r["name"], r["input_kind"], si(r["macs"]) if r["macs"] else "-", si(r["acs"]) if r["acs"] else "-",
             si(r["events"]) if r["events"] else "-", energy(r["energy_pj"]), f"{100 * r['energy_pj'] / total:.1f}%")
            for r in report["layers"]]
    t = report["totals"]
    body.append(("total (synaptic)", "", si(t["macs"]), si(t["acs"]), si(t["events"]), energy(t["energy_pj"]), "100%"))
    return header, body


def _baseline_table(report: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    header = ("baseline", "params", "MACs", "thop count", "energy", "x SNN")
    body = [(b["name"], si(b["params"]), si(b["macs"]), si(b["thop_macs"]) if b["thop_macs"] else "-",
             energy(b["energy_pj"]), f"{b['energy_vs_snn']:.2f}" if b["energy_vs_snn"] else "-")
            for b in report["baselines"]]
    m = report["model"]
    body.insert(0, (f"{m['name']} (SNN)", si(m["params"]), si(report["totals"]["macs"]),
                    si(m["thop_macs"]) if m.get("thop_macs") else "-", energy(report["totals"]["energy_pj"]), "1.00"))
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
        lines.append(f"           {k.replace('_', ' ')}: {energy(v)} (not in the synaptic total)")
    lines.append("memory     not priced (favours sparse networks)")
    return lines


def format_terminal(report: dict) -> str:
    return "\n\n".join([
        _text_table(*_layer_table(report)),
        "\n".join(_summary_lines(report)),
        _text_table(*_baseline_table(report)),
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
        "## Comparison", _markdown_table(*_baseline_table(report)),
        "## Per layer (per image)", _markdown_table(*_layer_table(report)),
        "## Conventions", "\n".join(f"- {c}" for c in report["conventions"]),
    ]) + "\n"


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def plot(report: dict, path: Path) -> Path:
    """Per-layer energy of the SNN next to its ANN twin (log scale), saved to ``path`` (PLOT_SUFFIXES)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["layers"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(rows)), 5.5))
    ax.bar(x - 0.2, [r["ann_twin_energy_pj"] / 1e6 for r in rows], 0.4, label="ANN twin (all MACs)", color="#4e79a7")
    ax.bar(x + 0.2, [r["energy_pj"] / 1e6 for r in rows], 0.4, label="SNN (spike-fed layers as ACs)", color="#f28e2b")
    ax.set_yscale("log")
    ax.set_ylabel("energy per image (uJ)")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=5)
    ax.set_title(f"{report['model']['name']}: per-layer energy, {report['energy_model']['title']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)
