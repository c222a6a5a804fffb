"""Build a graph of medqk's Lava processes, run it, and always stop Lava's runtime.

``build_network`` wires host inputs, fused layers (``lava_plan.LayerPlan``) and outputs by value
name and gives each process its fire step (``lava_plan.fire_steps``); ``run_network`` runs it and
reads back only the outputs and the small per-layer counters. ``lava_run`` is the context manager
underneath: whatever happens (an error in a process model, an exception in the caller's block,
Ctrl-C or SIGTERM, also while the children start), no Lava child process outlives it, and if the
host itself is killed, its children die with it (``lava_signals``).

Lava is imported only inside these functions: ``import medqk.deploy.lava_runtime`` stays cheap and
works without Lava; using it without Lava raises a ``MedqkError`` saying how to install it.
"""
import contextlib
import dataclasses
import multiprocessing
import sys
import time
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from medqk.deploy.lava_plan import COUNTERS, LayerPlan, fire_steps
from medqk.deploy.lava_signals import Interrupts, children_die_with_parent
from medqk.errors import MedqkError

#: seconds a Lava child process gets to exit after SIGTERM before it is killed
_TERMINATE_TIMEOUT = 5.0
#: the Lava module that sets the multiprocessing start method when imported
_LAVA_MULTIPROCESSING = "lava.magma.runtime.message_infrastructure.multiprocessing"

Progress = Callable[[int, int], None]


def _free_start_method() -> None:
    """Let Lava's import set the 'fork' start method again.

    Importing Lava calls ``multiprocessing.set_start_method('fork')`` without ``force``, which fails
    once anything in this Python has fixed the start method (a tqdm progress bar's lock does).
    """
    if _LAVA_MULTIPROCESSING in sys.modules:
        return
    method = multiprocessing.get_start_method(allow_none=True)
    if method not in (None, "fork"):
        raise MedqkError(f"Lava runs its processes with the 'fork' start method; this Python uses {method!r}")
    multiprocessing.set_start_method(None, force=True)


def require_lava() -> None:
    """Import Lava's core, or raise a MedqkError that says how to install it."""
    _free_start_method()
    try:
        import lava.magma.core.run_configs  # noqa: F401
    except Exception as error:  # ImportError, or the ValueError of unpatched lava-nc on Python 3.11
        raise MedqkError(f"Lava (lava-nc) is not importable ({type(error).__name__}: {error}); install it with "
                         "`bash install.sh` from the medqk repository (it installs lava-nc 0.10 and its Python 3.11 fix)"
                         ) from None


def run_config(processes: Sequence):
    """Loihi2SimCfg(select_tag="fixed_pt") with each process's model named up front.

    Without the map Lava finds models by executing every module of this folder once per process.
    """
    from lava.magma.core.run_configs import Loihi2SimCfg

    from medqk.deploy.lava_models import MODELS

    return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={p: MODELS[type(p)] for p in processes})


# -- running ----------------------------------------------------------------------------------

def _child_errors(runtime) -> str:
    """The exceptions Lava's child processes reported, one line each."""
    actors = getattr(getattr(runtime, "_messaging_infrastructure", None), "actors", [])
    return "; ".join(f"{type(e).__name__}: {e}" for e, _ in (a.exception for a in actors if a.exception))


def _terminate(runtime) -> None:
    """Stop a runtime that cannot be stopped politely: Lava's ``stop()`` waits for every child's reply,
    which a crashed or interrupted child never sends. Terminates the children, then frees the rest."""
    infrastructure = getattr(runtime, "_messaging_infrastructure", None)
    # Lava's own error handling may have joined (and closed) some of them already.
    actors = [a for a in getattr(infrastructure, "actors", []) if not a._is_done]
    for actor in actors:
        actor.terminate()
    for actor in actors:
        multiprocessing.Process.join(actor, _TERMINATE_TIMEOUT)  # Lava's join() takes no timeout
        if actor.is_alive():
            actor.kill()
            multiprocessing.Process.join(actor)
    if infrastructure is not None and infrastructure.smm is not None:
        infrastructure.smm.shutdown()
    if runtime._watchdog_manager is not None:
        runtime._watchdog_manager.stop()
    runtime._is_started = runtime._is_running = False  # else Runtime.__del__ calls stop() and hangs


@dataclasses.dataclass
class LavaSession:
    """A started Lava runtime and how long compiling/starting it and running it took."""

    runtime: object
    build_s: float
    run_s: float


@contextlib.contextmanager
def lava_run(processes: Sequence, num_steps: int, run_cfg=None, progress: Progress | None = None,
             chunk_steps: int | None = None) -> Iterator[LavaSession]:
    """Compile and run the Lava graph of ``processes`` for ``num_steps`` steps.

    Read Vars and sinks inside the ``with`` block: the runtime is stopped on leaving it, also on an
    exception or KeyboardInterrupt. ``progress(done, total)`` is called after every ``chunk_steps``.
    SIGINT and SIGTERM that arrive while the children are forked take effect once they all are.
    """
    require_lava()
    from lava.magma.core.run_conditions import RunSteps

    root = processes[0]
    clean = False
    with Interrupts() as interrupts:
        try:
            start = time.perf_counter()
            with interrupts.deferred(), children_die_with_parent():
                root.create_runtime(run_cfg=run_cfg or run_config(processes))
            interrupts.check()
            built = time.perf_counter()
            # Lava compiles only what is connected to the root; anything else would silently not run.
            unreached = [p.name for p in processes if p.runtime is not root.runtime]
            if unreached:
                raise MedqkError(f"the Lava graph is not connected: {unreached} are not connected to {root.name}")
            chunk = chunk_steps or num_steps
            for done in range(0, num_steps, chunk):
                try:
                    root.run(condition=RunSteps(num_steps=min(chunk, num_steps - done)))
                except RuntimeError as error:
                    details = _child_errors(root.runtime)
                    raise MedqkError(f"the Lava run failed at steps {done + 1}..{min(done + chunk, num_steps)}: "
                                     f"{details or error}") from error
                interrupts.check()
                if progress is not None:
                    progress(min(done + chunk, num_steps), num_steps)
            yield LavaSession(root.runtime, built - start, time.perf_counter() - built)
            interrupts.check()
            clean = True
        finally:
            if root.runtime is not None:
                _shut_down(root.runtime, clean, interrupts)
        interrupts.check()  # a signal whose exception was swallowed while stopping


