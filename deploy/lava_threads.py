"""Lava's runtime with its actors as threads of this Python, its channels in this Python's memory.

Lava's runtime builds every process model and runtime service as an *actor* of its message
infrastructure (``MessageInfrastructureInterface``), and every port-to-port connection as a
``Channel`` of that infrastructure's ``channel_class``. lava-nc 0.10's only implementation,
``MultiProcessing``, forks one OS process per actor and puts channels in shared memory, with a
listener thread per channel end. For a graph of hundreds of processes that costs 0.2-0.6 s and
25-30 MB per process to start, and a copy into and out of shared memory for every message.

``ThreadedActors`` implements the same interface with one daemon thread per actor and
``LocalChannel``s: a bounded queue between two threads with Lava's CSP port interface (``send``
blocking while the channel is full, ``recv`` while it is empty, ``probe``, ``peek``, and the
``observer`` that Lava's ``CspSelector`` waits on). A message is copied once, on ``send``; an array its sender
has made read-only (``frozen``) is immutable and travels by reference. Process models, ports,
runtime services and ``LoihiProtocol``'s phases are Lava's, unchanged; only where the actors run
and how a message crosses changes. The compute of the models (numpy, scipy, torch) releases the
GIL, so both cores are used.

``start(root, run_cfg)`` compiles the graph connected to ``root`` with Lava's compiler and starts
it, as ``Process.create_runtime`` does. ``close(runtime)`` ends a runtime that cannot be stopped
politely (a failed or interrupted run): every channel is closed, so every actor blocked on one
wakes with ``ChannelClosed`` and its thread ends. No OS process is ever started.
"""
from __future__ import annotations

import queue
import sys
import threading
import traceback

import numpy as np

#: seconds ``ThreadedActors.stop`` and ``close`` wait for each actor's thread to end
JOIN_TIMEOUT = 30.0


class ChannelClosed(Exception):
    """Raised in an actor blocked on a channel that ``close`` has closed."""


def frozen(array: np.ndarray) -> np.ndarray:
    """``array`` made read-only, so that a ``LocalChannel`` passes it on without copying it (its
    sender promises not to change it again; a receiver that tried would get numpy's error)."""
    array.flags.writeable = False
    return array


class _Pipe:
    """The queue shared by the two ends of a ``LocalChannel``: C-level ``SimpleQueue`` operations, so
    that the hundreds of messages of each time step cost little of the GIL."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        self.messages = queue.SimpleQueue()
        self.space = threading.Semaphore(size)  # a send blocks while ``size`` messages wait
        self.receiver = None  # the recv end, whose observer a send wakes
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.space.release(self.size + 1)  # wakes a send blocked on a full channel
        self.messages.put(_CLOSED)  # wakes a recv blocked on the queue
        if self.receiver is not None and self.receiver.observer is not None:
            self.receiver.observer()


#: what a closed channel yields to a recv
_CLOSED = object()


def _port_base(kind: str):
    """Lava's own port classes: its process builders sort ports by ``isinstance`` against them."""
    from lava.magma.compiler.channels.pypychannel import CspRecvPort, CspSendPort

    return CspSendPort if kind == "send" else CspRecvPort


def _local_channel_class():
    from lava.magma.compiler.channels.interfaces import Channel

    class _End:
        def __init__(self, name, shape, dtype, pipe: _Pipe):
            self._name, self._shape, self._dtype, self._pipe = name, tuple(shape), np.dtype(dtype), pipe
            self.observer = None

        name = property(lambda self: self._name)
        d_type = property(lambda self: self._dtype)
        shape = property(lambda self: self._shape)
        size = property(lambda self: self._pipe.size)

        def start(self) -> None:
            """Nothing to start: no listener thread."""

        def join(self) -> None:
            """Lava's stop joins every port; the queue is freed with the channel."""

    class LocalSendPort(_End, _port_base("send")):
        def probe(self) -> bool:
            return self._pipe.messages.qsize() < self._pipe.size

        def send(self, data) -> None:
            """Queue ``data`` (copied unless read-only); block while the channel is full (Lava streams
            a Var to the host element by element through a channel of a few messages)."""
            pipe = self._pipe
            data = np.asarray(data)
            if data.shape != self._shape:
                raise AssertionError(f"{data.shape=} {self._shape=} Mismatch")  # Lava's own message
            if data.flags.writeable or data.dtype != self._dtype:
                data = frozen(np.array(data, dtype=self._dtype, copy=True))
            pipe.space.acquire()
            if pipe.closed:
                raise ChannelClosed(f"Lava channel {pipe.name} closed")
            pipe.messages.put(data)
            observer = pipe.receiver.observer
            if observer is not None:
                observer()

    class LocalRecvPort(_End, _port_base("recv")):
        def __init__(self, *args):
            super().__init__(*args)
            self._pipe.receiver = self
            self._held = None  # a message taken off the queue by ``peek``

        def probe(self) -> bool:
            return self._held is not None or not self._pipe.messages.empty()

        def _take(self):
            message = self._pipe.messages.get()
            if message is _CLOSED:
                self._pipe.messages.put(_CLOSED)
                raise ChannelClosed(f"Lava channel {self._pipe.name} closed")
            self._pipe.space.release()
            return message

        def peek(self) -> np.ndarray:
            if self._held is None:
                self._held = self._take()
            return self._held

        def recv(self) -> np.ndarray:
            message, self._held = (self._held, None) if self._held is not None else (self._take(), None)
            return message

    class LocalChannel(Channel):
        """A Lava channel between two threads: ``size`` messages of ``shape`` and ``dtype``."""

        def __init__(self, message_infrastructure, src_name, dst_name, shape, dtype, size, *watchdogs):
            self.pipe = _Pipe(f"{src_name} -> {dst_name}", int(size))
            self._src_port = LocalSendPort(src_name, shape, dtype, self.pipe)
            self._dst_port = LocalRecvPort(dst_name, shape, dtype, self.pipe)
            message_infrastructure.pipes.append(self.pipe)

        @property
        def src_port(self):
            return self._src_port

        @property
        def dst_port(self):
            return self._dst_port

    return LocalChannel


