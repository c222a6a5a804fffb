"""Signals to `medqk run --backend lava` while its ~60 Lava child processes start and while they run.

Each test starts the command in a new session, signals the parent alone (or, as Ctrl-C in a
terminal does, its whole group) and then requires that no process of the session survives and that
none of the /dev/shm segments the run mapped is left. SIGKILL leaves the clean-up to the children's
parent-death signal and to multiprocessing's resource tracker; SIGINT and SIGTERM are handled by
medqk (exit 130 and 143 with a one-line message). Processes are found through /proc (session id),
segments through the parent's memory maps, so that other programs' Lava runs do not count.
The first tests check the two pieces of ``deploy/lava_signals.py`` on their own, without Lava.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from medqk.deploy.lava_signals import Interrupts

needs_lava = pytest.mark.skipif(importlib.util.find_spec("lava") is None,
                                reason="Lava is not installed (bash install.sh)")

MEDQK = [sys.executable, "-m", "medqk.cli"]
#: generous limits: the suite shares two cores with other work (the issue asks for a clean machine
#: 10 s after the kill; here it takes 0-2 s)
START_TIMEOUT_S, EXIT_TIMEOUT_S, CLEAN_TIMEOUT_S = 180, 120, 30
#: a tqdm update of the Lava run, "| 2/59 [": steps done / steps
PROGRESS = re.compile(rb"\| *(\d+)/(\d+) \[")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The embedded default model converted at 64x64, once for this file."""
    directory = tmp_path_factory.mktemp("lava-signals") / "model"
    subprocess.run([*MEDQK, "-q", "convert", "-o", str(directory), "--image-size", "64", "64",
                    "--no-sensitivity", "--calibration-count", "1"], check=True,
                   timeout=600, stdout=subprocess.DEVNULL)
    return directory


# -- the pieces, without Lava -------------------------------------------------------------------

