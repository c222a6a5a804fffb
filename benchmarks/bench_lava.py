"""Where Lava spends time with medqk's process library (figures quoted in the README, section "Running the integer graph in Lava").

- step overhead: a chain of trivial fused layers run for its natural steps, then for 1,000 more idle
  steps; the difference is what a process costs per step when it does not fire;
- a 32 -> 32 3x3 convolution at 64x64 and 256x256 in the fused-layer model, on spikes (exact in
  float32) and on 24-bit real values (float32 digit planes): its busy time in the model and the whole run;
- MedQKFormer at its published widths on one 256x256 image: Lava build and run next to the integer
  interpreter, bit-exactness, where the time goes, and the peak memory of the whole process tree
  (sum of PSS, so pages shared by the forked Lava processes count once);
- with ``library [SIZE]``: MedQKFormer in the Lava library graph (``deploy.lava_library``, fast
  models) next to the interpreter, bit-exactness and peak memory.

    .venv/bin/python benchmarks/bench_lava.py
    .venv/bin/python benchmarks/bench_lava.py library 64
"""
import os
import threading
import time
from pathlib import Path

import numpy as np

from medqk.convert.elementwise import Complement
from medqk.convert.graph import Node
from medqk.convert.synapses import Conv2d
from medqk.deploy.lava_plan import LayerPlan
from medqk.deploy.lava_runtime import build_network, lava_run, run_network

IDLE_STEPS = 1000


def chain(length: int):
    """input -> ``length`` complement layers on 2x4x4 -> sink."""
    shape = (2, 4, 4)
    plans = [LayerPlan(f"L{i}", ((f"v{i}", shape),), (Node(f"v{i + 1}", Complement(one=4.0), [f"v{i}"]),), (f"v{i + 1}",))
             for i in range(length)]
    return build_network({"v0": np.zeros((1, *shape), np.int64)}, plans, [f"v{length}"])


def timed_run(network, steps: int):
    with lava_run(network.processes, steps) as session:
        return session


def bench_step_overhead(length: int = 100) -> dict:
    network = chain(length)
    processes = len(network.processes)
    natural = timed_run(network, network.steps)
    longer = timed_run(chain(length), network.steps + IDLE_STEPS)
    per_step_ms = (longer.run_s - natural.run_s) / IDLE_STEPS / processes * 1e3
    print(f"{processes} processes: build {natural.build_s:.2f} s; {network.steps} steps in {natural.run_s:.2f} s; "
          f"{IDLE_STEPS} more idle steps {longer.run_s - natural.run_s:.2f} s -> {per_step_ms:.3f} ms per process "
          "per idle step")
    return {"processes": processes, "steps": network.steps, "build_s": natural.build_s, "natural_run_s": natural.run_s,
            "per_process_step_ms": per_step_ms}


def bench_conv(size: int, spikes: bool) -> dict:
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (32, 32, 3, 3))
    conv = Conv2d(weight=w.astype(float), weight_mantissa=w, weight_exponent=0,
                  bias_acc=np.zeros(32, np.int64), shift=4, padding=1)
    x = rng.integers(0, 5, (1, 32, size, size)) if spikes else rng.integers(-(2**23), 2**23, (1, 32, size, size))
    plan = LayerPlan("conv", (("x", (32, size, size)),), (Node("y", conv, ["x"]),), ("y",))
    start = time.perf_counter()
    result = run_network(build_network({"x": x}, [plan], ["y"]))
    total = time.perf_counter() - start
    kind = "spikes 0..4 (float32)" if spikes else "24-bit reals (float32 digit planes)"
    print(f"conv 32->32 3x3 at {size}x{size}, {kind}: busy {result.busy_s['conv'] * 1e3:.0f} ms in the model; "
          f"build {result.build_s:.2f} s, run {result.run_s:.2f} s, read {result.read_s:.3f} s, total {total:.2f} s")
    return {"size": size, "spikes": spikes, "busy_s": result.busy_s["conv"], "run_s": result.run_s, "total_s": total}


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