class LocalMemory:
    """What Lava's own ``PyPyChannel`` asks of a shared-memory manager (the runtime builds the
    external pipes of host I/O with it directly): buffers, here in this process's memory."""

    class Block:
        def __init__(self, size: int):
            self.buf = memoryview(bytearray(max(int(size), 1)))

    def create_shared_memory(self, size: int) -> "LocalMemory.Block":
        return LocalMemory.Block(size)

    def shutdown(self) -> None:
        """Buffers are freed with the channels that hold them."""


class ThreadActor(threading.Thread):
    """One Lava actor (a process model or a runtime service) on a daemon thread. Its exception is
    kept as ``(exception, traceback)``, as Lava's ``SystemProcess`` keeps a child's."""

    def __init__(self, target, kwargs: dict, name: str):
        super().__init__(target=target, kwargs=kwargs, name=name, daemon=True)
        self.exception: tuple[BaseException, str] | None = None

    def run(self) -> None:
        try:
            super().run()
        except ChannelClosed:  # ``close`` ended the run: not the actor's error
            pass
        except BaseException as error:
            self.exception = (error, traceback.format_exc())


def _threaded_actors_class():
    from lava.magma.compiler.channels.interfaces import ChannelType
    from lava.magma.runtime.message_infrastructure.message_infrastructure_interface import (
        MessageInfrastructureInterface,
    )

    local_channel = _local_channel_class()

    class ThreadedActors(MessageInfrastructureInterface):
        """Lava's message infrastructure with thread actors and ``LocalChannel``s."""

        def __init__(self):
            self._actors: list[ThreadActor] = []
            self.pipes: list[_Pipe] = []
            self.smm = LocalMemory()

        @property
        def actors(self) -> list[ThreadActor]:
            return self._actors

        def start(self) -> None:
            """Nothing to start: no memory server, no processes."""

        def build_actor(self, target_fn, builder, exception_q=None) -> ThreadActor:
            actor = ThreadActor(target_fn, {"builder": builder, "exception_q": exception_q},
                                name=f"lava-actor-{len(self._actors)}")
            self._actors.append(actor)
            actor.start()
            return actor

        def stop(self) -> None:
            for actor in self._actors:
                actor.join(JOIN_TIMEOUT)

        def close(self) -> None:
            """Close every channel, waking every actor blocked on one, and wait for the actors."""
            for pipe in self.pipes:
                pipe.close()
            self.stop()

        def channel_class(self, channel_type):
            if channel_type != ChannelType.PyPy:
                raise NotImplementedError(f"Lava channel type {channel_type.name} needs a chip's process models")
            return local_channel

    return ThreadedActors


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _glibc():
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def tune_allocator() -> None:
    """Make glibc reuse the memory of the actors' large temporaries instead of asking the kernel anew.

    By default glibc gives each thread an arena of its own, maps every block over its adaptive
    threshold (about 128 KB to 32 MB) straight from the kernel and gives back heap tops over 128 KB
    at once: with hundreds of threads computing on 256 x 256 maps, every temporary was page-faulted
    afresh (40 % of the run's CPU time in the kernel). Two arenas, blocks up to 32 MB from the heap,
    and trimming only past 4 GB measured about 1.3x faster end to end (docs/lava.md). The settings
    are process-wide: ``release_memory`` puts glibc's defaults back after the run. Nothing happens
    off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 4 << 30)


#: glibc's defaults: arenas by core count (0: no limit set), 128 KB thresholds
_DEFAULTS = ((_M_ARENA_MAX, 0), (_M_MMAP_THRESHOLD, 128 << 10), (_M_TRIM_THRESHOLD, 128 << 10))


def release_memory() -> None:
    """After a run: glibc's default settings again, and the heap's free memory back to the kernel."""
    libc = _glibc()
    if libc is not None:
        for parameter, value in _DEFAULTS:
            libc.mallopt(parameter, value)
        libc.malloc_trim(0)


def start(root, run_cfg):
    """Compile the Lava graph connected to ``root`` with ``run_cfg`` and start it on thread actors.
    Returns the runtime, which every process of the graph now holds (as after ``create_runtime``)."""
    from lava.magma.core.process.message_interface_enum import ActorType
    from lava.magma.runtime.runtime import Runtime

    actors_class = _threaded_actors_class()

    class ThreadedRuntime(Runtime):
        """Lava's ``Runtime`` on ``ThreadedActors`` instead of ``MultiProcessing``."""

        def _build_message_infrastructure(self):
            self._messaging_infrastructure = actors_class()
            self._messaging_infrastructure.start()

    tune_allocator()
    executable = root.compile(run_cfg)
    runtime = ThreadedRuntime(executable, ActorType.MultiProcessing)  # the type is unused by the override
    executable.assign_runtime_to_all_processes(runtime)
    runtime.initialize()
    return runtime


def close(runtime) -> None:
    """End a runtime that cannot be stopped politely; its actors' threads end, none is left blocked."""
    infrastructure = getattr(runtime, "_messaging_infrastructure", None)
    if infrastructure is not None:
        infrastructure.close()
    if runtime._watchdog_manager is not None:
        runtime._watchdog_manager.stop()
    runtime._is_started = runtime._is_running = False  # else Runtime.__del__ calls stop() and hangs
