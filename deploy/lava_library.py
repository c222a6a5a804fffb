"""Build the Lava library graph of ``lava_graph.lower`` and run one image through it.

``MODEL_SETS``: ``reference`` runs Lava's own fixed-point models for Lava's processes (Conv, Sparse,
DelaySparse, ProdNeuron, GradedVec) and medqk's models for medqk's neurons; ``fast`` swaps in
medqk's fast models for Lava's processes (``lava_fast_models``) through ``Loihi2SimCfg``'s
``exception_proc_model_map``. The graph is the same object either way.
"""
import dataclasses
import time

import numpy as np

from medqk.deploy.lava_graph import LavaGraph, ProcessSpec, lower
from medqk.deploy.lava_layout import from_whc, lava_conv_groups, lava_conv_weight, to_whc, xy
from medqk.deploy.lava_runtime import lava_run, require_lava
from medqk.errors import MedqkError

MODEL_SETS = ("fast", "reference")


def _sparse(matrix) -> "object":
    import scipy.sparse

    return scipy.sparse.csr_matrix(matrix, dtype=np.int32)


def channel_map_weights(spec: ProcessSpec):
    """A per-pixel channel map as the Sparse matrix of flattened (W, H, C) vectors."""
    import scipy.sparse

    return _sparse(scipy.sparse.kron(scipy.sparse.identity(spec.params["pixels"], dtype=np.int64),
                                     scipy.sparse.csr_matrix(spec.params["channel_map"])))


def upsample_weights(spec: ProcessSpec):
    """The tap bytes B_k on every plane and channel: output channel (k, p, c) of a pixel sums
    B_k times input channel (p, c) (``lava_graph.upsample_taps``)."""
    import scipy.sparse

    taps, planes, channels = spec.params["taps"], spec.params["planes"], spec.params["channels"]
    width = planes * channels
    parts = []
    for k, part in enumerate(taps):
        placement = scipy.sparse.csr_matrix((np.ones(width, np.int64), (k * width + np.arange(width), np.arange(width))),
                                            shape=(len(taps) * width, width))
        parts.append(scipy.sparse.kron(part, placement))
    return _sparse(sum(parts))


def _process(spec: ProcessSpec, image_whc: np.ndarray):
    """The Lava process of one spec."""
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
        weights = upsample_weights(spec) if "taps" in p else channel_map_weights(spec)
        return Sparse(weights=weights, num_message_bits=spec.message_bits, name=name)
    if spec.kind == "DelaySparse":
        import scipy.sparse

        n = spec.shape[0]
        delays = scipy.sparse.identity(n, dtype=int, format="csr") * spec.delay
        return DelaySparse(weights=_sparse(scipy.sparse.identity(n)), delays=delays,
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
    return getattr(lava_neurons, spec.kind)(p["in_shape"], spec.shape, spec.valid_step, name, **params)


def _connect(source, target) -> None:
    """``source`` -> ``target``, flattened or reshaped where a Sparse's vectors meet (W, H, C) ports."""
    if tuple(source.shape) != tuple(target.shape):
        source = source.flatten() if len(target.shape) == 1 else source.reshape(tuple(target.shape))
    source.connect(target)


def build(lowered: LavaGraph, image_whc: np.ndarray) -> dict:
    """The processes of ``lowered``, connected; ``image_whc`` is the input (W, H, C)."""
    require_lava()
    procs = {spec.name: _process(spec, image_whc) for spec in lowered.processes}
    for spec in lowered.processes:
        for port, sources in spec.inputs.items():
            for source in sources:
                name, out_port = source.rsplit(".", 1)
                _connect(getattr(procs[name], out_port), getattr(procs[spec.name], port))
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
    """One image through the library graph: integer logits [1, C, H, W], what each neuron sent
    ({process: {spikes, payload_sum}}), the steps and the timings."""

    logits: np.ndarray
    sent: dict
    steps: int
    processes: int
    build_s: float
    run_s: float
    read_s: float


def run_image(graph, x_int: np.ndarray, models: str = "fast", lowered: LavaGraph | None = None) -> LibraryRun:
    """Run one integer image [1, C, H, W] (``io.quantize_input``) through ``graph``'s library graph."""
    x_int = np.asarray(x_int)
    if x_int.ndim != 4 or x_int.shape[0] != 1:
        raise MedqkError(f"the Lava backend runs one image at a time: expected [1, C, H, W], got {x_int.shape}")
    lowered = lowered or lower(graph)
    start = time.perf_counter()
    procs = build(lowered, to_whc(x_int))
    sink = procs[lowered.output]
    ordered = [sink, *(p for name, p in procs.items() if name != lowered.output)]
    run_cfg = run_config(models, ordered)
    wired = time.perf_counter() - start
    with lava_run(ordered, lowered.steps, run_cfg=run_cfg) as session:
        start = time.perf_counter()
        logits = from_whc(sink.read()).astype(np.int64)
        sent = {name: dict(zip(("spikes", "payload_sum"), np.rint(p.sent.get()).astype(np.int64).tolist()))
                for name, p in procs.items() if hasattr(p, "sent")}
        read_s = time.perf_counter() - start
    return LibraryRun(logits, sent, lowered.steps, len(procs), wired + session.build_s, session.run_s, read_s)
