"""The ``medqk`` command: one subcommand per step of the pipeline.

Each package registers its own subcommands (``register(subparsers)`` in its ``commands``
module) and imports its heavy libraries only when a command runs, so ``medqk --help`` is fast.
User mistakes end with a one-line error and exit code 2 (full traceback with -v); Ctrl-C ends a
command with exit code 130 and SIGTERM with 143, after the same clean-up.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from pathlib import Path

from medqk import console
from medqk.errors import MedqkError

#: Modules with a ``register(subparsers)`` function, in the order of the pipeline.
COMMAND_MODULES = (
    "medqk.commands",          # train, eval
    "medqk.convert.commands",  # convert, inspect
    "medqk.deploy.commands",   # run
    "medqk.deploy.compare",    # compare
    "medqk.energy.commands",   # energy report
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medqk",
        description="MedQKFormer from checkpoint to integer ONNX, Lava (Loihi 2) and energy report.",
        epilog="Run `medqk COMMAND --help` for a command's options.",
    )
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="more detail; full tracebacks on errors")
    level.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    register_demo(subparsers)
    return parser


# -- medqk demo: the whole journey on the embedded default ---------------------------------------

#: backends the demo runs, in this order, where registered
DEMO_BACKENDS = ("torch", "ir", "ir-int", "onnx", "onnx-int", "lava")
INTEGER_BACKENDS = ("ir-int", "onnx-int", "lava")
FLOAT_BACKENDS = ("ir", "onnx")
#: least mask Dice against torch for the demo to call the backends in agreement
DEMO_FLOAT_DICE, DEMO_INT_DICE = 0.99, 0.9


def register_demo(subparsers) -> None:
    from medqk.data.preprocess import PIXEL_DEPTH_RULE

    p = subparsers.add_parser(
        "demo", help="convert, run every backend, compare them and write an energy report (HTML)",
        description="The whole journey on one model and one image: convert the checkpoint, run it in torch, the IR "
                    "interpreters, onnxruntime and Lava, check that they agree, count the energy against the U-Net "
                    "and the ANN twin, and write one self-contained HTML report.")
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint to use (default: the embedded default model)")
    p.add_argument("-o", "--output", type=Path, default=Path("medqk-demo"), help="output directory (default: %(default)s)")
    p.add_argument("--image", type=Path, help="an image (or .npy network input); default: a built-in synthetic image with its mask; "
                                              + PIXEL_DEPTH_RULE)
    p.add_argument("--mask", type=Path, help="the image's ground-truth mask (0/1, or 0 to the full scale of its bit depth), "
                                             "shown and scored when given")
    p.add_argument("--skip", action="append", default=[], choices=DEMO_BACKENDS, metavar="BACKEND",
                   help="leave a backend out (repeatable), e.g. --skip lava")
    p.add_argument("--json", type=Path, metavar="F", help="also write the demo's results as JSON")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import json
    import time

    from medqk.convert.serialize import check_model_destination
    from medqk.outputs import check_files, check_folder, write_files

    check_folder("-o", args.output)
    check_model_destination(args.output / "model", force=True)
    check_files({"--json": args.json})
    start = time.perf_counter()
    run = DemoRun.execute(args.checkpoint, args.output, args.image, args.mask, [b for b in DEMO_BACKENDS if b not in args.skip])
    report_path = args.output / "report.html"
    summary = run.summary()
    summary["seconds"] = time.perf_counter() - start
    results = json.dumps(summary, indent=2, default=str)
    write_files({report_path: lambda path: write_report(run, path),
                 args.output / "results.json": lambda path: path.write_text(results),
                 args.json: lambda path: path.write_text(results)})
    console.info(run.format_summary())
    console.info(f"report written: {report_path.resolve()}  ({summary['seconds']:.0f} s)")
    return 0 if summary["all_agree"] else 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is, so that the same clean-up runs."""


def _raise_terminated(signum, frame):
    raise Terminated


