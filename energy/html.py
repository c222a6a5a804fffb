"""The energy report as HTML sections: per-layer energy (SNN, ANN twin), totals against the
baselines (U-Net included), firing per NISF population, and the conventions used."""
from __future__ import annotations

from medqk.energy.report import baseline_table, draw_layers, energy, si
from medqk.htmlpage import Section, chart, figure_png, table


def _layer_chart(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    baselines = {b["name"]: b for b in report["baselines"]}
    fig, (ax, ax_total) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [4, 1]})
    draw_layers(ax, report)
    ax.set_title("per synaptic layer", fontsize=10)
    names = ["SNN", *baselines]
    networks = [report["totals"], *baselines.values()]
    compute = np.array([n["compute_pj"] for n in networks]) / 1e6
    memory = np.array([n["memory_pj"] for n in networks]) / 1e6
    colors = ["#f28e2b", *("#4e79a7" if n == "ann-twin" else "#76b7b2" if n == "unet" else "#bab0ac" for n in baselines)]
    ax_total.bar(names, compute, color=colors)
    if memory.any():
        ax_total.bar(names, memory, bottom=compute, color=colors, alpha=0.45, hatch="///", edgecolor="white")
    ax_total.set_yscale("log")
    ax_total.set_title("whole network", fontsize=10)
    ax_total.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(f"{report['energy_model']['title']}, per image", fontsize=10)
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    return png


def _firing_chart(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firing = report["firing"]
    names = list(firing)
    fig, ax = plt.subplots(figsize=(13, 3.8))
    ax.bar(range(len(names)), [f["fraction_nonzero"] for f in firing.values()], color="#59a14f", label="fraction of neurons firing (s > 0)")
    ax.plot(range(len(names)), [f["mean_spike"] / 4 for f in firing.values()], "o", color="#e15759", ms=3,
            label="mean spike value / D")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    return png


def energy_sections(report: dict) -> list[Section]:
    em = report["energy_model"]
    energy_section = Section("Energy: SNN vs ANN twin vs U-Net").add(
        f"<p>{em['title']}: MAC {em['e_mac_pj']} pJ, spike op {em['e_spike_op_pj']} pJ ({em['source']}). "
        f"Activity: {report['activity']['source']}, {report['activity']['images']} image(s).</p>"
    ).add(table(*baseline_table(report))
    ).add(chart(_layer_chart(report), "per-layer energy"))
    firing_section = Section("Firing per NISF population").add(
        f"<p>{len(report['firing'])} populations. Bars: fraction of neurons with a nonzero spike; dots: mean "
        "integer spike value over D.</p>").add(chart(_firing_chart(report), "firing rates"))
    notes = "".join(f"<li><b>{name}</b>: {rule}</li>" for name, rule in report["conventions"].items())
    other = ", ".join(f"{k.replace('_', ' ')} {si(v)}" for k, v in report["other_ops"].items())
    conventions = Section("What the counts mean").add(f"<ul class=\"note\">{notes}</ul><p class=\"note\">Other operations "
                                                      f"per image (not priced in the synaptic total): {other}.</p>")
    return [energy_section, firing_section, conventions]
