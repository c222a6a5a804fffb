"""Build the Lava library graph of ``lava_graph.lower`` and run one image through it.

``MODEL_SETS``: ``reference`` runs Lava's own fixed-point models for Lava's processes (Conv, Sparse,
DelaySparse, ProdNeuron, GradedVec) and medqk's models for medqk's neurons; ``fast`` swaps in
medqk's fast models for Lava's processes (``lava_fast_models``) through ``Loihi2SimCfg``'s
``exception_proc_model_map``. The graph is the same object either way.

``run_library`` is the ``lava`` backend of ``medqk run`` and ``medqk compare``: one run per
image, with the activity by IR node (the activity file's populations and synapses), by process and
by time step. Lava's own models count nothing, so the sender of every synapse's input counts the
synaptic events its spikes cause there (``synapse_feeds``): a medqk neuron itself, Lava's neurons
(relays, products) and the image source through a ``SpikeProbe`` on their out port (``build``).
"""
import dataclasses
import time

import numpy as np

from medqk.convert.synapses import fan_out as synaptic_fan_out
from medqk.deploy.lava_graph import LAVA, SYNAPSES, LavaGraph, ProcessSpec, lower
from medqk.deploy.lava_layout import from_whc, lava_conv_groups, lava_conv_weight, to_whc, xy
from medqk.deploy.lava_runtime import lava_run, require_lava
from medqk.errors import MedqkError

MODEL_SETS = ("fast", "reference")


def _csr(data: np.ndarray, indices: np.ndarray, row_counts: np.ndarray, shape: tuple):
    """An int32 CSR matrix from its entries in row order and the entries of each row."""
    import scipy.sparse

    indptr = np.concatenate([[0], np.cumsum(row_counts)])
    return scipy.sparse.csr_matrix((data.astype(np.int32), indices, indptr), shape=shape)


def identity_kron(pixels: int, matrix) -> "object":
    """``kron(identity(pixels), matrix)`` (the same small map on every pixel), built in CSR order
    directly: scipy's ``kron`` goes through a sorted COO, seconds for 256 x 256 pixels."""
    import scipy.sparse

    m = scipy.sparse.csr_matrix(matrix)
    m.sort_indices()
    rows, cols = m.shape
    indices = (m.indices[None, :] + cols * np.arange(pixels)[:, None]).ravel()
    return _csr(np.tile(m.data, pixels), indices, np.tile(np.diff(m.indptr), pixels), (pixels * rows, pixels * cols))


def kron_identity(matrix, width: int) -> "object":
    """``kron(matrix, identity(width))``: every entry (r, i) of ``matrix`` on each lane j, at
    ((r, j), (i, j)), built in CSR order directly: rows padded to the longest, laid out (row, lane,
    entry), and the padding dropped."""
    import scipy.sparse

    m = scipy.sparse.csr_matrix(matrix)
    m.sort_indices()
    lengths = np.diff(m.indptr)
    longest = int(lengths.max(initial=0))
    rows, cols = m.shape
    index_type = np.int32 if cols * width < 2**31 else np.int64
    slot = np.arange(longest)
    present = slot[None, :] < lengths[:, None]  # (rows, longest)
    entry = np.where(present, m.indptr[:-1, None] + slot[None, :], 0)
    lanes = np.arange(width, dtype=index_type)[None, :, None]
    keep = np.broadcast_to(present[:, None, :], (rows, width, longest))
    indices = (m.indices[entry].astype(index_type)[:, None, :] * width + lanes)[keep]
    data = np.broadcast_to(m.data[entry][:, None, :], (rows, width, longest))[keep]
    return _csr(data, indices, np.repeat(lengths, width), (rows * width, cols * width))


def channel_map_weights(spec: ProcessSpec):
    """A per-pixel channel map as the Sparse matrix of flattened (W, H, C) vectors."""
    return identity_kron(spec.params["pixels"], spec.params["channel_map"])