def _shut_down(runtime, clean: bool, interrupts: Interrupts) -> None:
    """Stop ``runtime`` politely after a good run; else, or if that is interrupted, terminate its children."""
    if clean:
        try:
            runtime.stop()
            return
        except BaseException:
            with interrupts.deferred():
                _terminate(runtime)
            raise
    with interrupts.deferred():
        _terminate(runtime)


# -- networks ---------------------------------------------------------------------------------

@dataclasses.dataclass
class LavaNetwork:
    """Processes wired by value name; ``steps`` is the run length the timing rule gives."""

    sources: dict
    layers: list
    sinks: dict
    steps: int

    @property
    def processes(self) -> list:
        return [*self.sources.values(), *self.layers, *self.sinks.values()]


@dataclasses.dataclass
class NetworkResult:
    outputs: dict[str, np.ndarray]
    #: node name -> counters: NISF populations {nonzero, spike_sum}, synaptic nodes {acs, events}
    activity: dict[str, dict[str, int]]
    #: layer name -> seconds its fire step took in its process model
    busy_s: dict[str, float]
    steps: int
    build_s: float
    run_s: float
    read_s: float


def build_network(inputs: Mapping[str, np.ndarray], plans: Sequence[LayerPlan], outputs: Sequence[str]) -> LavaNetwork:
    """Processes for ``inputs`` (name -> int array [1, C, H, W]), ``plans`` and ``outputs`` (value names),
    connected port to port, each firing at its step of the timing rule."""
    require_lava()
    from medqk.deploy.lava_processes import FusedLayer, HostSource, OutputSink

    producer: dict[str, str] = {}  # value -> process key
    for key, values in [*((f"input {n}", [n]) for n in inputs), *((f"layer {p.name}", p.outputs) for p in plans)]:
        for value in values:
            if value in producer:
                raise MedqkError(f"value {value!r} is produced by both {producer[value]} and {key}")
            producer[value] = key

    def producers_of(values, consumer):
        missing = [v for v in values if v not in producer]
        if missing:
            raise MedqkError(f"{consumer} reads {missing}, which no input or layer produces")
        return [producer[v] for v in values]

    deps = {f"input {n}": [] for n in inputs}
    deps.update({f"layer {p.name}": producers_of([v for v, _ in p.inputs], f"layer {p.name}") for p in plans})
    deps.update({f"output {o}": producers_of([o], f"output {o}") for o in outputs})
    if len(deps) != len(inputs) + len(plans) + len(outputs):
        raise MedqkError("layer names must be unique and differ from input and output names")
    step = fire_steps(deps)

    sources = {n: HostSource(np.asarray(a), name=n) for n, a in inputs.items()}
    layers = [FusedLayer(p, step[f"layer {p.name}"]) for p in plans]
    by_key = {**{f"input {n}": s for n, s in sources.items()}, **{f"layer {l.name}": l for l in layers}}

    def out_port(value):
        proc = by_key[producer[value]]
        return proc.s_out if isinstance(proc, HostSource) else proc.output_port(value)

    for layer in layers:
        for value, _ in layer.plan.inputs:
            out_port(value).connect(layer.input_port(value))
    sinks = {}
    for o in outputs:
        port = out_port(o)
        sinks[o] = OutputSink(port.shape[1:], step[f"output {o}"], name=o)
        port.connect(sinks[o].a_in)
    return LavaNetwork(sources, layers, sinks, steps=max(step.values()))


def layer_activity(layer) -> dict[str, dict[str, int]]:
    """A fused layer's ``counters`` Var as {node: {counter: value}}, NISF and synaptic nodes only
    (one Var read: Lava returns float64, exact for these counts)."""
    table = np.rint(layer.counters.get()).astype(np.int64).reshape(len(layer.plan.nodes), len(COUNTERS))
    activity = {}
    for node, row in zip(layer.plan.nodes, table):
        names = ("nonzero", "spike_sum") if node.op.type == "nisf" else ("acs", "events") if node.op.synaptic else ()
        if names:
            activity[node.name] = {name: int(row[COUNTERS.index(name)]) for name in names}
    return activity


def run_network(network: LavaNetwork, progress: Progress | None = None, chunk_steps: int | None = None) -> NetworkResult:
    """Run ``network`` for its ``steps``; read the outputs, the activity counters and the busy times."""
    with lava_run(network.processes, network.steps, progress=progress, chunk_steps=chunk_steps) as session:
        start = time.perf_counter()
        outputs = {name: sink.read() for name, sink in network.sinks.items()}
        activity = {k: v for layer in network.layers for k, v in layer_activity(layer).items()}
        busy = {layer.name: float(layer.busy_ns.get()[0]) * 1e-9 for layer in network.layers}
        read_s = time.perf_counter() - start
    return NetworkResult(outputs, activity, busy, network.steps, session.build_s, session.run_s, read_s)
