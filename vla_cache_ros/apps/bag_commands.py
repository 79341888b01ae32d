"""``vla-cache`` subcommands for bags: ``bag-info``, ``synthetic-bag``, ``play``, ``record`` and
``replay`` (offline comparison of cache modes).

Registration is cheap: handlers import their modules (rosbags, rclpy, torch) only when run.
``python -m vla_cache_ros.apps.bag_commands`` runs these subcommands alone, without loading the model
stack the full ``vla-cache`` parser registers (seconds faster to start, e.g. in launch files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from vla_cache_ros.apps.options import add_cache_policy_argument, add_drafter_argument


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bag_info(args: argparse.Namespace) -> int:
    from vla_cache_ros.replay.bag_reader import BagReader

    with BagReader(args.bag) as bag:
        print(f"bag:      {bag.path}")
        print(f"storage:  {bag.storage}")
        print(f"duration: {bag.duration_ns / 1e9:.3f} s")
        print(f"start:    {bag.start_time_ns / 1e9:.9f} s")
        print(f"messages: {bag.message_count}")
        print("topics:")
        print(bag.describe_topics())
    return 0


def _synthetic_bag(args: argparse.Namespace) -> int:
    from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag

    spec = SyntheticBagSpec(
        num_frames=args.frames,
        camera_hz=args.camera_hz,
        joint_hz=args.joint_hz,
        height=args.size[0],
        width=args.size[1],
        image_encoding=args.encoding,
        instruction=args.instruction or None,
        joint_states=not args.no_joint_states,
        commands=args.commands,
        seed=args.seed,
    )
    info = write_synthetic_bag(args.out, storage=args.storage, spec=spec)
    _log(f"wrote {len(info.frame_times_ns)} frames to {info.path} ({info.storage}): {', '.join(info.topics)}")
    return 0


def _play(args: argparse.Namespace) -> int:
    from vla_cache_ros.ros.bag_live import play_bag

    play_bag(
        args.bag,
        rate=args.rate,
        loop=args.loop,
        topics=args.topics,
        clock_hz=args.clock_hz,
        delay_s=args.delay,
        wait_for_subscribers_s=args.wait_for_subscribers,
        log=_log,
    )
    return 0


def _record(args: argparse.Namespace) -> int:
    from vla_cache_ros.ros.bag_live import record_bag

    record_bag(
        args.out,
        args.topics,
        storage=args.storage,
        use_sim_time=args.use_sim_time,
        duration_s=args.duration,
        log=_log,
    )
    return 0


def _topic(text: str) -> str | None:
    """A topic option: a name, ``auto`` (find by type) or ``none`` (do not use)."""
    return None if text.lower() == "none" else text


def default_replay_out(bag: str | Path, model: str | None) -> Path:
    """``out/replay/<bag name>/<model name>``: replays of one bag with different models (a
    checkpoint directory's name, or the short name) do not overwrite each other."""
    from vla_cache_ros.models.catalog import DEFAULT_MODEL

    return Path("out/replay") / Path(bag).name / Path(model.rstrip("/") if model else DEFAULT_MODEL).name


def _replay(args: argparse.Namespace) -> int:
    from vla_cache_ros.apps.replay import ReplayOptions, print_summary, run_replay

    options = ReplayOptions(
        bag=args.bag,
        model=args.model,
        modes=args.modes,
        out=args.out if args.out is not None else default_replay_out(args.bag, args.model),
        image_topic=args.image_topic,
        joint_topic=args.joint_topic,
        instruction_topic=args.instruction_topic,
        command_topic=args.command_topic,
        instruction=args.instruction,
        joint_alignment=args.joint_alignment,
        every=args.every,
        max_frames=args.max_frames,
        warmup=args.warmup,
        unnorm_key=args.unnorm_key,
        device=args.device,
        dtype=args.dtype,
        center_crop=args.center_crop,
        threads=args.threads,
        plots=not args.no_plots,
        progress=False if args.no_progress else None,
        cache_policy=args.cache_policy,
        drafter=args.drafter,
        decodes=args.decode,
    )
    print_summary(run_replay(options, log=_log))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the bag subcommands to the ``vla-cache`` parser."""
    info = subparsers.add_parser("bag-info", help="list a rosbag2's topics, types and counts")
    info.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    info.set_defaults(handler=_bag_info)

    synth = subparsers.add_parser(
        "synthetic-bag", help="write a demo rosbag2 from a synthetic scene (camera, joints, instruction)"
    )
    synth.add_argument("out", help="new bag directory")
    synth.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    synth.add_argument("--frames", type=int, default=30, help="camera frames (default 30)")
    synth.add_argument("--camera-hz", type=_positive_float, default=10.0)
    synth.add_argument("--joint-hz", type=_positive_float, default=50.0)
    synth.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    synth.add_argument("--encoding", choices=("rgb8", "bgr8", "jpeg", "png"), default="rgb8",
                       help="raw Image encoding, or CompressedImage format")
    synth.add_argument("--instruction", default="pick up the block", help="'' for no instruction topic")
    synth.add_argument("--no-joint-states", action="store_true")
    synth.add_argument("--commands", action="store_true", help="also write recorded 7-D commands")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synthetic_bag)

    play = subparsers.add_parser(
        "play", help="publish a rosbag2 on its topics with /clock (like ros2 bag play --clock)")
    play.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    play.add_argument("--rate", type=_positive_float, default=1.0, help="speed factor (default 1.0)")
    play.add_argument("--loop", action="store_true", help="repeat until interrupted")
    play.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics (default: all)")
    play.add_argument("--clock-hz", type=_non_negative_float, default=40.0,
                      help="/clock publication rate in Hz; 0 disables /clock (default 40)")
    play.add_argument("--delay", type=_non_negative_float, default=0.0, help="seconds to wait before playing")
    play.add_argument("--wait-for-subscribers", type=_non_negative_float, default=0.0, metavar="SECONDS",
                      help="wait up to SECONDS until every topic has a subscriber")
    play.set_defaults(handler=_play)

    record = subparsers.add_parser("record", help="record topics into a rosbag2 (like ros2 bag record)")
    record.add_argument("out", help="new bag directory")
    record.add_argument("--topics", nargs="+", required=True, metavar="TOPIC")
    record.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    record.add_argument("--use-sim-time", action="store_true", help="timestamp with /clock time")
    record.add_argument("--duration", type=_positive_float, help="stop after this many seconds (wall time)")
    record.set_defaults(handler=_record)

    replay = subparsers.add_parser(
        "replay", help="compare cache modes offline on a bag: speedup vs off, action fidelity, plots")
    replay.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    replay.add_argument("--model", default=None,
                        help="OpenVLA-format checkpoint directory, or a short name: tiny (default: seeded "
                             "random, made once) or sim_policy (the trained policy, once shipped)")
    replay.add_argument("--modes", default="off,fixed:0.5,fixed:0.75,vla_cache",
                        help="comma-separated cache modes; off is added first if missing (default: %(default)s)")
    replay.add_argument("--out", type=Path, default=None,
                        help="output directory for replay.json, steps.csv, plots (default: out/replay/<bag "
                             "name>/<model name>)")
    add_cache_policy_argument(replay)
    add_drafter_argument(replay)
    replay.add_argument("--decode", default="greedy",
                        help="comma-separated decode settings each mode runs with, greedy first: greedy, "
                             "speculative (a draft -- the --drafter's, else the previous step's tokens -- verified "
                             "inside the prefill; same tokens) (default: %(default)s)")
    topics = replay.add_argument_group("topics ('auto': found by type, 'none': not used)")
    topics.add_argument("--image-topic", type=_topic, default="auto", help="Image or CompressedImage")
    topics.add_argument("--joint-topic", type=_topic, default="auto", help="JointState")
    topics.add_argument("--instruction-topic", type=_topic, default="auto", help="std_msgs/String")
    topics.add_argument("--command-topic", type=_topic, default="auto",
                        help="recorded commands (Float64MultiArray, Twist[Stamped], JointTrajectory)")
    replay.add_argument("--instruction", help="task instruction (overrides the bag's instruction topic)")
    replay.add_argument("--joint-alignment", choices=("interpolate", "previous"), default="interpolate")
    replay.add_argument("--every", type=int, default=1, help="use every N-th frame")
    replay.add_argument("--max-frames", type=int, default=None)
    replay.add_argument("--warmup", type=int, default=1, help="steps left out of timing medians (default 1)")
    replay.add_argument("--unnorm-key", default=None, help="dataset statistics to un-normalise actions with")
    replay.add_argument("--device", default="cpu", help="cpu or cuda")
    replay.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on cpu, bfloat16 on cuda")
    replay.add_argument("--center-crop", action="store_true", help="LIBERO-style 0.9-area centre crop")
    replay.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    replay.add_argument("--no-plots", action="store_true")
    replay.add_argument("--no-progress", action="store_true")
    replay.set_defaults(handler=_replay)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one bag subcommand without importing the model stack (fast start)."""
    from vla_cache_ros.apps.cli import run_command

    parser = argparse.ArgumentParser(prog="vla-cache", description="rosbag2 tools of vla-cache")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