def tap_weights(taps: list, planes: int, channels: int):
    """The spatial matrices B_k on every plane and channel: output channel (k, p, c) of a pixel sums
    B_k times input channel (p, c) (``lava_graph.upsample_taps``' bytes, ``window_taps``' offsets):
    ``kron(B, identity(planes * channels))`` with B's rows (pixel, k) interleaving the B_k."""
    import scipy.sparse

    stacked = scipy.sparse.vstack([scipy.sparse.csr_matrix(t) for t in taps], format="csr")
    pixels = taps[0].shape[0]
    interleaved = (np.arange(len(taps))[None, :] * pixels + np.arange(pixels)[:, None]).ravel()
    return kron_identity(stacked[interleaved], planes * channels)


def sparse_weights(spec: ProcessSpec):
    """The weight matrix of a Sparse or DelaySparse spec (a DelaySparse is an identity)."""
    import scipy.sparse

    p = spec.params
    if spec.kind == "DelaySparse":
        return scipy.sparse.identity(spec.shape[0], dtype=np.int32, format="csr")
    if "taps" in p:
        return tap_weights(p["taps"], p["planes"], p["channels"])
    return tap_weights(p["window"], 1, p["channels"]) if "window" in p else channel_map_weights(spec)


def synapse_fan_out(spec: ProcessSpec, graph, source_shape: tuple) -> np.ndarray:
    """How many connections each element of a synapse's (W, H, C) input has in it. A convolution or
    upsampling counts its IR op's connections (``synapses.fan_out``, as the energy analyzer does;
    every digit plane of an element has that element's); a channel map or delay its weight matrix's."""
    if spec.kind == "Conv" or "taps" in spec.params:
        node = graph[spec.node]
        per_channel, fh, fw = synaptic_fan_out(node.op, tuple(graph[node.inputs[0]].tensor.shape))
        return np.broadcast_to((per_channel * np.outer(fw, fh))[:, :, None], source_shape)
    return np.diff(sparse_weights(spec).tocsc().indptr).reshape(source_shape)


def synapse_feeds(lowered: LavaGraph, graph) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Sender -> [(synapse process it feeds, fan-out of its output there)]: the sender's counters
    (``lava_neurons.GatedNeuron``, or its ``SpikeProbe``) count the synaptic events of its spikes."""
    specs = {spec.name: spec for spec in lowered.processes}
    feeds: dict[str, list] = {}
    for spec in lowered.processes:
        if spec.kind in SYNAPSES:
            (port,) = spec.inputs["s_in"]  # a synapse reads one neuron's output (lava_graph.neuron_output)
            source = specs[port.rsplit(".", 1)[0]]
            feeds.setdefault(source.name, []).append((spec.name, synapse_fan_out(spec, graph, source.shape)))
    return feeds


def probed(spec: ProcessSpec) -> bool:
    """Whether a process sends without counting: Lava's own neurons and the image source."""
    return spec.kind == "ImageSource" or (spec.is_neuron and spec.library == LAVA)


def probe_name(name: str) -> str:
    return f"{name}/probe"


def _stacked(feeds: list) -> np.ndarray | None:
    """The fan-out Var of a counting process: one (W, H, C) row per synapse it feeds."""
    return np.stack([f for _, f in feeds]) if feeds else None