def _sigterm_raises_terminated():
    """Make SIGTERM raise Terminated; return the handler it replaces, or None where it stays as it is
    (ignored, or not the main thread, which alone may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.verbosity = 2 if args.verbose else 0 if args.quiet else 1
    previous_sigterm = _sigterm_raises_terminated()
    try:
        return int(args.func(args) or 0)
    except MedqkError as error:
        if args.verbose:
            raise
        print(f"medqk {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated:
        print(f"medqk {args.command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"medqk {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


class DemoRun:
    """What `medqk demo` did: the converted model, each backend's output, energy, Loihi summary."""

    def __init__(self, directory: Path, image, mask, results: dict, labels: dict, energy_report: dict, loihi: dict | None,
                 float_labels=None):
        self.directory, self.image, self.mask = directory, image, mask
        self.results, self.energy_report, self.loihi = results, energy_report, loihi
        self.labels = labels  #: backend -> its predicted label map [H, W] (``pipeline.predicted_labels``)
        #: an integer-aware fine-tuned checkpoint: its weights' labels as a plain float network, the
        #: reference of the float backends (torch is then the fixed-point network it was trained as)
        self.float_labels = float_labels

    @classmethod
    def execute(cls, checkpoint, output: Path, image_path, mask_path, backends: list[str]) -> "DemoRun":
        import json

        from medqk.convert.commands import OUTPUT_WRITERS
        from medqk.convert.neurons import output_activation
        from medqk.convert.pipeline import convert_checkpoint, predicted_labels
        from medqk.convert.serialize import save_model
        from medqk.deploy.backends import BACKENDS, ModelHandle
        from medqk.deploy.commands import load_input, save_mask_png
        from medqk.energy import activity as act
        from medqk.energy.commands import analyze
        from medqk.energy.models import get_model

        output.mkdir(parents=True, exist_ok=True)
        console.info("[1/3] converting the model (trace, fold, calibrate, quantize, ONNX, Loihi 2 report)")
        converted, _, _, _ = convert_checkpoint(checkpoint)
        model_dir = save_model(converted, output / "model", force=True, extra_writers=OUTPUT_WRITERS)
        handle = ModelHandle(model_dir)
        mask = None
        if image_path is None:
            from medqk.defaults import default_image

            sample = default_image(tuple(converted.image_size))
            images, mask = sample.image[None], sample.mask[0] > 0.5
        else:
            images = load_input(handle, image_path)
            if mask_path is not None:
                from medqk.data.preprocess import load_mask

                mask = load_mask(mask_path, tuple(converted.image_size))[0] > 0.5
        results, labels = {}, {}
        names = [b for b in backends if b in BACKENDS]
        for i, name in enumerate(names):
            console.info(f"[2/3] running backend {i + 1}/{len(names)}: {name}")
            results[name] = BACKENDS[name](handle, images)
            labels[name] = predicted_labels(results[name].probabilities, output_activation(converted.int_graph))[0]
            save_mask_png(labels[name], results[name].probabilities.shape[1], output / f"mask-{name}.png")
        float_labels = None
        if converted.meta["calibration"].get("integer_aware") and "torch" in results:
            from medqk.checkpoint import load_checkpoint
            from medqk.convert.pipeline import torch_probabilities
            from medqk.defaults import default_checkpoint_path

            plain = load_checkpoint(checkpoint if checkpoint is not None else default_checkpoint_path())
            float_labels = predicted_labels(torch_probabilities(plain, images), output_activation(converted.int_graph))[0]
        console.info("[3/3] counting operations and energy")
        activity = act.from_images(converted.int_graph, iter([("demo", images[0])]), 1)
        report = analyze(converted, activity, get_model("float45"), [], "default model" if checkpoint is None else Path(checkpoint).name)
        (output / "energy.json").write_text(json.dumps(report, indent=2))
        loihi_file = model_dir / "loihi2.json"
        loihi = json.loads(loihi_file.read_text()) if loihi_file.is_file() else None
        return cls(model_dir, images[0], mask, results, labels, report, loihi, float_labels)

    def agreement(self) -> dict[str, dict]:
        """Each backend's mask against torch's, and whether integer backends equal the integer interpreter."""
        import numpy as np

        from medqk.convert.pipeline import label_agreement

        reference = self.results.get("torch")
        golden = self.results.get("ir-int")
        rows = {}
        for name, r in self.results.items():
            row = {"seconds": r.seconds}
            if reference is not None:
                float_backend = self.float_labels is not None and name in FLOAT_BACKENDS
                row.update(label_agreement(self.labels[name], self.float_labels if float_backend else self.labels["torch"]))
            if golden is not None and name in ("onnx-int", "lava"):
                row["bit_exact_with_ir_int"] = bool(np.array_equal(r.probabilities, golden.probabilities))
            if self.mask is not None:
                row["dice_vs_ground_truth"] = label_agreement(self.labels[name], self.mask)["dice"]
            rows[name] = row
        return rows

    def summary(self) -> dict:
        from medqk.convert.pipeline import label_agreement

        rows = self.agreement()
        exact = all(r.get("bit_exact_with_ir_int", True) for r in rows.values())
        # float backends must reproduce torch; integer ones differ from it by quantization only
        close = all(r.get("dice", 1.0) >= (DEMO_INT_DICE if name in INTEGER_BACKENDS else DEMO_FLOAT_DICE)
                    for name, r in rows.items())
        t = self.energy_report["totals"]
        baselines = {b["name"]: b["energy_pj"] for b in self.energy_report["baselines"]}
        fixed_point = ({"float_network_vs_torch": label_agreement(self.float_labels, self.labels["torch"])}
                       if self.float_labels is not None else {})
        return {"model_dir": str(self.directory), "backends": rows, "all_agree": exact and close, **fixed_point,
                "energy_pj": {"snn": t["energy_pj"], **baselines}, "loihi2": (self.loihi or {}).get("summary")}

    def format_summary(self) -> str:
        lines = ["backend     time      Dice vs torch   integer output == ir-int"]
        for name, r in self.agreement().items():
            exact = {True: "yes", False: "NO"}.get(r.get("bit_exact_with_ir_int"), "")
            lines.append(f"{name:<10}  {r['seconds']:7.3f} s  {r.get('dice', float('nan')):13.4f}   {exact}")
        summary = self.summary()
        if "float_network_vs_torch" in summary:
            lines.append("(a fine-tuned, integer-aware model: torch runs it as trained, through its fixed-point forward "
                         "pass; ir and onnx are compared with the same weights as a plain float network, which gives "
                         f"Dice {summary['float_network_vs_torch']['dice']:.4f} against torch)")
        e = summary["energy_pj"]
        lines.append("energy per image: " + ", ".join(f"{k} {v / 1e6:.3g} uJ" for k, v in e.items()))
        return "\n".join(lines)