def test_a_deferred_signal_takes_effect_at_the_next_check():
    with Interrupts() as interrupts:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)  # runs the Python handler before returning
            assert interrupts.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_while_deferred_takes_effect_at_once():
    with Interrupts() as interrupts, interrupts.deferred():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_the_previous_handler_acts_once_and_the_program_may_carry_on():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with Interrupts() as interrupts:
            with interrupts.deferred():
                signal.raise_signal(signal.SIGTERM)
            assert calls == []
            interrupts.check()
            interrupts.check()
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16) & (1 << (signal.SIGINT - 1)))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_children_forked_in_the_block_die_with_their_parent():
    """A child forked inside children_die_with_parent() ignores SIGINT and dies when its parent is
    killed; one forked after the block does neither."""
    script = textwrap.dedent("""
        import os, time
        from medqk.deploy.lava_signals import children_die_with_parent
        def child():
            pid = os.fork()
            if pid == 0:
                time.sleep(120)
                os._exit(0)
            return pid
        with children_die_with_parent():
            inside = child()
        print(inside, child(), flush=True)
        time.sleep(120)
        """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    inside = outside = None
    try:
        inside, outside = map(int, parent.stdout.readline().split())
        deadline = time.monotonic() + 30
        while not ignores_sigint(inside) and time.monotonic() < deadline:  # the fork hook runs in the child
            time.sleep(0.05)
        assert ignores_sigint(inside) and not ignores_sigint(outside)
        parent.kill()
        parent.wait()
        while alive(inside) and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert not alive(inside) and alive(outside)
    finally:
        parent.kill()
        parent.wait()
        for pid in (inside, outside):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- processes and shared memory, from /proc ------------------------------------------------------

def session_processes(session: int) -> dict[int, int]:
    """pid -> parent pid of the live (not zombie) processes of ``session``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        state, ppid, _, sid = stat.rsplit(")", 1)[1].split()[:4]
        if int(sid) == session and state != "Z":
            found[int(entry)] = int(ppid)
    return found


#: glibc's sem_open builds a named semaphore in a temporary ``sem.XXXXXX`` file and links it to its
#: name: a SIGKILL inside that call leaves the 32-byte temporary, which no process can clean up
#: (docs/reliability.md, "Not guaranteed"); the Lava run's own segments are what is checked
GLIBC_SEM_TEMPORARY = re.compile(r"sem\.[A-Za-z0-9]{6}")


def mapped_shm(pid: int) -> set[str]:
    """Names of the /dev/shm segments that ``pid`` maps (not those already unlinked, such as
    semaphores, nor glibc's sem_open temporaries)."""
    names = re.findall(r" /dev/shm/(\S+)$", Path(f"/proc/{pid}/maps").read_text(), re.MULTILINE)
    return {name for name in names if not GLIBC_SEM_TEMPORARY.fullmatch(name)}


class LavaRun:
    """`medqk run MODEL --backend lava` in a new session; its stderr collected as it comes."""

    def __init__(self, model: Path):
        self.proc = subprocess.Popen([*MEDQK, "run", str(model), "--backend", "lava"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.stderr = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.shm: set[str] = set()  # the segments the parent mapped when it was signalled
        self.children_signalled = 0  # how many children it had then

    def _read(self) -> None:
        for chunk in iter(lambda: os.read(self.proc.stderr.fileno(), 65536), b""):
            self.stderr += chunk

    def children(self) -> list[int]:
        return [pid for pid, ppid in session_processes(self.proc.pid).items() if ppid == self.proc.pid]

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {self.stderr[-2000:]!r}"
            assert time.monotonic() < deadline, f"no {what} after {START_TIMEOUT_S} s: {self.stderr[-2000:]!r}"
            time.sleep(0.05)

    def starting(self) -> bool:
        """Lava is forking its children: at least 10 exist (of about 60)."""
        return len(self.children()) >= 10

    def running(self) -> bool:
        """At least one chunk of steps has run, and not all of them."""
        steps = [(int(done), int(total)) for done, total in PROGRESS.findall(bytes(self.stderr))]
        return bool(steps) and 0 < steps[-1][0] < steps[-1][1]

    def signal(self, signum: int, whole_group: bool) -> None:
        self.shm = mapped_shm(self.proc.pid)  # the parent attaches every channel's segment
        self.children_signalled = len(self.children())
        assert self.shm, "the run maps no shared memory: the test would check nothing"
        (os.killpg if whole_group else os.kill)(self.proc.pid, signum)

    def leftovers(self) -> tuple[dict[int, int], set[str]]:
        """The session's live processes and the run's segments still in /dev/shm."""
        return session_processes(self.proc.pid), {n for n in self.shm if os.path.exists(f"/dev/shm/{n}")}

    def wait_clean(self) -> tuple[dict[int, int], set[str]]:
        deadline = time.monotonic() + CLEAN_TIMEOUT_S
        while any(self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.leftovers()

    def remove_leftovers(self) -> None:
        """Whatever a failed test left: kill the session's processes, unlink the run's segments."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in session_processes(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name in self.shm:
            Path(f"/dev/shm/{name}").unlink(missing_ok=True)
        self.proc.wait()
        self.reader.join(timeout=10)


EXPECTED = {signal.SIGKILL: (-signal.SIGKILL, None), signal.SIGTERM: (143, "medqk run: terminated"),
            signal.SIGINT: (130, "medqk run: interrupted")}


def check_signal(model: Path, signum: int, phase: str, whole_group: bool = False) -> None:
    """Signal a Lava run in ``phase`` ("starting" or "running"); require the exit code, message, and
    that no process and none of the run's segments is left."""
    run = LavaRun(model)
    try:
        run.wait_until(getattr(run, phase), phase)
        started = time.monotonic()
        run.signal(signum, whole_group)
        code = run.proc.wait(timeout=EXIT_TIMEOUT_S)
        exit_s = time.monotonic() - started
        processes, segments = run.wait_clean()
        clean_s = time.monotonic() - started - exit_s
        assert not processes, f"{len(processes)} processes outlived the run: {processes}"
        assert not segments, f"{len(segments)} of the run's {len(run.shm)} /dev/shm segments are left"
        run.reader.join(timeout=10)
        expected_code, message = EXPECTED[signum]
        assert code == expected_code, run.stderr[-2000:]
        if message is not None:
            lines = bytes(run.stderr).decode(errors="replace").replace("\r", "\n").split("\n")
            assert [line for line in lines if line.strip()][-1] == message
            assert b"Traceback" not in run.stderr and b"Exception ignored" not in run.stderr, run.stderr[-2000:]
        print(f"{signum.name} to the {'group' if whole_group else 'parent'} while {phase} ({run.children_signalled} "
              f"children): exit {code} {exit_s:.1f} s after it; {len(run.shm)} segments and every process gone "
              f"{clean_s:.1f} s later")
    finally:
        run.remove_leftovers()


@needs_lava
@pytest.mark.parametrize("phase", ["starting", "running"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_parent_leaves_no_process_and_no_shared_memory(model_dir, signum, phase):
    check_signal(model_dir, signum, phase)


@needs_lava
def test_ctrl_c_while_the_children_start(model_dir):
    """As in a terminal: SIGINT reaches the parent and the children forked so far at once. The parent
    used to lose the KeyboardInterrupt inside os.fork's logging hook and hang."""
    check_signal(model_dir, signal.SIGINT, "starting", whole_group=True)