def _process(spec: ProcessSpec, image_whc: np.ndarray, feeds: list):
    """The Lava process of one spec; ``feeds``: the synapses a medqk neuron feeds (``synapse_feeds``)."""
    from lava.proc.conv.process import Conv
    from lava.proc.graded.process import GradedVec
    from lava.proc.prodneuron.process import ProdNeuron
    from lava.proc.sparse.process import DelaySparse, Sparse

    from medqk.deploy import lava_neurons

    p, name = spec.params, spec.name
    if spec.kind == "Conv":
        return Conv(weight=lava_conv_weight(p["weight"], p["planes"], p["groups"]), input_shape=tuple(p["in_shape"]),
                    stride=xy(p["stride"]), padding=xy(p["padding"]), groups=lava_conv_groups(p["groups"], p["planes"]),
                    num_message_bits=spec.message_bits, name=name)
    if spec.kind == "Sparse":
        return Sparse(weights=sparse_weights(spec), num_message_bits=spec.message_bits, name=name)
    if spec.kind == "DelaySparse":
        import scipy.sparse

        delays = scipy.sparse.identity(spec.shape[0], dtype=int, format="csr") * spec.delay
        return DelaySparse(weights=sparse_weights(spec), delays=delays,
                           max_delay=spec.delay, num_message_bits=spec.message_bits, name=name)
    if spec.kind in ("ProdNeuron", "GradedVec"):  # neither takes a name
        proc = (ProdNeuron(shape=spec.shape, vth=p["vth"], exp=p["exp"]) if spec.kind == "ProdNeuron"
                else GradedVec(shape=spec.shape, vth=p["vth"]))
        proc.name = name
        return proc
    if spec.kind == "ImageSource":
        return lava_neurons.ImageSource(image_whc, name=name)
    if spec.kind == "LogitSink":
        return lava_neurons.LogitSink(spec.shape, spec.valid_step, name=name)
    params = {k: v for k, v in p.items() if k != "in_shape"}
    return getattr(lava_neurons, spec.kind)(p["in_shape"], spec.shape, spec.valid_step, name, fan_out=_stacked(feeds), **params)


def _connect(source, target) -> None:
    """``source`` -> ``target``, flattened or reshaped where a Sparse's vectors meet (W, H, C) ports."""
    if tuple(source.shape) != tuple(target.shape):
        source = source.flatten() if len(target.shape) == 1 else source.reshape(tuple(target.shape))
    source.connect(target)


def build(lowered: LavaGraph, image_whc: np.ndarray, feeds: dict) -> dict:
    """The processes of ``lowered``, connected, and a ``SpikeProbe`` (``probe_name``) on the out port
    of every ``probed`` process; ``image_whc`` is the input (W, H, C), ``feeds``
    ``synapse_feeds(lowered, graph)``."""
    from medqk.deploy.lava_neurons import SpikeProbe

    require_lava()
    procs = {spec.name: _process(spec, image_whc, feeds.get(spec.name, [])) for spec in lowered.processes}
    for spec in lowered.processes:
        for port, sources in spec.inputs.items():
            for source in sources:
                name, out_port = source.rsplit(".", 1)
                _connect(getattr(procs[name], out_port), getattr(procs[spec.name], port))
        if probed(spec):
            probe = SpikeProbe(spec.shape, probe_name(spec.name), _stacked(feeds.get(spec.name, [])))
            procs[spec.name].s_out.connect(probe.a_in)
            procs[probe.name] = probe
    return procs


