"""Compile, run and always stop a Lava graph; a run never outlives its ``with`` block.

``lava_run`` compiles the graph with Lava's compiler and runs it on Lava's runtime, whose actors
(process models, runtime service) are threads of this Python (``lava_threads``), not forked OS
processes: whatever happens (an error in a process model, an exception in the caller's block,
Ctrl-C or SIGTERM, also while the graph starts), every actor has ended when it returns, and there
is no child process and no shared memory to leave behind.

Lava is imported only inside these functions: ``import medqk.deploy.lava_runtime`` stays cheap and
works without Lava; using it without Lava raises a ``MedqkError`` saying how to install it.
"""
import contextlib
import dataclasses
import multiprocessing
import sys
import time
from typing import Callable, Iterator, Sequence

from medqk.deploy.lava_signals import Interrupts
from medqk.errors import MedqkError

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
        raise MedqkError(f"importing Lava sets the 'fork' start method; this Python already uses {method!r}")
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


# -- running ----------------------------------------------------------------------------------

def _actor_errors(runtime) -> str:
    """The exceptions Lava's actors (process models) raised, one line each."""
    actors = getattr(getattr(runtime, "_messaging_infrastructure", None), "actors", [])
    return "; ".join(f"{type(e).__name__}: {e}" for e, _ in (a.exception for a in actors if a.exception))


@dataclasses.dataclass
class LavaSession:
    """A started Lava runtime and how long compiling/starting it and running it took."""

    runtime: object
    build_s: float
    run_s: float


@contextlib.contextmanager
def lava_run(processes: Sequence, num_steps: int, run_cfg, progress: Progress | None = None,
             chunk_steps: int | None = None) -> Iterator[LavaSession]:
    """Compile the Lava graph of ``processes`` (``processes[0]`` its root) with ``run_cfg`` and run
    it for ``num_steps`` steps.

    Read Vars and sinks inside the ``with`` block: the runtime is stopped on leaving it, also on an
    exception or KeyboardInterrupt. ``progress(done, total)`` is called after every ``chunk_steps``.
    SIGINT and SIGTERM that arrive while the graph starts take effect once it has.
    """
    require_lava()
    from lava.magma.core.run_conditions import RunSteps

    from medqk.deploy import lava_threads

    root = processes[0]
    clean = False
    with Interrupts() as interrupts:
        try:
            start = time.perf_counter()
            with interrupts.deferred():
                lava_threads.start(root, run_cfg)
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
                    details = _actor_errors(root.runtime)
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
            lava_threads.release_memory()
        interrupts.check()  # a signal whose exception was swallowed while stopping


def _shut_down(runtime, clean: bool, interrupts: Interrupts) -> None:
    """Stop ``runtime`` politely after a good run; else, or if that is interrupted, close its channels
    so that every actor ends (``lava_threads.close``)."""
    from medqk.deploy import lava_threads

    if clean:
        try:
            runtime.stop()
            return
        except BaseException:
            with interrupts.deferred():
                lava_threads.close(runtime)
            raise
    with interrupts.deferred():
        lava_threads.close(runtime)
