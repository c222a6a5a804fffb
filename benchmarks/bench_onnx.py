"""ONNX speed: the published MedQKFormer (widths 32..256, random BatchNorm statistics) at 256x256,
batch 1 and 8, in one run: torch eager float, the float ONNX model and the integer ONNX model in
onnxruntime (CPU, every core), wall time. Then torch and the float model again on one thread, in
process CPU time: the work each does, which other jobs on a shared machine barely disturb (they
inflate torch's two-thread wall time most). Prints seconds per batch and the ratios, and the load
average; also checks, at this size, that the float model's masks agree with torch and that the
integer model equals the integer interpreter. Last, the floor (``bench_onnx_floor``): what
onnxruntime's convolution kernels alone take, from its profiler, next to torch.

    .venv/bin/python benchmarks/bench_onnx.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 256
BATCHES = (1, 8)
#: timed runs per batch size (the correctness checks warm every backend up first); the fastest counts
REPEATS = {1: 3, 8: 2}


def _fastest(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeats`` runs."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def _published_model():
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support import randomize_batchnorm

    from medqk import MedQKFormer

    torch.manual_seed(0)
    return randomize_batchnorm(MedQKFormer(), seed=0)


def _time_backends(backends: dict, images: np.ndarray, label: str, measure: int) -> dict:
    """Per batch size: seconds of every backend (``measure``: 0 wall, 1 process CPU); prints ratios."""
    results = {}
    for batch in BATCHES:
        x = images[:batch]
        seconds = {name: _fastest(lambda: run(x), REPEATS[batch])[measure] for name, run in backends.items()}
        speedup = seconds["torch"] / seconds["float_onnx"]
        line = (f"  {label}, batch {batch}: torch eager {seconds['torch']:.2f} s, float ONNX {seconds['float_onnx']:.2f} s "
                f"-> {speedup:.2f}x faster than torch")
        if "int_onnx" in seconds:
            line += (f"; integer ONNX {seconds['int_onnx']:.2f} s ({seconds['torch'] / seconds['int_onnx']:.2f}x torch's "
                     f"speed, {seconds['int_onnx'] / seconds['float_onnx']:.2f}x float ONNX's time)")
        print(line, flush=True)
        results[f"batch{batch}"] = {**{f"{k}_s": v for k, v in seconds.items()}, "float_speedup_vs_torch": speedup}
    return results


def bench_onnx_256() -> dict:
    """torch eager vs float ONNX vs integer ONNX at 256x256, batch 1 and 8, on every core; then
    torch vs float ONNX on one thread in process CPU time, which other processes on the machine
    barely disturb (torch's two-thread wall time suffers most from a busy machine)."""
    import torch

    from medqk.convert import interpret_int, to_onnx
    from medqk.convert.io import quantize_input
    from medqk.convert.pipeline import float_graph_of, mask_agreement, torch_probabilities
    from medqk.convert.quantize import quantize
    from medqk.deploy import onnx_runtime

    threads = onnx_runtime.cpu_threads()
    model = _published_model()
    images = np.random.default_rng(0).random((max(BATCHES), 3, SIZE, SIZE)).astype(np.float32)
    start = time.perf_counter()
    fgraph = float_graph_of(model, (SIZE, SIZE))
    qgraph, _ = quantize(fgraph, images[:1])
    float_onnx, int_onnx = to_onnx.float_model(fgraph), to_onnx.int_model(qgraph)
    float_session = onnx_runtime.open_session(float_onnx, "model.onnx", threads)
    int_session = onnx_runtime.open_session(int_onnx, "model-int.onnx", threads)
    setup = time.perf_counter() - start
    print(f"ONNX benchmark: MedQKFormer() at {SIZE}x{SIZE}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; setup (trace, quantize, lower, load) {setup:.0f} s")

    x_int = quantize_input(images[:1], qgraph.input.tensor.frac_bits)
    exact = bool(np.array_equal(onnx_runtime.run_session(int_session, x_int, "model-int.onnx"), interpret_int.run(qgraph, x_int)))
    agreement = mask_agreement(onnx_runtime.float_probabilities(float_session, images[:1]),
                               torch_probabilities(model, images[:1]))["pixel_agreement"]
    print(f"  float ONNX vs torch mask agreement {agreement:.5f}; integer ONNX == integer interpreter: {exact}")

    results = {"size": SIZE, "threads": threads, "setup_s": setup, "float_mask_agreement": agreement, "int_exact": exact}
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        results["wall"] = _time_backends({
            "torch": lambda x: torch_probabilities(model, x),
            "float_onnx": lambda x: onnx_runtime.float_probabilities(float_session, x),
            "int_onnx": lambda x: onnx_runtime.int_probabilities(int_session, x),
        }, images, f"{threads} threads, wall time", measure=0)
        torch.set_num_threads(1)
        single_session = onnx_runtime.open_session(float_onnx, "model.onnx", threads=1)
        results["single_thread_cpu"] = _time_backends({
            "torch": lambda x: torch_probabilities(model, x),
            "float_onnx": lambda x: onnx_runtime.float_probabilities(single_session, x),
        }, images, "1 thread, CPU time", measure=1)
    finally:
        torch.set_num_threads(torch_threads)
    results["load_average_after"] = os.getloadavg()[0]
    print(f"  load average after: {results['load_average_after']:.1f}")
    return results


def _sgemm_macs_per_second(threads: int, n: int = 2048) -> float:
    """This machine's float32 matrix-product rate in onnxruntime (MACs per second, best of 3)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm", info[:2], info[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((n, n)).astype(np.float32)
    seconds = _fastest(lambda: session.run(None, {"a": a, "b": a}), 3)[0]
    return n**3 / seconds


def _profiled_conv_seconds(onnx_model, images: np.ndarray, threads: int) -> tuple[float, float]:
    """(seconds in Conv kernels, seconds in all kernels) of one onnxruntime run, from its profiler."""
    import json
    import tempfile

    import onnxruntime as ort

    from medqk.deploy import onnx_runtime

    with tempfile.TemporaryDirectory() as tmp:
        options = onnx_runtime.session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(2):  # a warm-up run, then the measured one: both profiled, the same kernels each
            session.run(None, {session.get_inputs()[0].name: images})
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"])
    second = kernels[len(kernels) // 2:]
    conv = sum(e["dur"] for e in second if e["args"]["op_name"] == "Conv") / 1e6
    return conv, sum(e["dur"] for e in second) / 1e6


def bench_onnx_floor() -> dict:
    """What onnxruntime's convolution kernels alone take on the float model (from its profiler),
    against torch eager in the same run: the fastest the float ONNX model can be with every other
    op free. Also their rate against this machine's float32 matrix-product rate, measured now."""
    import torch

    from medqk.convert import to_onnx
    from medqk.convert.pipeline import float_graph_of, torch_probabilities
    from medqk.deploy import onnx_runtime

    threads = onnx_runtime.cpu_threads()
    model = _published_model()
    fgraph = float_graph_of(model, (SIZE, SIZE))
    float_onnx = to_onnx.float_model(fgraph)
    macs = sum(node.op.dense_macs(fgraph[node.inputs[0]].tensor.shape) for node in fgraph.nodes() if node.op.type == "conv2d")
    rate = _sgemm_macs_per_second(threads)
    print(f"ONNX floor: {macs / 1e9:.2f} GMAC of convolution per {SIZE}x{SIZE} image; float32 matrix product "
          f"{rate / 1e9:.1f} GMAC/s in onnxruntime on {threads} threads (load average {os.getloadavg()[0]:.1f})")
    results = {"conv_macs": macs, "sgemm_macs_per_s": rate}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        images = np.random.default_rng(0).random((max(BATCHES), 3, SIZE, SIZE)).astype(np.float32)
        for batch in BATCHES:
            conv_s, kernels_s = _profiled_conv_seconds(float_onnx, images[:batch], threads)
            torch_probabilities(model, images[:batch])
            torch_s = _fastest(lambda: torch_probabilities(model, images[:batch]), REPEATS[batch])[0]
            print(f"  batch {batch}: onnxruntime's Conv kernels {conv_s:.3f} s ({batch * macs / conv_s / 1e9:.1f} GMAC/s, "
                  f"{batch * macs / conv_s / rate:.0%} of the matrix-product rate), all its kernels {kernels_s:.3f} s; "
                  f"torch eager {torch_s:.3f} s -> with every other op free, float ONNX could be at most "
                  f"{torch_s / conv_s:.2f}x faster than torch (target 1.8x)")
            results[f"batch{batch}"] = {"conv_s": conv_s, "kernels_s": kernels_s, "torch_s": torch_s,
                                        "max_speedup": torch_s / conv_s}
    finally:
        torch.set_num_threads(torch_threads)
    return results


BENCHMARKS = {"onnx_256": bench_onnx_256, "onnx_floor": bench_onnx_floor}

if __name__ == "__main__":
    for fn in BENCHMARKS.values():
        fn()
