"""Camera frames from bags (both storages): images, joint-state alignment, instructions, recorded
commands, topic choice, options and bounded memory."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from test.replay.helpers import STORAGES, seconds_since_start, write_small_bag
from vla_cache_ros.errors import BagError, ConfigurationError
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.bag_writer import BagWriter
from vla_cache_ros.replay.frames import FrameReader, JointSample, align_joint_state
from vla_cache_ros.replay.messages import image_message
from vla_cache_ros.replay.synthetic_bag import JOINT_NAMES, joint_positions, joint_velocities, synthetic_action
from vla_cache_ros.synthetic import SyntheticScene


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "png"])
def test_frames_read_back_exactly(tmp_path: Path, storage: str, encoding: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage, image_encoding=encoding, commands=True)
    scene = SyntheticScene(height=48, width=64, seed=0)
    with BagReader(info.path) as bag:
        assert bag.storage == storage
        frames_reader = FrameReader(bag)
        frames = list(frames_reader)
    assert len(frames_reader) == len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    assert [f.timestamp_ns for f in frames] == info.frame_times_ns
    assert [f.stamp_ns for f in frames] == info.frame_times_ns
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (48, 64, 3)
        np.testing.assert_array_equal(frame.image, scene.frame(frame.index))
        assert frame.instruction == "pick up the block"
    # the moving block makes consecutive frames differ
    assert not np.array_equal(frames[0].image, frames[5].image)


@pytest.mark.parametrize("storage", STORAGES)
def test_jpeg_frames_decode_close_to_source(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage, image_encoding="jpeg")
    scene = SyntheticScene(height=48, width=64, seed=0)
    with BagReader(info.path) as bag:
        frames = list(FrameReader(bag))
        assert bag.topics["/camera/image_raw/compressed"].msgtype == "sensor_msgs/msg/CompressedImage"
    assert len(frames) == 12
    error = np.abs(frames[3].image.astype(int) - scene.frame(3).astype(int)).mean()
    assert error < 12.0


@pytest.mark.parametrize("storage", STORAGES)
def test_joint_states_interpolated_between_neighbouring_samples(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage)
    spec = info.spec
    joint_times = np.array(info.joint_times_ns)
    with BagReader(info.path) as bag:
        frames = list(FrameReader(bag))
    for frame in frames:
        state = frame.joint_state
        assert state is not None and state.names == JOINT_NAMES
        after = int(np.searchsorted(joint_times, frame.timestamp_ns, side="right"))
        t0, t1 = joint_times[after - 1], joint_times[after]
        assert t0 < frame.timestamp_ns < t1  # frames fall strictly between samples
        weight = (frame.timestamp_ns - t0) / (t1 - t0)
        for values, function in ((state.position, joint_positions), (state.velocity, joint_velocities)):
            before_value = function(seconds_since_start(spec, t0))
            after_value = function(seconds_since_start(spec, t1))
            np.testing.assert_allclose(values, before_value + weight * (after_value - before_value), atol=1e-12)
        assert state.effort.size == 0
        assert state.timestamp_ns == frame.timestamp_ns
        # interpolation is close to the true smooth value, unlike a stale sample would be
        true_position = joint_positions(seconds_since_start(spec, frame.timestamp_ns))
        np.testing.assert_allclose(state.position, true_position, atol=1e-3)


@pytest.mark.parametrize("storage", STORAGES)
def test_joint_states_previous_mode_holds_the_earlier_sample(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage)
    joint_times = np.array(info.joint_times_ns)
    with BagReader(info.path) as bag:
        frames = list(FrameReader(bag, joint_alignment="previous"))
    for frame in frames:
        before = joint_times[joint_times <= frame.timestamp_ns].max()
        assert frame.joint_state.timestamp_ns == before
        expected = joint_positions(seconds_since_start(info.spec, before))
        np.testing.assert_array_equal(frame.joint_state.position, expected)


def test_joint_sample_exactly_at_frame_time_is_used_as_is(tmp_path: Path) -> None:
    info = write_small_bag(tmp_path, "bag", "mcap", joint_offset_s=0.0, joint_hz=20.0)  # camera 10 Hz
    with BagReader(info.path) as bag:
        frames = list(FrameReader(bag))
    for frame in frames:
        expected = joint_positions(seconds_since_start(info.spec, frame.timestamp_ns))
        np.testing.assert_array_equal(frame.joint_state.position, expected)


def test_align_joint_state_rules() -> None:
    def sample(t: int, value: float, names: tuple[str, ...] = ("a",)) -> JointSample:
        return JointSample(t, names, np.array([value]), np.array([]), np.array([2 * value]))

    assert align_joint_state(50, None, sample(60, 1.0)) is None  # never extrapolated backwards
    assert align_joint_state(10, sample(0, 0.0), None).position[0] == 0.0  # held at the end
    mid = align_joint_state(25, sample(0, 0.0), sample(100, 4.0))
    assert mid.position[0] == pytest.approx(1.0) and mid.effort[0] == pytest.approx(2.0)
    assert mid.velocity.size == 0
    renamed = align_joint_state(25, sample(0, 0.0), sample(100, 4.0, ("b",)))
    assert renamed.position[0] == 0.0  # different joints: no interpolation
    assert align_joint_state(25, sample(0, 0.0), sample(100, 4.0), "previous").position[0] == 0.0
    with pytest.raises(ValueError):
        align_joint_state(25, None, None, "nearest")


@pytest.mark.parametrize("storage", STORAGES)
def test_recorded_commands_follow_their_frame(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage, commands=True)
    scene = SyntheticScene(height=48, width=64, seed=0)
    with BagReader(info.path) as bag:
        reader = FrameReader(bag)
        assert reader.topics.command == "/vla/action"
        frames = list(reader)
    latency_ns = round(info.spec.command_latency_s * 1e9)
    for frame in frames:
        assert frame.command is not None
        assert frame.command.timestamp_ns == frame.timestamp_ns + latency_ns
        np.testing.assert_array_equal(frame.command.values, synthetic_action(scene, frame.index))


@pytest.mark.parametrize("storage", STORAGES)
def test_bag_without_joint_states_or_instruction_works(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage, joint_states=False, instruction=None)
    with BagReader(info.path) as bag:
        reader = FrameReader(bag, instruction="open the drawer")
        frames = list(reader)
        assert reader.topics.joint_states is None and reader.topics.command is None
        with pytest.raises(BagError) as error:
            FrameReader(bag, joint_topic="/joint_states")
    assert len(frames) == 12
    assert all(f.joint_state is None and f.instruction == "open the drawer" for f in frames)
    assert "/camera/image_raw" in str(error.value) and "sensor_msgs/msg/Image" in str(error.value)


def test_given_instruction_overrides_the_topic(tmp_path: Path) -> None:
    info = write_small_bag(tmp_path, "bag", "mcap")
    with BagReader(info.path) as bag:
        assert {f.instruction for f in FrameReader(bag, instruction="stack the cups")} == {"stack the cups"}


def test_subsampling_and_max_frames(tmp_path: Path) -> None:
    info = write_small_bag(tmp_path, "bag", "sqlite3", commands=True)
    with BagReader(info.path) as bag:
        every_third = FrameReader(bag, every=3)
        assert len(every_third) == 4
        frames = list(every_third)
        limited = list(FrameReader(bag, max_frames=5))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [f.timestamp_ns for f in frames] == info.frame_times_ns[::3]
    assert frames[1].command.timestamp_ns > frames[1].timestamp_ns  # commands still per recorded frame
    assert [f.index for f in limited] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("storage", STORAGES)
def test_missing_topic_error_lists_topics_and_types(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage)
    with BagReader(info.path) as bag:
        with pytest.raises(BagError) as error:
            FrameReader(bag, image_topic="/wrist/image_raw")
        with pytest.raises(BagError) as wrong_type:
            FrameReader(bag, image_topic="/joint_states")
    message = str(error.value)
    assert "/wrist/image_raw" in message
    for topic, msgtype in (
        ("/camera/image_raw", "sensor_msgs/msg/Image"),
        ("/joint_states", "sensor_msgs/msg/JointState"),
        ("/instruction", "std_msgs/msg/String"),
    ):
        assert topic in message and msgtype in message
    assert "sensor_msgs/msg/JointState" in str(wrong_type.value) and "expected" in str(wrong_type.value)


def test_several_image_topics_need_a_choice(tmp_path: Path) -> None:
    scene = SyntheticScene(height=16, width=16)
    path = tmp_path / "two_cameras"
    with BagWriter(path, storage="sqlite3") as writer:
        for i in range(3):
            writer.write("/front/image", image_message(scene.frame(i), 1000 + i), 1000 + i)
            writer.write("/wrist/image", image_message(scene.frame(i + 5), 1000 + i), 1000 + i)
    with BagReader(path) as bag:
        with pytest.raises(BagError, match="several camera image topics"):
            FrameReader(bag)
        frames = list(FrameReader(bag, image_topic="/wrist/image"))
    np.testing.assert_array_equal(frames[0].image, scene.frame(5))


@pytest.mark.parametrize("storage", STORAGES)
def test_frame_iteration_memory_stays_bounded(tmp_path: Path, storage: str) -> None:
    """40 frames of 480x640 (37 MB of images): iterating holds a few frames and a storage chunk,
    far less than the whole bag (holding every frame peaks above 37 MB)."""
    info = write_small_bag(tmp_path, "big", storage, height=480, width=640, num_frames=40, joint_hz=30.0)
    frame_bytes = 480 * 640 * 3
    with BagReader(info.path) as bag:
        reader = FrameReader(bag)
        tracemalloc.start()
        try:
            count = 0
            for frame in reader:
                count += 1
                del frame
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 40
    assert peak < 12 * frame_bytes, f"peak {peak / 1e6:.1f} MB while iterating"


@pytest.mark.parametrize("options, message", [
    (dict(every=0), "every"), (dict(max_frames=-1), "max_frames"), (dict(joint_alignment="nearest"), "nearest")])
def test_bad_options_are_configuration_errors(tmp_path: Path, options: dict, message: str) -> None:
    info = write_small_bag(tmp_path, "bag", "mcap")
    with BagReader(info.path) as bag:
        with pytest.raises(ConfigurationError, match=message):
            FrameReader(bag, **options)
