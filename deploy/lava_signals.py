"""Signals around Lava's child processes: children die with their parent, and SIGINT/SIGTERM wait
until every child is forked.

``children_die_with_parent()`` makes every process the calling thread forks meanwhile (Lava's ~60
process models, its runtime service and its shared-memory server) receive SIGKILL when the parent
dies, however it dies (Linux's parent-death signal, ``prctl(PR_SET_PDEATHSIG)``). Once they are
gone, multiprocessing's resource tracker, which the parent started before forking them and which
is no child of theirs, sees its last client go and unlinks Lava's /dev/shm segments (each was
registered with it when created). The children also ignore SIGINT: a Ctrl-C in a terminal reaches
the whole process group, and the parent, not 60 tracebacks, ends the run.

``Interrupts`` replaces the SIGINT and SIGTERM handlers while a Lava runtime exists. Inside
``deferred()`` (forking the children, tearing them down) a signal is only recorded: raised there,
a KeyboardInterrupt can land inside ``os.fork``'s hooks, where Python ignores it ("Exception
ignored") with logging's lock held, and the run deadlocks or finishes as if nothing happened.
``check()``, called at safe points, then hands the signal to the handler that was there before
(KeyboardInterrupt, the CLI's SIGTERM handler, or the default action). A second signal while one
is pending is handed on at once, so a stuck start-up can still be interrupted.
"""
import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

#: prctl option that sets the signal a process receives when its parent thread exits (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: thread ident -> pid of its process, for threads whose forks get the parent-death signal; a forked
#: child has one thread, with the ident of the thread that forked it
_armed_threads: dict[int, int] = {}
_libc = None  # loaded in the parent: a forked child should not need to load a library


def _after_fork_in_child() -> None:
    parent = _armed_threads.get(threading.get_ident())
    if parent is None:
        return
    _armed_threads.clear()  # the child's own forks are its business
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops children with SIGTERM


@contextlib.contextmanager
def children_die_with_parent() -> Iterator[None]:
    """Give every process this thread forks inside the block a parent-death SIGKILL (Linux only:
    elsewhere nothing changes) and make it ignore SIGINT."""
    global _libc
    if not sys.platform.startswith("linux"):
        yield
        return
    if _libc is None:
        _libc = ctypes.CDLL(None)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    thread = threading.get_ident()
    _armed_threads[thread] = os.getpid()
    try:
        yield
    finally:
        _armed_threads.pop(thread, None)


class Interrupts:
    """SIGINT and SIGTERM while a Lava runtime exists: held back inside ``deferred()``, acted on by
    the previous handler at once outside it or at the next ``check()``.

    A signal whose exception was swallowed (Python ignores exceptions in finalizers and fork hooks)
    stays pending, so the next ``check()`` acts on it again. Only the main thread can set signal
    handlers; in any other thread this does nothing.
    """

    def __init__(self):
        self.received: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                previous = signal.getsignal(signum)
                if previous not in (signal.SIG_IGN, None):  # None: set outside Python; leave it alone
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Only record signals inside the block (call ``check()`` after it)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def check(self) -> None:
        """A safe point: hand a pending signal to its previous handler."""
        if self.received is not None:
            self._hand_on(self.received, None)

    def _handle(self, signum, frame) -> None:
        pending = self.received is not None
        self.received = signum
        if not self._deferring or pending:
            self._hand_on(signum, frame)

    def _hand_on(self, signum: int, frame) -> None:
        previous = self._previous[signum]
        if previous == signal.SIG_DFL:  # the default action ends the process; its children follow it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        else:
            previous(signum, frame)  # raises KeyboardInterrupt, or whatever the program chose
        self.received = None  # the handler returned: the program carries on
