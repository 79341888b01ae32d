"""``vla-cache serve`` (the policy server on Ray Serve) and ``vla-cache serve-load`` (its
bounded load test).

``serve --model DIR|tiny [--port 8000] [--replicas N] [--address auto]`` starts a local Ray
instance bound to 127.0.0.1 (or joins a cluster with ``--address``), deploys
:mod:`vla_cache_ros.serving.server` and serves until Ctrl-C / SIGTERM. The bearer token, if
wanted, comes from ``$VLA_CACHE_SERVE_TOKEN`` (never the command line: it would show in ``ps``).
``--cache-policy`` and ``--drafter`` are loaded once per replica and shared by its sessions (the
drafter drafts for sessions that ask for ``decode: speculative``); both are read here first, so a
broken one is one error naming its file before Ray starts.

``serve-load --url URL --sessions 8 --steps 200`` drives that many sessions concurrently, each
with its own camera stream and instruction, and reports throughput, latency percentiles, the
server's evictions and any answer that was lost or wrong (a session's step count on the server
must advance by exactly one per request; with ``--verify-model`` the first ``--verify-steps``
actions of every session must equal a local policy's on the same frames).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_cache_ros.apps.options import (
    add_cache_policy_argument,
    add_drafter_argument,
    add_lm_head_argument,
    checked_cache_policy,
    checked_drafter,
    describe_draft,
)
from vla_cache_ros.errors import ConfigurationError, PolicyServerError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``serve-load``."""
    parser = subparsers.add_parser("serve", help="policy server (Ray Serve): many robots share replicas, "
                                                 "each keeps its own visual cache")
    parser.add_argument("--model", default="tiny", help="checkpoint directory or short name (default tiny)")
    parser.add_argument("--unnorm-key", default=None, help="default norm_stats key of /act and sessions")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas, each with the model (default 1)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (auto: the one on this machine) instead of starting one")
    parser.add_argument("--device", default="auto", help="auto (a GPU per replica where there are GPUs), cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights and activations (default %(default)s)")
    parser.add_argument("--num-threads", type=int, default=0, help="torch CPU threads per replica (0: default)")
    parser.add_argument("--replica-cpus", type=float, default=1.0,
                        help="CPUs Ray reserves per replica (default %(default)g)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--max-sessions", type=int, default=16,
                        help="sessions per replica before LRU eviction (default %(default)d)")
    parser.add_argument("--idle-timeout-s", type=float, default=300.0,
                        help="free a session's cache after this idle time (s, default %(default)g)")
    parser.add_argument("--max-request-mb", type=float, default=16.0,
                        help="largest request body (MB, default %(default)g)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest image (H x W pixels, default %(default)d = 4096 x 4096)")
    parser.add_argument("--max-queued", type=int, default=64,
                        help="queued requests per replica before 503 (default %(default)d)")
    add_cache_policy_argument(parser)
    add_drafter_argument(parser)
    add_lm_head_argument(parser)
    parser.set_defaults(handler=_serve)

    parser = subparsers.add_parser("serve-wire", help="size and encode/decode time of each frame encoding")
    parser.add_argument("--sizes", default="224x224,640x480", help="frame sizes WxH, comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions (median reported)")
    parser.set_defaults(handler=_serve_wire)

    parser = subparsers.add_parser("serve-load", help="bounded load test of a running policy server")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server URL")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (default 8)")
    parser.add_argument("--steps", type=int, default=200, help="steps per session (default 200)")
    parser.add_argument("--encoding", default="raw", choices=("raw", "png", "jpeg"), help="frame encoding")
    parser.add_argument("--mode", default="fixed", help="cache mode of every session (default fixed)")
    add_cache_policy_argument(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="cache ratio (default 0.5)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout")
    parser.add_argument("--verify-model", default=None,
                        help="checkpoint the server runs: compare the first --verify-steps actions locally")
    parser.add_argument("--verify-steps", type=int, default=20, help="steps per session compared (default 20)")
    parser.add_argument("--unnorm-key", default=None, help="norm_stats key for --verify-model")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.set_defaults(handler=_serve_load)


