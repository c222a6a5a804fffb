"""Energy report speed: for one 256x256 image, the whole report (activity from the integer interpreter,
counting, baselines, the idealised float45 model and the memory-traffic lemaire model) against one
plain integer-interpreter inference of the same model, in the same run (target: at most 1.5x).
The model is the embedded default model converted at 256x256 (a one-off, not timed). The first
report of a process also traces the U-Net baseline (cached per input shape): it is timed apart."""
from __future__ import annotations

import time
from pathlib import Path

MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg"


def bench_energy_report_256(repeats: int = 3) -> dict:
    from medqk.convert.quantize import run_quantized
    from medqk.energy import activity as act
    from medqk.energy.commands import analyze, image_inputs, open_subject
    from medqk.energy.models import get_model

    converted = open_subject(None, (256, 256))
    files = sorted(MONUSEG.glob("val/img/*.png"))[:1] or None  # the demo image without ../shared
    _, images, described = image_inputs(converted, files)
    label, image = next(iter(images))
    graph = converted.int_graph
    start = time.perf_counter()
    activity = act.from_images(graph, [(label, image)], 1)
    analyze(converted, activity, get_model("float45"), [], "default model")
    first = time.perf_counter() - start
    inference, report = [], []
    for _ in range(repeats):  # interleaved, so machine load affects both alike; the best of each
        start = time.perf_counter()
        run_quantized(graph, image[None])
        inference.append(time.perf_counter() - start)
        start = time.perf_counter()
        activity = act.from_images(graph, [(label, image)], 1)
        for model in ("float45", "lemaire"):
            analyze(converted, activity, get_model(model), [], "default model")
        report.append(time.perf_counter() - start)
    ratio = min(report) / min(inference)
    print(f"energy report (float45 + lemaire) for one 256x256 image ({described}): {min(report):.2f} s; one integer-"
          f"interpreter inference {min(inference):.2f} s; ratio {ratio:.2f} (target <= 1.5; best of {repeats}); "
          f"the process's first report (float45, U-Net traced): {first:.2f} s, {first / min(inference):.2f}x")
    return {"report_s": min(report), "inference_s": min(inference), "ratio": ratio, "first_report_s": first}


BENCHMARKS = {"energy_report": bench_energy_report_256}

if __name__ == "__main__":
    for fn in BENCHMARKS.values():
        fn()
