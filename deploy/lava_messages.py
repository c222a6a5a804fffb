"""Messages between medqk's Lava process models: zeros that cost nothing, arrays that are not copied.

Under ``LoihiProtocol`` every port carries a message at every time step, and one wave crosses the
library graph (``lava_graph``): almost every message is all zeros. A model sends ``silence(shape)``
for them, one read-only zero array per shape and dtype, shared by every process of this Python;
``lava_threads.LocalChannel`` passes read-only arrays on by reference, so a silent step costs no
copy, and ``is_silent`` recognises it without reading it. A model sends the result of a step it
computed ``frozen`` (read-only), so that is not copied either.

``FastInPort`` is Lava's dense in port (``PyInPortVectorDense``: the messages of every connected
out port, summed point-wise) without its fresh zero array and additions at every step: silent
messages are skipped, one live message is returned as it came, several are summed in the port's
dtype as Lava sums them. Lava's own models keep Lava's port; they are not changed.
"""
import numpy as np
from lava.magma.core.model.py.ports import PyInPortVectorDense
from lava.magma.core.model.py.type import LavaPyType

from medqk.deploy.lava_threads import frozen

_SILENCE: dict[tuple, np.ndarray] = {}


def silence(shape, dtype=np.int32) -> np.ndarray:
    """The shared read-only zeros of ``shape`` and ``dtype``."""
    key = (tuple(shape), np.dtype(dtype).str)
    if key not in _SILENCE:
        _SILENCE[key] = frozen(np.zeros(key[0], key[1]))
    return _SILENCE[key]


def is_silent(x: np.ndarray) -> bool:
    """Whether ``x`` is all zeros: at once for ``silence``, else by reading it."""
    return x is _SILENCE.get((x.shape, x.dtype.str)) or not x.any()


class FastInPort(PyInPortVectorDense):
    """Lava's dense in port, summing only the messages that are not ``silence``."""

    def recv(self) -> np.ndarray:
        live = []
        for port in self.csp_ports:
            message = port.recv()
            if message is not _SILENCE.get((message.shape, message.dtype.str)):
                live.append(self._transformer.transform(message, port))
        if not live:
            return silence(self._shape, self._d_type)
        dtype = np.result_type(self._d_type, *live)  # what Lava's zeros(d_type) + messages give
        if len(live) == 1 and live[0].dtype == dtype:
            return live[0]
        total = np.zeros(self._shape, dtype)
        for message in live:
            total += message
        return frozen(total)


def fast_port(lava_type: LavaPyType) -> LavaPyType:
    """A model's in port declaration ``lava_type`` (dtype and precision kept) with ``FastInPort``."""
    return LavaPyType(FastInPort, lava_type.d_type, precision=lava_type.precision)
