"""Process entry points for this package's ROS 2 nodes: init, spin, clean stop, exit code.

Every executable (``vla_cache_node``, ``sim_arm_node``, the demo's synthetic camera) stops the
same way on Ctrl-C and SIGTERM (launch escalates SIGINT to SIGTERM): no traceback, the node's own
``shutdown()`` (safety command, worker join) runs first, then the node is destroyed and rclpy shut
down. A configuration error the user can fix prints one line and exits with code 2.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from vla_cache_ros.errors import UserFacingError, one_line
from vla_cache_ros.subprocesses import sigterm_as_keyboard_interrupt

SIGNAL_POLL_S = 0.1


def _stop(node: Node) -> None:
    shutdown = getattr(node, "shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except KeyboardInterrupt:
            pass
    if not getattr(node, "worker_alive", False):  # a stuck worker still uses the node: leave it
        node.destroy_node()


STARTUP_JOIN_S = 2.0
"""How long a stopped process waits for a start-up thread to finish before ending at once."""


def restore_sigint() -> None:
    """Make Ctrl-C raise KeyboardInterrupt, even if SIGINT was inherited as ignored (only the
    main thread may install handlers; elsewhere this does nothing)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _StopSignals:
    """Ctrl-C / SIGTERM for a spinning node: record that a stop was asked for, then raise
    KeyboardInterrupt in the main thread (Python's own behaviour for Ctrl-C)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator["_StopSignals"]:
        """SIGINT and SIGTERM handled by this object within the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _is_interrupted_conversion(error: BaseException, signals: _StopSignals) -> bool:
    """Whether ``error`` is a stop signal seen through rclpy's C++ code.

    A KeyboardInterrupt raised while pybind11 runs Python on rclpy's behalf (converting a service
    response, taking a message) comes out as another exception: a SystemError caused by the
    KeyboardInterrupt, or a RuntimeError "Unable to convert call argument '0' to Python object"
    with no cause at all (seen in CI: a node stopped while a message arrived ended with a
    traceback and exit 1). Either is a stop once a signal was received.
    """
    return signals.received or isinstance(error.__cause__, KeyboardInterrupt) or \
        isinstance(error.__context__, KeyboardInterrupt)


def run_node(factory: Callable[[], Node], name: str, args: Sequence[str] | None = None) -> int:
    """Create the node with ``factory`` and spin it until Ctrl-C / SIGTERM; returns the exit code.

    A node may offer ``start()`` (called once spinning can begin) and ``startup_error`` (a
    :class:`UserFacingError` from a background start-up, reported like a construction error).

    Exit codes: 0 after Ctrl-C / SIGTERM, 2 for a configuration error (one line on stderr), 1 for
    a bug (traceback).
    """
    restore_sigint()
    try:
        rclpy.init(args=list(args) if args is not None else None,
                   signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as error:  # rclpy's RCLError: e.g. a params file that is not valid YAML
        print(f"{name}: error: bad --ros-args: {one_line(error)}", file=sys.stderr)
        return 2
    with _StopSignals().installed() as signals:
        return _spin_until_stopped(factory, name, signals)


def _spin_until_stopped(factory: Callable[[], Node], name: str, signals: _StopSignals) -> int:
    node: Node | None = None
    # One thread: a managed node with autostart loads its model in a thread of its own, so the
    # executor (parameter services, diagnostics) keeps answering meanwhile.
    executor = SingleThreadedExecutor()
    code = 0
    try:
        node = factory()
        executor.add_node(node)
        start = getattr(node, "start", None)
        if start is not None:
            start()  # e.g. autostart: configure -> activate in the background
        while rclpy.ok():
            # Bounded waits: Python's own SIGINT/SIGTERM handling (rclpy's is off, so the node can
            # still publish its safety command) only runs when control returns to the interpreter.
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
            failed = getattr(node, "startup_error", None)
            if failed is not None:
                raise failed
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (UserFacingError, ParameterException) as error:
        print(f"{name}: error: {one_line(error)}", file=sys.stderr)
        code = 2
    except (SystemError, RuntimeError) as error:
        if not _is_interrupted_conversion(error, signals):
            raise
    finally:
        executor.shutdown(timeout_sec=5.0)  # no callback may run on a node being destroyed
        if node is not None:
            _stop(node)
        rclpy.try_shutdown()
        _exit_if_still_starting(node, name, code)
    return code


def _exit_if_still_starting(node: Node | None, name: str, code: int) -> None:
    """End the process at once when the node's start-up thread (``startup_thread``, e.g. loading
    the model) is still running after Ctrl-C / SIGTERM.

    Finalising the interpreter under a thread that is inside torch aborted the process ("terminate
    called without an active exception", exit -6, seen in CI when a node was stopped while it
    loaded). A node that never finished configuring has published nothing, and :func:`_stop` has
    already run, so nothing is left to clean up.
    """
    thread = getattr(node, "startup_thread", None)
    if thread is None or not thread.is_alive():
        return
    thread.join(timeout=STARTUP_JOIN_S)
    if thread.is_alive():
        print(f"{name}: stopped while starting up (the model was still loading)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)


@contextmanager
def ros_session(node_name: str, use_sim_time: bool = False) -> Iterator[Node]:
    """A node in its own rclpy context for a tool (bag play/record, the demo's monitor), torn
    down however the block ends.

    rclpy's own SIGINT handler is not installed: Ctrl-C raises KeyboardInterrupt in the main
    thread, and SIGTERM is turned into the same, so callers have one clean shutdown path.
    """
    restore_sigint()
    with sigterm_as_keyboard_interrupt():
        context = rclpy.Context()
        rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
        node = None
        try:
            node = Node(node_name, context=context,
                        parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
            yield node
        finally:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown(context=context)
