"""SIGINT and SIGTERM while a Lava runtime exists: held back while it starts and stops.

``Interrupts`` replaces the SIGINT and SIGTERM handlers while a Lava runtime exists. Inside
``deferred()`` (compiling and starting the actors, tearing them down) a signal is only recorded:
raised there, a KeyboardInterrupt could land between Lava building an actor and the runtime
knowing of it, and the actor would be left blocked. ``check()``, called at safe points, then hands
the signal to the handler that was there before (KeyboardInterrupt, the CLI's SIGTERM handler, or
the default action). A second signal while one is pending is handed on at once, so a stuck
start-up can still be interrupted. (Lava's actors are threads of this Python, ``lava_threads``:
there is no child process to signal or to outlive the run.)
"""
import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
