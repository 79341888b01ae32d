"""``vla-cache demo``: the README's first command, the whole loop on a laptop CPU.

Episodes (default): the policy (``models.catalog.DEFAULT_MODEL``, or ``--model``) drives the MuJoCo
arm closed-loop over ROS 2 for a few episodes, both nodes in their own processes on a private
domain; one line per episode and a summary, and a GIF of one episode with the reused visual
tokens overlaid (:mod:`vla_cache_ros.apps.demo_episodes`, on ``sim-eval``'s episode machinery).

Live (``--live``): starts as separate processes, on a private ROS 2 domain with localhost-only
discovery,

- the robot: the MuJoCo arm (``sim_arm_node``) when it imports and renders here, else
  :mod:`vla_cache_ros.ros.synthetic_camera` (generated frames, joint states, EE pose);
- ``vla_cache_node`` with ``config/miniature_demo.yaml`` (actuation on for the simulated arm,
  dry run against the synthetic camera);
- a bag recorder (``vla-cache record``), unless ``--no-record``;

and monitors the node's ``/diagnostics`` from this process, printing one line per second:
state, mode, target/actual cache ratio, latency p50, inference and control rate. With
``--sweep`` it changes ``cache_mode`` / ``cache_ratio`` every few seconds through
``/vla_cache_node/set_parameters``, as rqt_reconfigure does. After ``--duration`` seconds of
live loop, counted from the node's first inference step (the model's loading does not count),
or Ctrl-C, it stops the children (SIGINT, wait, kill) and prints the command that replays the
recorded bag offline. A child that dies early (e.g. a node whose configure failed), or a node
that runs no inference step within ``--startup-timeout``, ends the demo with a one-line error
naming the cause and a non-zero exit.

Offline (``--offline``): loads the model in this process and runs every cache mode over the same
generated frames, interleaved frame by frame (:class:`vla_cache_ros.runs.ModeRunner`, as the
benchmark and the replay comparison do), printing per-step lines and a per-mode summary (median
latency, speedup against the first mode in this run, FLOPs ratio, decode passes, whether
actions matched); with ``--decode speculative`` every mode also runs speculatively decoded.

``--decode speculative`` (the node's ``decode``) drafts with ``--drafter`` (its ``drafter_path``;
default: the model directory's own ``drafter/``, else the previous step's tokens); the header
names the draft. The cache policy (``--cache-policy``, the node's ``cache_policy_path``) and the
drafter directories are read before any child starts, so a broken one is one error naming its
file.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vla_cache_ros import topics
from vla_cache_ros.apps.options import (
    add_cache_policy_argument,
    add_drafter_argument,
    checked_cache_policy,
    checked_drafter,
    describe_draft,
    module_parameter,
)
from vla_cache_ros.cache.modes import DECODE_SETTINGS, default_sweep, parse_mode_list
from vla_cache_ros.errors import ConfigurationError, DemoError
from vla_cache_ros.subprocesses import ChildProcess, sigterm_as_keyboard_interrupt, start_child

DEMO_INSTRUCTION = "pick up the red cube"
PACKAGE = "vla_cache_ros"
CONFIG_NAME = "miniature_demo.yaml"
NODE_NAME = topics.VLA_CACHE_NODE

# The node's relative topic names -> the simulated arm's (and a usual ros2_control / MoveIt
# Servo arm's) topics; the launch file's defaults. joint_states, instruction and ee_pose
# resolve to /joint_states, /instruction and /ee_pose without a remap.
NODE_REMAPS = (
    ("image", "/camera/image_raw"),
    ("twist_cmd", "/servo_node/delta_twist_cmds"),
    ("gripper_command", "/gripper_controller/commands"),
)
RECORDED_TOPICS = (
    "/camera/image_raw", "/joint_states", "/ee_pose", "/instruction",
    f"/{NODE_NAME}/preview/twist_cmd", f"/{NODE_NAME}/preview/gripper_command",
    f"/{NODE_NAME}/cache_ratio", f"/{NODE_NAME}/inference_latency_ms", "/diagnostics",
)
# (cache_mode, cache_ratio) applied in turn by --sweep.
SIM_PROBE = """\
import vla_cache_ros.ros.sim_node
from vla_cache_ros.sim.env import TabletopSim
with TabletopSim() as sim:
    sim.reset(0)
    sim.render()