def run_config(models: str, processes):
    """Loihi2SimCfg(select_tag="fixed_pt") with medqk's neuron models, and for ``fast`` medqk's
    models of Lava's library processes too. Lava's compiler looks its exception map up by process
    instance (its model selection by class), so every process is named; for ``reference`` Lava finds
    its own models beside its process classes."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    from medqk.deploy.lava_neuron_models import NEURON_MODELS

    if models not in MODEL_SETS:
        raise MedqkError(f"unknown Lava model set {models!r}; choose from {', '.join(MODEL_SETS)}")
    chosen = dict(NEURON_MODELS)
    if models == "fast":
        from medqk.deploy.lava_fast_models import FAST_MODELS

        chosen.update(FAST_MODELS)
    return Loihi2SimCfg(select_tag="fixed_pt",
                        exception_proc_model_map={p: chosen[type(p)] for p in processes if type(p) in chosen})


@dataclasses.dataclass
class LibraryRun:
    """One image through the library graph: integer logits [1, C, H, W], what each process that sends
    spikes sent ({process: {spikes, payload_sum}}), what arrived at each synapse ({process: {events,
    acs}}), the steps, the processes run (``SpikeProbe``s included) and the timings."""

    logits: np.ndarray
    sent: dict
    synaptic: dict
    steps: int
    processes: int
    build_s: float
    run_s: float
    read_s: float


def _counts(var, names) -> np.ndarray:
    """A counter Var read back (Lava returns float64, exact for these counts)."""
    return np.rint(var.get()).astype(np.int64).reshape(-1, len(names))


def run_image(graph, x_int: np.ndarray, models: str = "fast", lowered: LavaGraph | None = None,
              progress=None) -> LibraryRun:
    """Run one integer image [1, C, H, W] (``io.quantize_input``) through ``graph``'s library graph;
    ``progress(done, total)`` is called as the steps run."""
    from medqk.deploy.lava_neurons import SENT, SYNAPTIC

    x_int = np.asarray(x_int)
    if x_int.ndim != 4 or x_int.shape[0] != 1:
        raise MedqkError(f"the Lava backend runs one image at a time: expected [1, C, H, W], got {x_int.shape}")
    lowered = lowered or lower(graph)
    start = time.perf_counter()
    feeds = synapse_feeds(lowered, graph)
    procs = build(lowered, to_whc(x_int), feeds)
    sink = procs[lowered.output]
    ordered = [sink, *(p for name, p in procs.items() if name != lowered.output)]
    run_cfg = run_config(models, ordered)
    wired = time.perf_counter() - start
    with lava_run(ordered, lowered.steps, run_cfg=run_cfg, progress=progress,
                  chunk_steps=max(1, lowered.steps // 20)) as session:
        start = time.perf_counter()
        logits = from_whc(sink.read()).astype(np.int64)
        counters = {spec.name: procs.get(probe_name(spec.name), procs[spec.name]) for spec in lowered.processes}
        sent = {name: dict(zip(SENT, _counts(p.sent, SENT)[0].tolist())) for name, p in counters.items() if hasattr(p, "sent")}
        synaptic = {synapse: dict(zip(SYNAPTIC, row.tolist()))
                    for name, targets in feeds.items()
                    for (synapse, _), row in zip(targets, _counts(counters[name].synaptic, SYNAPTIC))}
        read_s = time.perf_counter() - start
    return LibraryRun(logits, sent, synaptic, lowered.steps, len(procs), wired + session.build_s, session.run_s, read_s)


def _total(runs: list[LibraryRun], field: str, name: str, key: str) -> int | None:
    """A counter summed over the runs, None where the process does not count it."""
    values = [getattr(run, field).get(name) for run in runs]
    return None if values[0] is None else sum(v[key] for v in values)


def process_activity(lowered: LavaGraph, runs: list[LibraryRun]) -> dict:
    """Per process, summed over the runs (images): spikes and payload it sent, synaptic events and
    accumulates arriving at a synapse, and neuron updates: every neuron of a neuron process at every
    step, as a Loihi core updates all its neurons each time step (a medqk neuron computes only at its
    valid step on the CPU; on the chip its program would still run every step). None: a count the
    process has no use for (a synapse sends no spikes, a neuron receives no synaptic events)."""
    table = {}
    for spec in lowered.processes:
        table[spec.name] = {
            "class": spec.cls, "node": spec.node, "valid_step": spec.valid_step,
            "spikes": _total(runs, "sent", spec.name, "spikes"), "payload_sum": _total(runs, "sent", spec.name, "payload_sum"),
            "synaptic_events": _total(runs, "synaptic", spec.name, "events"), "acs": _total(runs, "synaptic", spec.name, "acs"),
            "neuron_updates": spec.size * lowered.steps * len(runs) if spec.is_neuron else 0}
    return table


def step_activity(lowered: LavaGraph, processes: dict, images: int) -> list[dict]:
    """``process_activity`` by time step: a process sends at its valid step; a synapse's events
    happen when its input arrives, at its valid step minus one and its delay; every neuron updates
    at every step."""
    updates = sum(spec.size for spec in lowered.processes if spec.is_neuron) * images
    steps = [{"step": t, "spikes": 0, "payload_sum": 0, "synaptic_events": 0, "neuron_updates": updates}
             for t in range(1, lowered.steps + 1)]
    for spec in lowered.processes:
        counts = processes[spec.name]
        arrival = spec.valid_step - 1 - spec.delay if spec.kind in SYNAPSES else spec.valid_step
        for key, step in (("spikes", spec.valid_step), ("payload_sum", spec.valid_step), ("synaptic_events", arrival)):
            steps[step - 1][key] += counts[key] or 0
    return steps


def node_activity(graph, lowered: LavaGraph, processes: dict) -> dict:
    """The counters of ``medqk run --activity`` by IR node: NISF populations {nonzero, spike_sum},
    synaptic nodes {acs, events} (their Conv or tap Sparse)."""
    activity = {}
    for spec in lowered.processes:
        counts = processes[spec.name]
        if spec.kind == "NISFNeuron":
            activity[spec.node] = {"nonzero": counts["spikes"], "spike_sum": counts["payload_sum"]}
        elif spec.kind == "Conv" or "taps" in spec.params:
            activity[spec.node] = {"acs": counts["acs"], "events": counts["synaptic_events"]}
    return activity


def step_bar(desc: str):
    """A progress bar over a run's steps, and the ``progress(done, total)`` callback that drives it."""
    from medqk import console

    bar = console.progress(range(0), desc=desc, unit="step")  # the total is known once the graph is built

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return bar, update