def bench_medqkformer_256() -> dict:
    import gc

    import torch

    from medqk import MedQKFormer
    from medqk.convert import interpret_int
    from medqk.convert.io import quantize_input
    from medqk.convert.pipeline import float_graph_of
    from medqk.convert.quantize import quantize
    from medqk.deploy.lava_lowering import run_image

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((1, 3, 256, 256)).astype(np.float32)
    start = time.perf_counter()
    graph, _ = quantize(float_graph_of(MedQKFormer().eval(), (256, 256)), x)
    convert_s = time.perf_counter() - start
    gc.collect()
    x_int = quantize_input(x, graph.input.tensor.frac_bits)
    start = time.perf_counter()
    expected = interpret_int.run(graph, x_int)
    interpreter_s = time.perf_counter() - start
    host_before = _pss_bytes(os.getpid())
    with PeakMemory() as memory:
        start = time.perf_counter()
        lava = run_image(graph, x_int)
        total_s = time.perf_counter() - start
    exact = np.array_equal(lava.logits, expected)
    busy = sorted(lava.busy_s.items(), key=lambda kv: -kv[1])
    print(f"MedQKFormer (published widths) 256x256, one image: integer interpreter {interpreter_s:.2f} s | Lava "
          f"{total_s:.2f} s = build {lava.build_s:.2f} + run {lava.run_s:.2f} + read {lava.read_s:.2f} "
          f"({lava.layers} fused layers, {lava.steps} steps); bit-exact: {exact}; peak memory (PSS, all processes) "
          f"{memory.peak / 2**30:.2f} GiB (host alone before the run {host_before / 2**30:.2f} GiB); convert {convert_s:.1f} s")
    print(f"  busy in the process models: {sum(lava.busy_s.values()):.2f} s in all; slowest: "
          + ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in busy[:4]))
    return {"interpreter_s": interpreter_s, "lava_s": total_s, "build_s": lava.build_s, "run_s": lava.run_s,
            "read_s": lava.read_s, "steps": lava.steps, "layers": lava.layers, "bit_exact": exact,
            "busy_s": sum(lava.busy_s.values()), "peak_pss_bytes": memory.peak, "host_pss_bytes": host_before}


def bench_library_graph(size: int) -> dict:
    """MedQKFormer (published widths, random weights) at ``size`` x ``size`` in the Lava library graph
    (``deploy.lava_library``, fast models) next to the integer interpreter, in one run."""
    import torch

    from medqk import MedQKFormer
    from medqk.convert import interpret_int
    from medqk.convert.io import quantize_input
    from medqk.convert.pipeline import float_graph_of
    from medqk.convert.quantize import quantize
    from medqk.deploy.lava_graph import lower
    from medqk.deploy.lava_library import run_image

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((1, 3, size, size)).astype(np.float32)
    graph, _ = quantize(float_graph_of(MedQKFormer().eval(), (size, size)), x)
    x_int = quantize_input(x, graph.input.tensor.frac_bits)
    start = time.perf_counter()
    expected = interpret_int.run(graph, x_int)
    interpreter_s = time.perf_counter() - start
    lowered = lower(graph)
    with PeakMemory() as memory:
        start = time.perf_counter()
        lava = run_image(graph, x_int, "fast", lowered)
        total_s = time.perf_counter() - start
    exact = np.array_equal(lava.logits, expected)
    print(f"library graph, MedQKFormer (published widths) {size}x{size}: {lava.processes} processes, {lava.steps} steps | "
          f"interpreter {interpreter_s:.2f} s | Lava (fast) {total_s:.1f} s = build {lava.build_s:.1f} + run {lava.run_s:.1f} "
          f"+ read {lava.read_s:.2f} ({total_s / interpreter_s:.0f}x the interpreter); bit-exact: {exact}; "
          f"peak memory (PSS, all processes) {memory.peak / 2**30:.2f} GiB")
    return {"interpreter_s": interpreter_s, "lava_s": total_s, "build_s": lava.build_s, "run_s": lava.run_s,
            "processes": lava.processes, "steps": lava.steps, "bit_exact": exact, "peak_pss_bytes": memory.peak}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["library"]:  # bench_lava.py library [SIZE]: the library graph only (minutes)
        bench_library_graph(int(sys.argv[2]) if len(sys.argv) > 2 else 64)
        sys.exit()
    bench_step_overhead()
    for size in (64, 256):
        for spikes in (True, False):
            bench_conv(size, spikes)
    bench_medqkformer_256()
