"""Where Lava spends time with medqk's process library (figures quoted in docs/lava.md).

- step overhead: a chain of trivial fused layers run for its natural steps, then for 1,000 more idle
  steps; the difference is what a process costs per step when it does not fire;
- a 32 -> 32 3x3 convolution at 64x64 and 256x256 in the fused-layer model, on spikes (exact in
  float32) and on 24-bit real values (float64): its busy time in the model and the whole run.

    .venv/bin/python benchmarks/bench_lava.py
"""
import time

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
    kind = "spikes 0..4 (float32)" if spikes else "24-bit reals (float64)"
    print(f"conv 32->32 3x3 at {size}x{size}, {kind}: busy {result.busy_s['conv'] * 1e3:.0f} ms in the model; "
          f"build {result.build_s:.2f} s, run {result.run_s:.2f} s, read {result.read_s:.3f} s, total {total:.2f} s")
    return {"size": size, "spikes": spikes, "busy_s": result.busy_s["conv"], "run_s": result.run_s, "total_s": total}


if __name__ == "__main__":
    bench_step_overhead()
    for size in (64, 256):
        for spikes in (True, False):
            bench_conv(size, spikes)