def run_images(backend: str, x_int: np.ndarray, run_one) -> tuple[list, np.ndarray, dict]:
    """``run_one(image [1, C, H, W], progress)`` for each image under a step bar: the runs, their
    logits concatenated, and the build, run and read seconds summed over the images."""
    runs = []
    for i in range(len(x_int)):
        bar, update = step_bar(f"{backend} image {i + 1}/{len(x_int)}")
        try:
            runs.append(run_one(x_int[i:i + 1], update))
        finally:
            bar.close()  # also on an error or interrupt: its message then starts a clean line
    logits = np.concatenate([run.logits for run in runs])
    seconds = {part: sum(getattr(r, f"{part}_s") for r in runs) for part in ("build", "run", "read")}
    return runs, logits, seconds


def run_library(handle, images: np.ndarray, models: str = "fast"):
    """Backend ``lava``: ``(backends.ModelHandle, float32 images [N, C, H, W]) -> RunResult``,
    one run of the library graph per image with the ``models`` set; ``info`` holds steps, timings
    and the activity summed over the images, by IR node, process and step."""
    from medqk.convert.io import quantize_input
    from medqk.convert.neurons import output_activation, output_scale, output_values
    from medqk.deploy.backends import RunResult

    graph = handle.converted.int_graph
    lowered = lower(graph)
    x_int = quantize_input(images, graph.input.tensor.frac_bits)
    runs, logits, seconds = run_images("lava", x_int,
                                       lambda x, update: run_image(graph, x, models, lowered, progress=update))
    processes = process_activity(lowered, runs)
    return RunResult(output_values(output_activation(graph), logits, output_scale(graph)), sum(seconds.values()), {
        "models": models, "processes": len(lowered.processes),
        "lava_processes": sum(spec.library == LAVA for spec in lowered.processes), "steps": lowered.steps,
        "images": len(runs), **{f"{part}_seconds": value for part, value in seconds.items()},
        "activity": node_activity(graph, lowered, processes), "per_step": step_activity(lowered, processes, len(runs)),
        "process_activity": processes,
    })


def describe(info: dict) -> str:
    """The summary line of a ``lava`` run."""
    return (f"lava ({info['models']} models): {info['processes']} processes ({info['lava_processes']} of them "
            f"Lava's library processes), {info['steps']} time steps; build {info['build_seconds']:.2f} s, "
            f"run {info['run_seconds']:.2f} s, read {info['read_seconds']:.2f} s")


#: merged into ``deploy.backends.BACKENDS``
BACKENDS = {"lava": run_library}
