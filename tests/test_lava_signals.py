"""Signals to `medqk run --backend lava` while its Lava graph starts and while it runs.

Each test starts the command in a new session, signals the parent alone (or, as Ctrl-C in a
terminal does, its whole group) and then requires that no process of the session survives and that
the run used no /dev/shm segment: Lava's actors are threads of the one process (``lava_threads``),
so a signal, even SIGKILL, leaves nothing behind. SIGINT and SIGTERM are handled by medqk (exit 130
and 143 with a one-line message). Processes are found through /proc (session id), segments through
the parent's memory maps. The first tests check ``deploy/lava_signals.py``'s ``Interrupts`` alone.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
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


def threads(pid: int) -> int:
    try:
        return int(re.search(r"Threads:\s*(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
    except OSError:  # exited meanwhile
        return 0


class LavaRun:
    """`medqk run MODEL --backend lava` in a new session; its stderr collected as it comes."""

    def __init__(self, model: Path):
        self.proc = subprocess.Popen([*MEDQK, "run", str(model), "--backend", "lava"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.stderr = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.shm: set[str] = set()  # the segments the parent mapped when it was signalled
        self.threads_signalled = 0  # how many threads it had then

    def _read(self) -> None:
        for chunk in iter(lambda: os.read(self.proc.stderr.fileno(), 65536), b""):
            self.stderr += chunk

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}: {self.stderr[-2000:]!r}"
            assert time.monotonic() < deadline, f"no {what} after {START_TIMEOUT_S} s: {self.stderr[-2000:]!r}"
            time.sleep(0.05)

    def starting(self) -> bool:
        """Lava is starting its actors: at least 50 threads exist (of about 400), and no step has run."""
        return threads(self.proc.pid) >= 50 and not PROGRESS.findall(bytes(self.stderr))

    def running(self) -> bool:
        """At least one chunk of steps has run, and not all of them."""
        steps = [(int(done), int(total)) for done, total in PROGRESS.findall(bytes(self.stderr))]
        return bool(steps) and 0 < steps[-1][0] < steps[-1][1]

    def signal(self, signum: int, whole_group: bool) -> None:
        self.shm = mapped_shm(self.proc.pid)
        self.threads_signalled = threads(self.proc.pid)
        assert not self.shm, f"the run maps shared memory, which a SIGKILL would leave behind: {self.shm}"
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
        print(f"{signum.name} to the {'group' if whole_group else 'parent'} while {phase} ({run.threads_signalled} "
              f"threads): exit {code} {exit_s:.1f} s after it; every process gone {clean_s:.1f} s later")
    finally:
        run.remove_leftovers()


@needs_lava
@pytest.mark.parametrize("phase", ["starting", "running"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_parent_leaves_no_process_and_no_shared_memory(model_dir, signum, phase):
    check_signal(model_dir, signum, phase)


@needs_lava
def test_ctrl_c_while_the_graph_starts(model_dir):
    """As in a terminal: SIGINT reaches the whole process group while Lava starts its actors."""
    check_signal(model_dir, signal.SIGINT, "starting", whole_group=True)