def import_server() -> Any:
    """:mod:`vla_cache_ros.serving.server`, with Ray imported without its C++ failure-signal handler.

    That handler (installed by ``ray.init``) turned a SIGTERM during start-up into an abort
    (exit -6) that left Ray's daemons running. Ray documents the switch
    ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``, read when Ray is imported; it is set for that import
    only, so Ray's daemons and replicas keep their handler. No effect if Ray is already imported.

    Raises:
        ConfigurationError: ray[serve] or json-numpy is not installed.
    """
    previous = os.environ.get("RAY_DISABLE_FAILURE_SIGNAL_HANDLER")
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    try:
        from vla_cache_ros.serving import server
    except ModuleNotFoundError as error:
        raise ConfigurationError(f"vla-cache serve needs {error.name} (pip install 'ray[serve]' json-numpy)") from None
    finally:
        if previous is None:
            del os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"]
        else:
            os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = previous
    return server


def _serve(args: argparse.Namespace) -> int:
    server = import_server()
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.serving.sessions import SessionLimits
    from vla_cache_ros.serving.wire import Limits

    resolved = resolve_model(args.model, args.unnorm_key)
    cache_policy = checked_cache_policy(args.cache_policy, resolved.path)  # a broken one (or drafter): one
    drafter = checked_drafter(args.drafter, resolved.path)  # error, before Ray starts
    options = server.ServerOptions(
        model_path=str(resolved.path), unnorm_key=resolved.unnorm_key, device=args.device, dtype=args.dtype,
        num_threads=args.num_threads, replicas=args.replicas, replica_cpus=args.replica_cpus,
        host=args.host, port=args.port, address=args.address, local_cpus=args.ray_cpus,
        limits=Limits(max_request_bytes=int(args.max_request_mb * 2**20), max_image_pixels=args.max_image_pixels),
        sessions=SessionLimits(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout_s),
        token=os.environ.get(server.TOKEN_ENV) or None, max_queued_requests=args.max_queued,
        cache_policy_path=None if cache_policy is None else str(cache_policy),
        drafter_path=None if drafter is None else str(drafter), lm_head=args.lm_head)
    stop = threading.Event()

    def interrupt_start(*_: Any) -> None:
        stop.set()
        raise KeyboardInterrupt

    def handle_stop_signals(handler: Any) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)

    handle_stop_signals(interrupt_start)
    print(f"starting the policy server ({resolved.path}, {args.replicas} replica(s); speculative draft of sessions "
          f"that ask for it: {describe_draft(drafter)}) ...", flush=True)
    try:
        server.init_ray(options)
    except (SystemExit, KeyboardInterrupt):  # SIGTERM/SIGINT while ray.init runs (Ray's handler or ours)
        print("stopped while Ray was starting", flush=True)
        server.stop_ray()
        os._exit(0)  # Ray's half-built core worker can crash the interpreter's own teardown (a segfault)
    # ray.init installed Ray's own SIGTERM handler (it stops Ray's daemons and exits): ours goes back
    # at once, so that a SIGTERM while the model loads, or while the replicas already answer and
    # Serve still polls, stops Serve and Ray in order.
    handle_stop_signals(interrupt_start)
    try:
        url = server.start(options)
        handle_stop_signals(lambda *_: stop.set())
        print(f"policy server ready at {url} (POST /act, POST /step, GET /health); Ctrl-C stops it", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        print("stopped before the policy server was ready", flush=True)
    finally:
        print("stopping the policy server ...", flush=True)
        server.stop()
    return 0


# ----------------------------------------------------------------------------- load test
@dataclass
class SessionRun:
    """One session's part of a load test."""

    session_id: str
    latencies_s: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    restarts: int = 0


def session_frames(index: int, count: int) -> list[np.ndarray]:
    """Session ``index``'s camera stream: its own synthetic scene (cycled)."""
    from vla_cache_ros.synthetic import SyntheticScene

    return SyntheticScene(height=96, width=128, seed=100 + index).frames(count)


def session_instruction(index: int) -> str:
    """Session ``index``'s instruction (they differ between sessions)."""
    return f"pick up block {index}"


def run_session(url: str, index: int, steps: int, args: Any, deadline: float) -> SessionRun:
    """Drive one session for ``steps`` steps (stops early at ``deadline``)."""
    from vla_cache_ros.serving.client import RemotePolicy

    run = SessionRun(f"load_{index}_{os.getpid()}_{time.monotonic_ns()}")
    client = RemotePolicy(url, run.session_id, args.timeout_s, args.encoding, mode=args.mode,
                          cache_ratio=args.ratio)
    frames = session_frames(index, 8)
    previous = 0
    for step in range(steps):
        if time.monotonic() > deadline:
            run.errors.append(f"deadline reached after {step} steps")
            break
        start = time.perf_counter()
        try:
            action, stats = client.step(frames[step % len(frames)], session_instruction(index))
        except PolicyServerError as error:
            run.errors.append(str(error))
            continue
        run.latencies_s.append(time.perf_counter() - start)
        run.server_s.append(stats.server_total_s)
        run.actions.append(action)
        if stats.restarted in ("new", "idle") and step > 0:
            run.restarts += 1
        elif step > 0 and stats.session_steps != previous + 1:
            run.wrong.append(f"session {index} step {step}: the server counts {stats.session_steps} "
                             f"steps, expected {previous + 1} (a request lost or run twice)")
        previous = stats.session_steps
    return run


def _cache_policy(value: str | None, model_path: Any) -> str | None:
    """``--cache-policy`` resolved against the model directory (see ``apps.options``)."""
    from vla_cache_ros.cache.learned import resolve_cache_policy

    resolved = resolve_cache_policy(value, model_path)
    return None if resolved is None else str(resolved)


def verify_actions(model: str, unnorm_key: str | None, runs: list[SessionRun], steps: int, args: Any) -> list[str]:
    """Step a local policy over each session's frames; return mismatches."""
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.policy import CachedVLAPolicy

    resolved = resolve_model(model, unnorm_key)
    policy = CachedVLAPolicy.from_pretrained(resolved.path, mode=args.mode, cache_ratio=args.ratio,
                                             unnorm_key=resolved.unnorm_key,
                                             cache_policy=_cache_policy(args.cache_policy, resolved.path))
    problems = []
    for index, run in enumerate(runs):
        if run.errors or run.restarts:
            continue  # a session that lost steps or its cache cannot be replayed step by step
        policy.reset()
        frames = session_frames(index, 8)
        for step, remote_action in enumerate(run.actions[:steps]):
            local, _ = policy.step(frames[step % len(frames)], session_instruction(index))
            if not np.array_equal(local, remote_action):
                problems.append(f"session {index} step {step}: server {remote_action} != local {local}")
                break
    return problems


def load_test(url: str, args: Any) -> dict[str, Any]:
    """Run the load test; returns the report (see :func:`format_report`)."""
    from vla_cache_ros.serving.client import RemotePolicy

    probe = RemotePolicy(url, "load_probe", args.timeout_s)
    before = probe.health()["counters"]
    deadline = time.monotonic() + args.steps * args.sessions * args.timeout_s
    runs: list[SessionRun | None] = [None] * args.sessions

    def work(index: int) -> None:
        runs[index] = run_session(url, index, args.steps, args, deadline)

    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(args.sessions)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done = [run for run in runs if run is not None]
    after = probe.health()
    latencies = np.asarray([value for run in done for value in run.latencies_s]) * 1000.0
    answered = int(latencies.size)
    server = np.asarray([value for run in done for value in run.server_s]) * 1000.0
    wrong = [problem for run in done for problem in run.wrong]
    if args.verify_model:
        wrong += verify_actions(args.verify_model, args.unnorm_key, done, args.verify_steps, args)
    counters = after["counters"]
    return {"url": url, "sessions": args.sessions, "steps_per_session": args.steps, "encoding": args.encoding,
            "mode": args.mode, "ratio": args.ratio, "requests": args.sessions * args.steps,
            "answered": answered, "errors": [error for run in done for error in run.errors][:10],
            "wrong": wrong[:10], "elapsed_s": elapsed,
            "throughput_steps_s": answered / elapsed if elapsed > 0 else 0.0,
            "latency_ms": ({"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                            "max": float(latencies.max()), "server_step_p50": float(np.percentile(server, 50))}
                           if answered else {}),
            "session_restarts": sum(run.restarts for run in done),
            "evictions": counters["evictions"] - before["evictions"],
            "server_replica_answering_health": after["replica"],
            "verified_steps": args.verify_steps if args.verify_model else 0}


def format_report(report: dict[str, Any]) -> str:
    """The load test's summary lines."""
    latency = report["latency_ms"]
    lines = [f"{report['sessions']} sessions x {report['steps_per_session']} steps ({report['encoding']}, "
             f"{report['mode']} {report['ratio']:g}) against {report['url']}",
             f"answered {report['answered']}/{report['requests']} in {report['elapsed_s']:.1f} s: "
             f"{report['throughput_steps_s']:.1f} steps/s",
             (f"latency p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms, max {latency['max']:.1f} ms "
              f"(the server's step: p50 {latency['server_step_p50']:.1f} ms)" if latency else "no answers"),
             f"evictions {report['evictions']}, sessions restarted {report['session_restarts']}, "
             f"wrong answers {len(report['wrong'])}"
             + (f" (first {report['verified_steps']} steps of each session compared with a local policy)"
                if report["verified_steps"] else "")]
    lines += [f"error: {error}" for error in report["errors"]]
    lines += [f"wrong: {problem}" for problem in report["wrong"]]
    return "\n".join(lines)


def _serve_load(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.steps < 1:
        raise ConfigurationError("--sessions and --steps must be >= 1")
    if args.verify_model:  # its model and cache policy: one error before any request, not after the test
        from vla_cache_ros.models.catalog import resolve_model

        checked_cache_policy(args.cache_policy, resolve_model(args.verify_model, args.unnorm_key).path)
    report = load_test(args.url.rstrip("/"), args)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    lost = report["answered"] != report["requests"]
    return 1 if lost or report["wrong"] else 0


# ----------------------------------------------------------------------------- wire cost
def wire_costs(sizes: list[tuple[int, int]], repeats: int) -> list[dict[str, Any]]:
    """For each (width, height) and encoding: the ``/step`` body's size and the median client
    encode and server decode times (one synthetic camera frame; real camera images compress
    less than it in PNG)."""
    from vla_cache_ros.serving.wire import ENCODINGS, Limits, SessionSettings, parse_step_request, step_request_body
    from vla_cache_ros.synthetic import SyntheticScene

    rows = []
    for width, height in sizes:
        frame = SyntheticScene(height=height, width=width, seed=0).frame(0)
        for encoding in ENCODINGS:
            encode, decode = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                body = step_request_body(frame, "pick up the block", SessionSettings("fixed", 0.5), encoding)
                middle = time.perf_counter()
                decoded = parse_step_request(body, "wire", Limits()).image
                decode.append(time.perf_counter() - middle)
                encode.append(middle - start)
            error = float(np.abs(decoded.astype(np.int16) - frame.astype(np.int16)).mean())
            rows.append({"size": f"{width}x{height}", "encoding": encoding, "body_bytes": len(body),
                         "encode_ms": 1000.0 * float(np.median(encode)), "decode_ms": 1000.0 * float(np.median(decode)),
                         "mean_abs_pixel_error": error})
    return rows


def _serve_wire(args: argparse.Namespace) -> int:
    try:
        sizes = [tuple(int(part) for part in text.lower().split("x")) for text in args.sizes.split(",")]
    except ValueError:
        raise ConfigurationError(f"--sizes must look like 224x224,640x480, got {args.sizes!r}") from None
    print("| frame | encoding | body (KiB) | encode (ms) | decode (ms) | mean abs pixel error |")
    print("|---|---|---|---|---|---|")
    for row in wire_costs(sizes, max(1, args.repeats)):
        print(f"| {row['size']} | {row['encoding']} | {row['body_bytes'] / 1024:.0f} | {row['encode_ms']:.2f} | "
              f"{row['decode_ms']:.2f} | {row['mean_abs_pixel_error']:.2f} |")
    return 0
