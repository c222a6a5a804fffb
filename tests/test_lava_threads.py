"""Lava's runtime on thread actors (``deploy/lava_threads.py``) and medqk's messages
(``deploy/lava_messages.py``): channel semantics, every actor ended after a good run, an error, an
interrupt or an exception in the caller's block, and Lava's weight handling kept by the fast models.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("lava.magma.core.run_configs", reason="Lava is not installed (bash install.sh)")

from medqk.convert.elementwise import Add, Complement  # noqa: E402
from medqk.convert.graph import Graph, Node, TensorInfo  # noqa: E402
from medqk.convert.io import Input  # noqa: E402
from medqk.deploy import lava_threads  # noqa: E402
from medqk.deploy.lava_runtime import require_lava  # noqa: E402
from medqk.errors import MedqkError  # noqa: E402


def actor_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("lava-actor-")]


class _Infrastructure:
    """What ``LocalChannel`` asks of its message infrastructure."""

    def __init__(self):
        self.pipes = []


def channel(size: int = 2, shape=(3,)):
    return lava_threads._local_channel_class()(_Infrastructure(), "a", "b", shape, np.int32, size)


def test_a_writable_message_is_copied_and_a_frozen_one_passes_by_reference():
    ch = channel()
    writable, frozen = np.arange(3, dtype=np.int32), lava_threads.frozen(np.ones(3, np.int32))
    ch.src_port.send(writable)
    ch.src_port.send(frozen)
    writable[0] = 99
    first, second = ch.dst_port.recv(), ch.dst_port.recv()
    assert first.tolist() == [0, 1, 2] and not first.flags.writeable
    assert second is frozen


def test_send_blocks_while_the_channel_is_full_and_recv_releases_it():
    ch, sent = channel(size=1), []

    def sender():
        for i in range(3):
            ch.src_port.send(np.full(3, i, np.int32))
            sent.append(i)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert sent == [0] and not ch.src_port.probe()  # the second send waits for room
    received = [int(ch.dst_port.recv()[0]) for _ in range(3)]
    thread.join(5)
    assert received == [0, 1, 2] and sent == [0, 1, 2]


def test_peek_keeps_the_message_and_probe_sees_it():
    ch = channel()
    assert not ch.dst_port.probe()
    ch.src_port.send(np.full(3, 7, np.int32))
    assert ch.dst_port.probe() and ch.dst_port.peek()[0] == 7 and ch.dst_port.recv()[0] == 7
    assert not ch.dst_port.probe()


def test_closing_wakes_a_blocked_receiver_and_sender():
    ch, full, errors = channel(), channel(size=1), []
    full.src_port.send(np.zeros(3, np.int32))

    def wait(call):
        try:
            call()
        except lava_threads.ChannelClosed as error:
            errors.append(error)

    threads = [threading.Thread(target=wait, args=(ch.dst_port.recv,), daemon=True),
               threading.Thread(target=wait, args=(lambda: full.src_port.send(np.zeros(3, np.int32)),), daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    ch.pipe.close()
    full.pipe.close()
    for thread in threads:
        thread.join(5)
    assert len(errors) == 2 and not any(thread.is_alive() for thread in threads)


def _graph(op, inputs: int = 1, shape=(2, 4, 4)) -> Graph:
    graph = Graph()
    graph.add(Node("x", Input(shape=shape), [], TensorInfo(shape, frac_bits=16)))
    graph.add(Node("y", op, ["x"] * inputs, TensorInfo(shape, frac_bits=16)))
    return graph


def test_a_run_leaves_no_actor_thread():
    from medqk.deploy.lava_library import run_image

    x = np.random.default_rng(0).integers(0, 5, (1, 2, 4, 4))
    out = run_image(_graph(Complement(one=4.0)), x).logits
    assert np.array_equal(out, 4 - x) and actor_threads() == []


def test_an_error_in_a_process_model_is_named_and_every_actor_ends():
    from medqk.deploy.lava_library import run_image

    add = Add(coefficients=(1.0, 1.0))
    add.multipliers, add.shifts = (1, 1), (-12, 0)  # one operand shifted beyond 24 bits
    graph = _graph(add, inputs=2, shape=(1, 2, 2))
    with pytest.raises(MedqkError, match=r"process y/rescale0: value 4294967296 exceeds the 24-bit"):
        run_image(graph, np.full((1, 1, 2, 2), 2**20))
    assert actor_threads() == []


def test_an_interrupt_during_the_run_ends_every_actor():
    from medqk.deploy.lava_library import run_image

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_image(_graph(Complement(one=4.0)), np.zeros((1, 2, 4, 4), np.int64), progress=interrupt)
    assert actor_threads() == []


def complement_processes() -> list:
    """The Lava processes of a one-op graph (4 - x on 2 x 4 x 4), its sink first (the root)."""
    from medqk.deploy.lava_graph import lower
    from medqk.deploy.lava_library import build, synapse_feeds
    from medqk.deploy.lava_layout import to_whc

    graph = _graph(Complement(one=4.0))
    lowered = lower(graph)
    procs = build(lowered, to_whc(np.zeros((1, 2, 4, 4), np.int64)), synapse_feeds(lowered, graph))
    return [procs[lowered.output], *(p for n, p in procs.items() if n != lowered.output)]


def test_an_exception_in_the_with_block_ends_every_actor():
    from medqk.deploy.lava_library import run_config
    from medqk.deploy.lava_runtime import lava_run

    ordered = complement_processes()
    with pytest.raises(ValueError, match="caller"):
        with lava_run(ordered, 3, run_config("fast", ordered)):
            assert actor_threads()
            raise ValueError("caller failed")
    assert actor_threads() == []


@pytest.mark.parametrize("weights", [np.arange(256), np.array([3, -5, 200, -256, 255, 1])])
def test_the_fast_sparse_models_keep_lavas_weight_clipping_and_truncation(weights):
    """``_lava_weights`` skips Lava's ``clip_weights``/``truncate_weights`` only where they change
    nothing; with mixed signs (LSB truncated) it gives what they give."""
    import scipy.sparse
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    from medqk.deploy.lava_fast_models import _lava_weights

    matrix = scipy.sparse.csr_matrix(weights.reshape(1, -1))
    model = type("Model", (), {"weights": matrix, "weights_set": False, "proc_params": {}})()
    _lava_weights(model)
    mode = determine_sign_mode(matrix)
    expected = truncate_weights(clip_weights(matrix, mode, num_bits=8), mode, 8)
    assert np.array_equal(model.weights.toarray(), expected.toarray())


def test_missing_lava_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lava.magma.core.run_configs", None)
    with pytest.raises(MedqkError, match="bash install.sh"):
        require_lava()


def test_lava_imports_after_a_progress_bar():
    """A tqdm bar fixes multiprocessing's start method; Lava's import sets it again without force."""
    script = textwrap.dedent("""
        from tqdm import tqdm
        list(tqdm(range(3)))
        import medqk.deploy.lava_neurons
        print("imported")
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "imported", out.stderr


def test_a_disconnected_graph_is_refused_and_nothing_is_left_running():
    """Lava compiles only what is connected to the root; a second, unconnected graph is refused."""
    from medqk.deploy.lava_library import run_config
    from medqk.deploy.lava_runtime import lava_run

    processes = complement_processes() + complement_processes()
    with pytest.raises(MedqkError, match="not connected"):
        with lava_run(processes, 3, run_config("fast", processes)):
            pass
    assert actor_threads() == []
