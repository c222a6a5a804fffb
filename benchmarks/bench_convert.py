"""Conversion and interpreter speed: convert time of the default model; float and integer
interpreters next to torch eager at 256x256 on MedQKFormer() (published widths), same run."""
from __future__ import annotations

import time


def _best_of(fn, repeat: int = 3) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_convert_default() -> dict:
    """Seconds to convert the embedded default model (trace, fold, calibrate on 4 images, quantize, check)."""
    from medqk.convert.pipeline import convert_checkpoint

    start = time.perf_counter()
    converted, _, agreement, _ = convert_checkpoint(None)
    seconds = time.perf_counter() - start
    print(f"convert default model ({converted.image_size[0]}x{converted.image_size[1]}): {seconds:.2f} s; "
          f"integer mask Dice vs torch {agreement['dice']:.4f}")
    return {"convert_default_s": seconds}


def bench_interpreters_256() -> dict:
    """Float and integer interpreters vs torch eager, MedQKFormer() at 1x3x256x256."""
    import numpy as np
    import torch

    from medqk import MedQKFormer
    from medqk.convert import interpret_float
    from medqk.convert.pipeline import float_graph_of, int_probabilities, torch_probabilities
    from medqk.convert.quantize import quantize

    torch.manual_seed(0)
    model = MedQKFormer().eval()
    x = np.random.default_rng(0).random((1, 3, 256, 256)).astype(np.float32)
    graph = float_graph_of(model, (256, 256))
    qgraph, _ = quantize(graph, x)
    t_torch = _best_of(lambda: torch_probabilities(model, x))
    t_float = _best_of(lambda: interpret_float.run(graph, x))
    t_int = _best_of(lambda: int_probabilities(qgraph, x))
    print(f"256x256 batch 1: torch eager {t_torch:.3f} s | float IR {t_float:.3f} s ({t_float / t_torch:.2f}x torch) | "
          f"integer IR {t_int:.3f} s ({t_int / t_torch:.2f}x torch; target <= 3x)")
    return {"torch_s": t_torch, "float_ir_s": t_float, "int_ir_s": t_int, "int_over_torch": t_int / t_torch}


BENCHMARKS = {"convert": bench_convert_default, "interpreters": bench_interpreters_256}

if __name__ == "__main__":
    for fn in BENCHMARKS.values():
        fn()
