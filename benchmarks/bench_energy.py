"""Energy report speed: the default model's report over the 30 MoNuSeg images at 256x256, seconds
per image (integer interpreter + spike counting), next to the one-off costs (conversion of the
checkpoint; baselines, thop view and report)."""
from __future__ import annotations

import time
from pathlib import Path

MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg"


def bench_energy_monuseg_256() -> dict:
    """`medqk energy report --images` on the 30 MoNuSeg images (train/img + val/img) at 256x256."""
    from medqk.energy import activity as act
    from medqk.energy.commands import analyze, image_inputs, open_subject
    from medqk.energy.models import get_model

    files = sorted(MONUSEG.glob("*/img/*.png"))
    if not files:
        print(f"energy report: skipped, no images under {MONUSEG}")
        return {}
    start = time.perf_counter()
    converted = open_subject(None, (256, 256))
    t_convert = time.perf_counter() - start
    count, images, _ = image_inputs(converted, files)
    start = time.perf_counter()
    activity = act.from_images(converted.int_graph, images, count)
    t_images = time.perf_counter() - start
    start = time.perf_counter()
    report = analyze(converted, activity, get_model("float45"), [], "default model")
    t_report = time.perf_counter() - start
    totals, twin = report["totals"], next(b for b in report["baselines"] if b["name"] == "ann-twin")
    print(f"energy report, {count} MoNuSeg images at 256x256: {t_images / count:.2f} s per image "
          f"(integer interpreter + counting); one-off: convert {t_convert:.1f} s, baselines + report {t_report:.1f} s; "
          f"SNN {totals['energy_pj'] / 1e9:.2f} mJ vs ANN twin {twin['energy_pj'] / 1e9:.2f} mJ per image (45 nm float)")
    return {"images": count, "seconds_per_image": t_images / count, "convert_s": t_convert, "report_s": t_report,
            "snn_energy_pj": totals["energy_pj"], "ann_twin_energy_pj": twin["energy_pj"]}


BENCHMARKS = {"energy_report": bench_energy_monuseg_256}

if __name__ == "__main__":
    for fn in BENCHMARKS.values():
        fn()