"""
BAG_FILE_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".yaml")
STOP_TIMEOUT_S = 20.0
EMPTY_YAML = "''"  # `-p name:=` needs a value: the empty string as YAML


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    from vla_cache_ros.apps import demo_episodes as episodes

    parser = subparsers.add_parser(
        "demo", help="a policy (--model; the seeded random tiny one until a trained policy ships) drives the "
                     "MuJoCo arm over ROS 2 for a few episodes, with a GIF of "
                     "the reused visual tokens; --live: status and cache sweeps; --offline: no ROS",
        description="Default: sim_arm_node and vla_cache_node (cache on) as separate "
                    "processes; a few closed-loop episodes, one line each and a summary, and an animated GIF "
                    "of one episode with the reused visual tokens overlaid.")
    parser.add_argument("--model", default=None,
                        help="checkpoint directory or short name: tiny (default: seeded random, made once) or "
                             "sim_policy (the trained policy, once shipped)")
    parser.add_argument("--unnorm-key", default=None,
                        help="dataset statistics to un-normalise with (default: the short name's, e.g. tiny_sim)")
    add_cache_policy_argument(parser)
    parser.add_argument("--decode", choices=DECODE_SETTINGS, default="greedy",
                        help="action-token decoding: greedy, or speculative (the same tokens from fewer decode "
                             "passes; --offline runs each mode both ways; default greedy)")
    add_drafter_argument(parser)
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="the node's torch threads (default: the node's own, 1 on a machine with <= 2 cores, "
                             "where the robot needs the other)")
    parser.add_argument("--log-dir", type=Path, default=Path("out/demo_logs"),
                        help="where the child processes' output goes (default out/demo_logs)")
    parser.add_argument("--startup-timeout", type=_positive_float, default=180.0, metavar="SECONDS",
                        help="give up when the nodes have not started (--live: the node has run no inference "
                             "step) after this long (default 180)")
    episodic = parser.add_argument_group("episodes (default)")
    episodic.add_argument("--mode", default=episodes.DEFAULT_MODE,
                          help="cache mode of the node: vla_cache (default; a bare name keeps the node's "
                               "cache_ratio 0.5 as cap), fixed:R, off, ...")
    episodic.add_argument("--episodes", type=_positive_int, default=episodes.DEFAULT_EPISODES,
                          help=f"episodes to run (default {episodes.DEFAULT_EPISODES}; task families cycled)")
    episodic.add_argument("--families", type=episodes.parse_families, default=None,
                          help="comma-separated task families to cycle through (default: pick,place,touch)")
    episodic.add_argument("--seed", type=int, default=None,
                          help="seed of episode 0 (default: sim-eval's, away from the training data's seeds)")
    episodic.add_argument("--episode-timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                          help="simulated seconds before an episode without success ends (default 30)")
    episodic.add_argument("--out", type=Path, default=episodes.DEFAULT_OUT,
                          help=f"directory for the animation, {episodes.ANIMATION_NAME} "
                               f"(default {episodes.DEFAULT_OUT})")
    live = parser.add_argument_group("live loop (--live)")
    live.add_argument("--live", action="store_true",
                      help="instead of episodes: run the loop for --duration seconds printing the node's status "
                           "once a second (optionally sweeping the cache settings), and record a bag")
    live.add_argument("--duration", type=_positive_float, default=30.0,
                      help="seconds of live loop from the node's first inference step (default 30)")
    live.add_argument("--source", choices=("auto", "sim", "synthetic"), default="auto",
                      help="robot: MuJoCo sim_arm_node, synthetic camera, or auto (sim when it renders here)")
    live.add_argument("--sweep", action="store_true",
                      help="change cache_mode / cache_ratio live via set_parameters, as rqt does")
    live.add_argument("--sweep-period", type=_positive_float, default=5.0, metavar="SECONDS",
                      help="seconds between --sweep changes (default 5)")
    live.add_argument("--record", type=Path, default=Path("out/demo_bag"), metavar="DIR",
                      help="record the run into this rosbag2 directory (default out/demo_bag; "
                           "a previous bag there is replaced)")
    live.add_argument("--no-record", dest="record", action="store_const", const=None, help="do not record a bag")
    offline = parser.add_argument_group("offline (--offline)")
    offline.add_argument("--offline", action="store_true",
                         help="no ROS: run the policy in this process over generated frames, per mode")
    offline.add_argument("--steps", type=int, default=8, help="frames per mode (default 8)")
    offline.add_argument("--modes", default=",".join(default_sweep()),
                         help="comma-separated modes; speedups are against the first (default: %(default)s)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """``vla-cache demo``: episodes, the live loop with ``--live``, or the offline per-mode run
    with ``--offline``."""
    if args.live and args.offline:
        raise ConfigurationError("choose one of --live and --offline")
    if args.offline:
        return run_offline(args)
    with sigterm_as_keyboard_interrupt():  # SIGTERM stops the demo like Ctrl-C
        if args.live:
            return run_live(args)
        from vla_cache_ros.apps.demo_episodes import run_episodes

        threads = node_threads(args.threads)
        env = prepare_ros_environment()
        if args.seed is None:
            from vla_cache_ros.sim.evaluate import DEFAULT_EVAL_SEED

            args.seed = DEFAULT_EVAL_SEED
        return run_episodes(args, env, threads)


# ------------------------------------------------------------------------------------ offline
def run_offline(args: argparse.Namespace) -> int:
    """Run every mode over the same frames, interleaved frame by frame; print per-step lines and a
    summary.

    Raises:
        ConfigurationError: bad ``--modes`` or ``--steps``; CheckpointError: an unreadable ``--model``.
    """
    import numpy as np

    from vla_cache_ros.cache.drafter import resolve_drafter
    from vla_cache_ros.cache.learned import resolve_cache_policy
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.models.vla import load_vla
    from vla_cache_ros.runs import ModeRunner, prepare_compute
    from vla_cache_ros.stages import STAGES
    from vla_cache_ros.synthetic import SyntheticScene

    specs = [spec.text for spec in parse_mode_list(args.modes)]
    if args.steps < 1:
        raise ConfigurationError(f"--steps must be >= 1, got {args.steps}")
    threads = node_threads(args.threads) if args.threads is not None else max(1, min(4, os.cpu_count() or 1))
    prepare_compute("cpu", threads=threads)
    resolved = resolve_model(args.model, args.unnorm_key)
    model_dir = resolved.path
    decodes = ("greedy", "speculative") if args.decode == "speculative" else ("greedy",)
    runner = ModeRunner(load_vla(model_dir), specs, unnorm_key=resolved.unnorm_key, warmup=1, decodes=decodes,
                        cache_policy=resolve_cache_policy(args.cache_policy, model_dir),
                        drafter=resolve_drafter(args.drafter, model_dir))
    frames = SyntheticScene(seed=7, height=240, width=320).frames(args.steps)
    print(f"model: {model_dir}  ({runner.num_visual} visual tokens, "
          f"{runner.model.llama_config.num_hidden_layers} decoder layers, {threads} torch threads)  "
          f"instruction: {DEMO_INSTRUCTION!r}")
    if args.decode == "speculative":
        print(f"each mode also decodes speculatively; draft: {describe_draft(runner.drafter_source)}")
    width = max(12, *(len(key) for key in runner.keys))
    for frame in frames:
        for step in runner.step_frame(frame, DEMO_INSTRUCTION):
            stages = " ".join(f"{stage}={1000 * step.stats.times_s[stage]:.1f}" for stage in STAGES)
            print(f"[{step.spec:>{width}}] step {step.frame_index}: reused {step.stats.reused_tokens:3d}/"
                  f"{runner.num_visual} ms: {stages}  "
                  f"action={np.array2string(step.action, precision=4, suppress_small=True)}")
    print(f"\n{'mode':<{width + 1}} median step ms  speedup vs first  FLOPs ratio  decode passes  "
          "actions equal to first")
    for key in runner.keys:
        median_ms = 1000 * runner.median_s(key)["total"]
        timed = runner.timed_steps(key)
        flops_ratio = float(np.mean([step.stats.flops_ratio for step in timed]))
        passes = float(np.mean([step.stats.decode_passes for step in timed]))
        print(f"{key:<{width + 1}} {median_ms:14.1f}  {runner.speedup(key):16.2f}  {flops_ratio:11.3f}  "
              f"{passes:13.2f}  {runner.identical_action_fraction(key):>8.0%}")
    return 0


# ------------------------------------------------------------------------------ live: setup
def prepare_ros_environment() -> dict[str, str]:
    """Private domain (unless ROS_DOMAIN_ID is set), localhost-only discovery, large-data DDS.

    Set in this process (its monitor joins the same domain) and returned for the children.
    """
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    return dict(os.environ, PYTHONUNBUFFERED="1")


def find_config(name: str = CONFIG_NAME) -> Path:
    """The package's config file: ament index (colcon install), pip's share/, or the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / name)
        except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH (nothing sourced)
            pass
    except ImportError:
        pass
    candidates += [Path(sys.prefix) / "share" / PACKAGE / "config" / name,
                   Path(__file__).resolve().parents[2] / "config" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigurationError(f"cannot find config/{name}; looked in: {', '.join(map(str, candidates))}")


def start_sim_probe(env: dict[str, str]) -> subprocess.Popen:
    """Check in a child process that the MuJoCo arm imports and renders (runs while we go on)."""
    return subprocess.Popen([sys.executable, "-c", SIM_PROBE], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def sim_probe_result(probe: subprocess.Popen, timeout_s: float = 60.0) -> str | None:
    """None when the probe rendered a frame, else why not (one line)."""
    try:
        _, stderr = probe.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return f"rendering a frame took over {timeout_s:.0f} s"
    if probe.returncode == 0:
        return None
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {probe.returncode}"


def prepare_bag_directory(directory: Path) -> None:
    """Make room for a new bag: replace a previous bag, refuse to touch anything else."""
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        return
    entries = list(directory.iterdir()) if directory.is_dir() else [directory]
    if not directory.is_dir() or not all(e.is_file() and e.name.endswith(BAG_FILE_SUFFIXES) for e in entries):
        raise ConfigurationError(f"{directory} exists and is not a rosbag2 directory; choose another --record DIR")
    shutil.rmtree(directory)


# ----------------------------------------------------------------------------- live: children
def _log_summary(path: Path) -> str:
    """The most telling line of a child's log: its last error line, else its last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no output)"
    errors = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    line = (errors or lines or ["(no output)"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass
class Child(ChildProcess):
    """One child process of the demo, its output going to a log file."""

    reported: bool = False  # its early exit was already reported

    def problem_at_exit(self) -> str | None:
        """Why this child's exit was not clean (exit code, traceback), or None. Ended by the
        demo's own SIGINT before it had started (see ``ended_by_our_interrupt``) is clean."""
        code = self.process.returncode
        if self.ended_by_our_interrupt():
            return None
        if code != 0:
            return f"{self.name} exited with code {code}: {_log_summary(self.log_path)} (log: {self.log_path})"
        if "Traceback (most recent call last)" in self.log_path.read_text(errors="replace"):
            return f"{self.name} printed a traceback: {_log_summary(self.log_path)} (log: {self.log_path})"
        return None


@dataclass
class Children:
    """The demo's child processes: started in order, stopped in reverse order."""

    log_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, arguments: Sequence[str]) -> Child:
        """Start ``python ARGUMENTS`` in its own session (Ctrl-C reaches only the demo), ended
        by SIGTERM should the demo die without stopping it."""
        started = start_child(name, [sys.executable, *arguments], self.log_dir, env=self.env, own_session=True,
                              die_with_parent=True)
        child = Child(started.name, started.process, started.log_path)
        self.children.append(child)
        return child

    def check_running(self, waiting_for: str | None = None) -> None:
        """Raise DemoError naming the first child that has exited, the most telling line of its
        log and what the demo was ``waiting_for`` (e.g. the node's first inference step)."""
        for child in self.children:
            code = child.exit_code
            if code is not None:
                child.reported = True
                waiting = f" while waiting for {waiting_for}" if waiting_for else ""
                raise DemoError(f"{child.name} exited early{waiting} (code {code}): {_log_summary(child.log_path)} "
                                f"(log: {child.log_path})")

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGINT each child (last started first), wait, kill if needed; returns the problems.

        A second Ctrl-C while waiting kills the remaining children at once.
        """
        problems: list[str] = []
        pending = list(reversed(self.children))
        try:
            while pending:
                child = pending[0]
                if not child.interrupt(timeout_s):
                    problems.append(f"{child.name} did not stop within {timeout_s:.0f} s of SIGINT; killed "
                                    f"(log: {child.log_path})")
                elif not child.reported and (problem := child.problem_at_exit()) is not None:
                    problems.append(problem)
                pending.pop(0)
        except KeyboardInterrupt:
            for child in pending:
                child.kill()
            problems.append("interrupted again while stopping: killed " + ", ".join(c.name for c in pending))
        return problems


# --------------------------------------------------------------------------------- live: run
def robot_command(source: str, probe: subprocess.Popen | None) -> tuple[str, list[str], bool]:
    """(child name, python arguments, actuation) of the robot for ``--source`` (``probe``: the
    running :func:`start_sim_probe` unless the source is ``synthetic``)."""
    if probe is not None:
        why_not = sim_probe_result(probe)
        if why_not is None:
            return "sim_arm_node", ["-m", "vla_cache_ros.ros.sim_node", "--ros-args",
                                    "-p", "auto_reset:=true"], True
        if source == "sim":
            raise DemoError(f"the MuJoCo arm is not available here: {why_not}")
        print(f"MuJoCo arm not available ({why_not}); using the synthetic camera instead", flush=True)
    return "synthetic_camera", ["-m", "vla_cache_ros.ros.synthetic_camera", "--ros-args",
                                "-p", f"instruction:={DEMO_INSTRUCTION}"], False


def node_threads(requested: int | None) -> int | None:
    """Torch threads for the node: ``requested``, else 1 on <= 2 cores, else None (the config's).

    With two cores shared with the robot and the recorder, a second intra-op thread makes
    steps wait for a descheduled thread: latency jumps tenfold.
    """
    if requested is not None:
        if requested < 1:
            raise ConfigurationError(f"--threads must be >= 1, got {requested}")
        return requested
    return 1 if (os.cpu_count() or 1) <= 2 else None


def node_command(config: Path, model: Path, unnorm_key: str, actuation: bool,
                 threads: int | None = None, cache_policy: str | None = None, drafter: str | None = None,
                 decode: str | None = None) -> list[str]:
    """Python arguments that start ``vla_cache_node`` on the demo config (``cache_policy``,
    ``drafter``: its ``cache_policy_path``, ``drafter_path``; ``decode``: its ``decode``; None:
    the config's, i.e. the model's own directories and greedy decoding)."""
    arguments = ["-m", "vla_cache_ros.ros.node", "--ros-args", "--params-file", str(config),
                 "-p", f"model_path:={model}", "-p", f"unnorm_key:={unnorm_key or EMPTY_YAML}",
                 "-p", f"enable_actuation:={'true' if actuation else 'false'}"]
    if cache_policy:
        arguments += ["-p", f"cache_policy_path:={cache_policy}"]
    if drafter:
        arguments += ["-p", f"drafter_path:={drafter}"]
    if decode:
        arguments += ["-p", f"decode:={decode}"]
    if threads is not None:
        arguments += ["-p", f"num_threads:={threads}"]
    for inner, outer in NODE_REMAPS:
        arguments += ["-r", f"{inner}:={outer}"]
    return arguments


def recorder_command(directory: Path) -> list[str]:
    """Python arguments of the bag recorder (the bag tools alone, without the model stack)."""
    return ["-m", "vla_cache_ros.apps.bag_commands", "record", str(directory), "--topics", *RECORDED_TOPICS]


def describe_bag(directory: Path) -> str:
    """'N messages, M camera frames' of a recorded bag (BagError when unreadable)."""
    from vla_cache_ros.replay.bag_reader import BagReader

    with BagReader(directory) as bag:
        frames = bag.topics["/camera/image_raw"].message_count if "/camera/image_raw" in bag.topics else 0
        return f"{bag.message_count} messages, {frames} camera frames, {bag.duration_ns / 1e9:.1f} s"


def run_live(args: argparse.Namespace) -> int:
    """Start robot, node and recorder; monitor; stop everything; print the replay command."""
    from vla_cache_ros.models.catalog import TINY_MODEL, resolve_model

    if args.model != TINY_MODEL:  # a missing model is one error before anything starts (tiny: below)
        resolve_model(args.model, args.unnorm_key)
    threads = node_threads(args.threads)
    env = prepare_ros_environment()
    config = find_config()
    if args.record is not None:
        prepare_bag_directory(args.record)
    children = Children(args.log_dir, env)
    probe: subprocess.Popen | None = None
    failure: DemoError | None = None
    stopped_code = 0  # Ctrl-C ends the live loop (0); SIGTERM (Terminated) exits 143, as the README says
    try:
        probe = start_sim_probe(env) if args.source != "synthetic" else None  # runs while the model is made
        resolved = resolve_model(args.model, args.unnorm_key)  # writes tiny once, while the probe runs
        model, unnorm_key = resolved.path.resolve(), resolved.unnorm_key or ""
        cache_policy = checked_cache_policy(args.cache_policy, model)  # a broken one (or drafter): one error
        drafter = checked_drafter(args.drafter, model)  # before the node starts
        print(f"vla-cache demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} "
              f"(discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE'].lower()}); child logs in {args.log_dir}/")
        print(f"model {model}; config {config}"
              f"{'' if threads is None else f'; {threads} torch thread(s)'}"
              f"{f'; speculative decoding, draft: {describe_draft(drafter)}' if args.decode == 'speculative' else ''}",
              flush=True)
        name, arguments, actuation = robot_command(args.source, probe)
        print(f"robot: {name} ({'actuation enabled' if actuation else 'node in dry run'}); "
              f"recording: {args.record if args.record is not None else 'off'}"
              f"{'; sweeping cache settings every %gs' % args.sweep_period if args.sweep else ''}", flush=True)
        children.start(name, arguments)
        if args.record is not None:
            children.start("recorder", recorder_command(args.record))
        children.start(NODE_NAME, node_command(config, model, unnorm_key, actuation, threads,
                                               module_parameter(cache_policy), module_parameter(drafter),
                                               args.decode))
        from vla_cache_ros.ros.demo_monitor import LiveOptions, monitor_loop
        from vla_cache_ros.ros.process import ros_session  # SIGTERM -> KeyboardInterrupt, own context

        with ros_session("vla_cache_demo_monitor") as node:
            monitor_loop(node, children, LiveOptions(args.duration, args.startup_timeout,
                                                     args.sweep_period if args.sweep else None))
    except KeyboardInterrupt as stop:
        print("interrupted", flush=True)
        stopped_code = int(getattr(stop, "exit_code", 0))
    except DemoError as error:
        failure = error
    finally:
        if probe is not None and probe.poll() is None:
            probe.kill()
            probe.wait()
        if children.children:
            print("stopping ...", flush=True)
        problems = children.stop_all()
    for problem in problems:
        print(f"vla-cache demo: {'while stopping: ' if failure else 'error: '}{problem}", file=sys.stderr)
    if failure is not None:
        raise failure
    if problems:
        return 1
    if args.record is not None and (args.record / "metadata.yaml").is_file():
        print(f"recorded {args.record}: {describe_bag(args.record)}")
        model_option = resolved.name or f"{resolved.path}{f' --unnorm-key {unnorm_key}' if unnorm_key else ''}"
        print("replay it offline (cache modes side by side: speedup, action fidelity, plots):")
        print(f"  {vla_cache_command()} replay {args.record} --model {model_option}", flush=True)
    return stopped_code


def vla_cache_command() -> str:
    """How the user can call ``vla-cache``: the bare name when it is on PATH, else the venv path."""
    if shutil.which("vla-cache"):
        return "vla-cache"
    candidate = Path(sys.executable).parent / "vla-cache"
    if candidate.exists():
        try:
            return str(candidate.relative_to(Path.cwd()))
        except ValueError:
            return str(candidate)
    return "vla-cache"
