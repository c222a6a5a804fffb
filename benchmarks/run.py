"""Run medqk's benchmarks: ``python benchmarks/run.py [NAME ...] [--json FILE]``.

Every ``benchmarks/bench_*.py`` holds ``BENCHMARKS = {"name": function}``; each function prints
its figures and returns them as a dict. To add a benchmark, add a function to such a module (or
a new ``bench_*.py``) and list it in that module's ``BENCHMARKS``. Without names, all run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def registry() -> dict:
    """name -> function, from every bench_*.py beside this file (in file name order)."""
    entries = {}
    for path in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"medqk_benchmarks.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "BENCHMARKS"):
            print(f"warning: {path.name} defines no BENCHMARKS dict; skipped", file=sys.stderr)
            continue
        for name, fn in module.BENCHMARKS.items():
            if name in entries:
                raise SystemExit(f"benchmark name '{name}' is defined twice (second time in {path.name})")
            entries[name] = fn
    return entries


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    entries = registry()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(entries)}")
    parser.add_argument("--json", type=Path, default=None, help="also write machine and results as JSON here")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in entries]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(entries)}")
    described = machine()
    print("machine: " + ", ".join(f"{key} {value}" for key, value in described.items()))
    results = {}
    for name in args.names or list(entries):
        summary = (entries[name].__doc__ or "").strip().splitlines()
        print(f"[{name}] {summary[0] if summary else ''}", flush=True)
        start = time.perf_counter()
        results[name] = entries[name]() or {}
        print(f"[{name}] done in {time.perf_counter() - start:.1f} s", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": described, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
