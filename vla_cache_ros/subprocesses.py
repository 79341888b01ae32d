"""Child processes as a terminal user expects them: output in a log file, SIGINT first when
stopping one, and SIGTERM handled like Ctrl-C in our own process.

Used wherever this package or its tests run nodes and tools as separate processes (sim-eval, the
demo, the node and bag tests), so that every child gets the chance to send its safety command
and close its bag before it is killed; and by every entry point that must shut down cleanly when
launch or a supervisor sends SIGTERM.

- :func:`start_child` starts a command with its stdout and stderr in ``<log_dir>/<name>.log``
  and returns a :class:`ChildProcess` (alive, log, interrupt, kill).
- :func:`interrupt` stops any ``Popen``: SIGINT, wait, kill if it does not stop.
- :func:`collect` stops (optionally) and reads a child whose output goes to pipes.
- :func:`python_module` is the command line of ``python -m module`` in this interpreter.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


def python_module(module: str, *arguments: str) -> list[str]:
    """``[sys.executable, "-m", module, *arguments]``: a module run by this interpreter."""
    return [sys.executable, "-m", module, *arguments]


def interrupt(process: subprocess.Popen, timeout_s: float = 30.0) -> bool:
    """SIGINT ``process`` and wait up to ``timeout_s``; kill it if still running.

    Returns True when it stopped by itself (or had already exited), False when it was killed.
    """
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


@dataclass(frozen=True)
class Collected:
    """What :func:`collect` read from a finished child."""

    returncode: int
    stdout: str
    stderr: str
    killed: bool  # it did not finish within the timeout and was killed


def collect(process: subprocess.Popen, timeout_s: float = 30.0, *, interrupt_first: bool = False) -> Collected:
    """Wait up to ``timeout_s`` for a child whose stdout/stderr are pipes, reading them as it
    runs (so a full pipe cannot stall it); kill it when it has not finished by then.

    With ``interrupt_first``, a child still running is sent SIGINT first (as Ctrl-C would).
    Pipes opened in binary mode are decoded as UTF-8; a stream that is not a pipe reads as "".
    """
    if interrupt_first and process.poll() is None:
        process.send_signal(signal.SIGINT)
    killed = False
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        killed = True

    def text(output: str | bytes | None) -> str:
        if isinstance(output, bytes):
            return output.decode("utf-8", errors="replace")
        return output or ""

    return Collected(process.returncode, text(stdout), text(stderr), killed)


@dataclass
class ChildProcess:
    """A child process started by :func:`start_child`, its stdout and stderr in ``log_path``."""

    name: str
    process: subprocess.Popen
    log_path: Path
    interrupted: bool = False  # :meth:`interrupt` sent it SIGINT

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        """Its exit code (negative: killed by that signal), or None while it runs."""
        return self.process.poll()

    def log(self) -> str:
        """Everything it wrote so far (undecodable bytes replaced)."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of its log, without trailing blank space."""
        return "\n".join(self.log().strip().splitlines()[-lines:])

    def interrupt(self, timeout_s: float = 30.0) -> bool:
        """SIGINT, wait up to ``timeout_s``, kill if still running (see :func:`interrupt`).
        Returns True when it stopped by itself (or had already exited), False when killed."""
        self.interrupted = self.interrupted or self.alive()
        return interrupt(self.process, timeout_s)

    def ended_by_our_interrupt(self) -> bool:
        """Whether the SIGINT :meth:`interrupt` sent ended it: a Python child that gets it before
        its own handler is set, while it still imports its modules, dies of Python's
        KeyboardInterrupt with a traceback, exit -2; or exit 1 with "Fatal Python error:
        init_import_site" when it came while the interpreter itself still started (a CI run). It
        stopped as asked (it had not started yet): no failure."""
        code = self.process.returncode
        if not self.interrupted or code in (None, 0):
            return False
        return code == -signal.SIGINT or self.log_tail(1).strip() == "KeyboardInterrupt"

    def kill(self) -> None:
        """SIGKILL at once (when even waiting is not wanted, e.g. a second Ctrl-C)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, so that a killed parent
    leaves no orphans behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl in this libc: the child simply outlives a crash
        pass


def start_child(
    name: str,
    command: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    own_session: bool = False,
    die_with_parent: bool = False,
) -> ChildProcess:
    """Start ``command`` as ``name``, its stdout and stderr going to ``log_dir/<name>.log``.

    The child gets this process's environment plus ``PYTHONUNBUFFERED=1`` (logs written as they
    happen) plus ``env``, no stdin, and ``cwd``. ``own_session`` puts it in a new session, so a
    Ctrl-C in the terminal reaches only this process, which then stops its children in order;
    ``die_with_parent`` (Linux only, ignored elsewhere) sends it SIGTERM if this process dies.
    ``log_dir`` is created if missing. Raises OSError when the command cannot be started.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log, _stop_signals_deferred() as arrived:
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=own_session,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None)
    child = ChildProcess(name, process, log_path)
    if arrived:  # now that the child is held, the signal goes to the handler it was meant for
        try:
            signal.raise_signal(arrived[0])
        except BaseException:  # it raised (Ctrl-C, SIGTERM as Ctrl-C): nobody gets this child, so stop it
            child.interrupt()
            raise
    return child


@contextmanager
def _stop_signals_deferred() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are recorded in the yielded list instead of handled.

    Regression: a stop signal that arrived while ``subprocess.Popen`` waited for the child's
    ``exec`` raised inside ``Popen`` after the fork, so the child ran on and nobody held it (an
    orphan of the demo and of sim-eval). Only in the main thread, the only one where Python runs
    signal handlers; a signal whose handler was not set from Python is left alone.
    """
    arrived: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not None:
                previous[signum] = signal.signal(signum, lambda number, frame: arrived.append(number))
    try:
        yield arrived
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM inside :func:`sigterm_as_keyboard_interrupt`: handled as Ctrl-C, but the process
    exit code says SIGTERM (143, not 130)."""

    exit_code = 128 + signal.SIGTERM


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main
    thread (one shutdown path for Ctrl-C and ``kill``); the previous handler is restored afterwards."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