def write_report(run: DemoRun, path: Path) -> Path:
    """One self-contained HTML page: input, masks side by side, energy, firing, Loihi 2 needs."""
    from medqk.energy.html import energy_sections
    from medqk.htmlpage import Section, page, table, tile

    rgb = run.image[::-1].transpose(1, 2, 0)  # the network sees BGR
    tiles = [tile(rgb, "input image")]
    if run.mask is not None:
        tiles.append(tile(run.mask, "ground truth"))
    agreement = run.agreement()
    for name, r in run.results.items():
        a = agreement[name]
        caption = f"<b>{name}</b> {a['seconds']:.2f} s"
        if "dice" in a:
            caption += f"<br>Dice vs torch {a['dice']:.4f}"
        if "bit_exact_with_ir_int" in a:
            ok = a["bit_exact_with_ir_int"]
            caption += f"<br><span class=\"{'ok' if ok else 'bad'}\">{'bit-exact with ir-int' if ok else 'differs from ir-int'}</span>"
        tiles.append(tile(run.labels[name] != 0, caption))
    masks = Section("Predicted masks").add('<div class="grid">' + "".join(tiles) + "</div>")
    sections = [masks, *energy_sections(run.energy_report)]
    if run.loihi:
        s = run.loihi.get("summary", {})
        sections.append(Section("Loihi 2 resources").add(table(["figure", "value"], [[k, v] for k, v in s.items()])))
    html = page("medqk demo", f"model directory <code>{run.directory}</code>", sections)
    path.write_text(html)
    return path


if __name__ == "__main__":
    sys.exit(main())
