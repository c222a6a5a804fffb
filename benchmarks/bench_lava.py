"""Where Lava spends time in medqk's Lava graph (figures quoted in docs/lava.md, "Measured").

- ``lava_256``: MedQKFormer at its published widths (random weights) on one 256x256 image in the
  Lava graph of Lava's library processes, fast models: build, run and read next to the integer
  interpreter in the same run, bit-exactness, and the peak memory of the process (sum of PSS over
  it and any children, of which there are none: Lava's actors are threads, ``lava_threads``).
  The issue's targets: at most 30 s, at most 3x the interpreter, at most 8 GB.
- ``lava_actors``: the same graph at 32x32 on Lava's own ``MultiProcessing`` actors (one forked OS
  process per Lava process) and on medqk's thread actors, back to back: the ratio of the two.

    .venv/bin/python benchmarks/run.py lava_256 lava_actors
    .venv/bin/python benchmarks/bench_lava.py [SIZE]
"""
import os
import threading
import time
from pathlib import Path

import numpy as np


def _tree(pid: int) -> list[int]:
    children = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").glob("*"))
    except OSError:  # the process exited while we walked the tree
        tasks = []
    for task in tasks:
        try:
            children += (task / "children").read_text().split()
        except OSError:
            pass
    return [pid] + [p for child in children for p in _tree(int(child))]


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples the summed PSS of this process and all its descendants every 0.1 s."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, sum(_pss_bytes(p) for p in _tree(os.getpid())))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def published_graph(size: int):
    """MedQKFormer() (published widths, random weights) quantized at ``size`` x ``size``, and one image."""
    import torch

    from medqk import MedQKFormer
    from medqk.convert.io import quantize_input
    from medqk.convert.pipeline import float_graph_of
    from medqk.convert.quantize import quantize

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((1, 3, size, size)).astype(np.float32)
    graph, _ = quantize(float_graph_of(MedQKFormer().eval(), (size, size)), x)
    return graph, quantize_input(x, graph.input.tensor.frac_bits)


def bench_lava_graph(size: int = 256) -> dict:
    """The Lava graph (fast models) next to the integer interpreter, in one run."""
    from medqk.convert import interpret_int
    from medqk.deploy.lava_graph import lower
    from medqk.deploy.lava_library import run_image

    graph, x_int = published_graph(size)
    start = time.perf_counter()
    expected = interpret_int.run(graph, x_int)
    interpreter_s = time.perf_counter() - start
    lowered = lower(graph)
    with PeakMemory() as memory:
        start = time.perf_counter()
        lava = run_image(graph, x_int, "fast", lowered)
        total_s = time.perf_counter() - start
    exact = np.array_equal(lava.logits, expected)
    ratio = total_s / interpreter_s
    print(f"Lava graph, MedQKFormer (published widths) {size}x{size}: {lava.processes} processes, {lava.steps} steps | "
          f"interpreter {interpreter_s:.2f} s | Lava (fast) {total_s:.1f} s = build {lava.build_s:.1f} + run {lava.run_s:.1f} "
          f"+ read {lava.read_s:.2f} ({ratio:.1f}x the interpreter); bit-exact: {exact}; "
          f"peak memory (PSS) {memory.peak / 2**30:.2f} GiB | targets: 30 s {'met' if total_s <= 30 else 'NOT met'}, "
          f"3x {'met' if ratio <= 3 else 'NOT met'}, 8 GB {'met' if memory.peak <= 8e9 else 'NOT met'}")
    return {"size": size, "interpreter_s": interpreter_s, "lava_s": total_s, "build_s": lava.build_s, "run_s": lava.run_s,
            "read_s": lava.read_s, "ratio": ratio, "processes": lava.processes, "steps": lava.steps, "bit_exact": exact,
            "peak_pss_bytes": memory.peak}


def bench_actors(size: int = 32) -> dict:
    """The same graph on Lava's MultiProcessing actors and on medqk's thread actors, back to back."""
    from medqk.deploy import lava_threads
    from medqk.deploy.lava_graph import lower
    from medqk.deploy.lava_library import run_image

    graph, x_int = published_graph(size)
    lowered = lower(graph)
    import torch

    timings = {}
    threaded_start, torch_threads = lava_threads.start, torch.get_num_threads()
    for actors in ("processes", "threads"):
        if actors == "processes":  # Lava's own runtime: Process.create_runtime forks one OS process per actor
            lava_threads.start = lambda root, run_cfg: root.create_runtime(run_cfg=run_cfg)
            torch.set_num_threads(1)  # GNU OpenMP's pool, used by the host, hangs a forked child that uses it
        try:
            with PeakMemory() as memory:
                start = time.perf_counter()
                run = run_image(graph, x_int, "fast", lowered)
                timings[actors] = (time.perf_counter() - start, run, memory)
        finally:
            lava_threads.start = threaded_start
            torch.set_num_threads(torch_threads)
    (p_s, p_run, p_mem), (t_s, t_run, t_mem) = timings["processes"], timings["threads"]
    print(f"Lava graph {size}x{size}, {t_run.processes} processes: Lava's MultiProcessing actors {p_s:.1f} s (build "
          f"{p_run.build_s:.1f}, run {p_run.run_s:.1f}; {p_mem.peak / 2**30:.2f} GiB) | thread actors {t_s:.1f} s (build "
          f"{t_run.build_s:.1f}, run {t_run.run_s:.1f}; {t_mem.peak / 2**30:.2f} GiB) | {p_s / t_s:.1f}x faster, "
          f"{p_mem.peak / max(t_mem.peak, 1):.1f}x less memory; same logits: {np.array_equal(p_run.logits, t_run.logits)}")
    return {"size": size, "processes_s": p_s, "threads_s": t_s, "speedup": p_s / t_s,
            "processes_peak_bytes": p_mem.peak, "threads_peak_bytes": t_mem.peak}


BENCHMARKS = {"lava_256": bench_lava_graph, "lava_actors": bench_actors}


if __name__ == "__main__":
    import sys

    bench_lava_graph(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
