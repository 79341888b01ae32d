"""``vla-cache`` subcommands for bags: ``bag-info``, ``synthetic-bag``, ``play``, ``record``
(and ``replay`` once the policy exists).

Registration is cheap: handlers import their modules (rosbags, rclpy, torch) only when run.
``python -m vla_cache_ros.replay.cli`` runs these subcommands alone, without loading the model
stack the full ``vla-cache`` parser registers (seconds faster to start, e.g. in launch files).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vla_cache_ros.errors import ConfigurationError, UserFacingError


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
    from vla_cache_ros.replay.bag_io import BagReader

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

    try:
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
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    info = write_synthetic_bag(args.out, storage=args.storage, spec=spec)
    _log(f"wrote {len(info.frame_times_ns)} frames to {info.path} ({info.storage}): {', '.join(info.topics)}")
    return 0


def _play(args: argparse.Namespace) -> int:
    from vla_cache_ros.replay.live import play_bag

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
    from vla_cache_ros.replay.live import record_bag

    record_bag(
        args.out,
        args.topics,
        storage=args.storage,
        use_sim_time=args.use_sim_time,
        duration_s=args.duration,
        log=_log,
    )
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

    play = subparsers.add_parser("play", help="publish a rosbag2 on its topics with /clock (like ros2 bag play --clock)")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one bag subcommand; user errors print as one line (exit 2), Ctrl-C exits 130."""
    parser = argparse.ArgumentParser(prog="vla-cache", description="rosbag2 tools of vla-cache")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserFacingError as error:
        print(f"vla-cache {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla-cache {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
