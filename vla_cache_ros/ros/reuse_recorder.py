"""The demo's view of an episode over ROS 2: camera frames paired with the node's reuse masks.

:class:`ReuseRecorder` is an rclpy node in the calling process (own context, spun on a background
thread) that subscribes to the camera topic, ``/<node>/reused_tokens`` and
``/<node>/inference_latency_ms``. Each reuse mask is stamped with the stamp of the camera frame
its step ran on, so the recorder pairs it with that frame (the nearest stamp within
:data:`STAMP_TOLERANCE_S`: the node carries stamps as float seconds, exact to well under a
microsecond) and with the latency the node published just before it for the same step. Between
:meth:`ReuseRecorder.start` and :meth:`ReuseRecorder.stop` it keeps one
:class:`RecordedStep` per inference step; a mask whose frame is no longer buffered is counted
in :attr:`ReuseRecorder.unmatched`, never guessed.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Float32

from vla_cache_ros import topics
from vla_cache_ros.errors import ImageConversionError
from vla_cache_ros.image_conversion import image_to_mask, image_to_rgb
from vla_cache_ros.ros.qos import MONITOR_QOS, SENSOR_QOS
from vla_cache_ros.stamps import stamp_seconds

FRAME_BUFFER = 60
"""Camera frames kept for pairing (6 s at the simulator's 10 Hz: masks arrive one step later)."""
STAMP_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class RecordedStep:
    """One inference step as seen over ROS.

    Attributes:
        stamp_s: the camera frame's stamp (float seconds).
        frame: the camera frame, (H, W, 3) uint8 RGB.
        mask: (grid, grid) bool, True where the node reused the visual token.
        latency_ms: the step's end-to-end inference time, or None when none was heard.
    """

    stamp_s: float
    frame: np.ndarray
    mask: np.ndarray
    latency_ms: float | None

    @property
    def cache_ratio(self) -> float:
        """Share of visual tokens reused: the node's ``cache_ratio`` of this step."""
        return float(self.mask.mean())


class ReuseRecorder:
    """See the module docstring; call :meth:`close` when done (or use it as a context manager)."""

    def __init__(self, policy_node: str = topics.VLA_CACHE_NODE, camera_topic: str = topics.CAMERA_TOPIC,
                 name: str = "vla_cache_demo_recorder") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context)
        self._lock = threading.Lock()
        self._frames: deque[tuple[float, np.ndarray]] = deque(maxlen=FRAME_BUFFER)
        self._steps: list[RecordedStep] = []
        self._latency_ms: float | None = None
        self._recording = False
        self.unmatched = 0  # masks heard while recording whose frame was not buffered
        # The node publishes a step's latency before its mask; subscribed first, it is also taken
        # first when both wait in one spin.
        self.node.create_subscription(Float32, topics.of_node(policy_node, topics.INFERENCE_LATENCY_MS),
                                      self._on_latency, MONITOR_QOS)
        self.node.create_subscription(Image, topics.of_node(policy_node, topics.REUSED_TOKENS), self._on_mask,
                                      MONITOR_QOS)
        self.node.create_subscription(Image, camera_topic, self._on_frame, SENSOR_QOS)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, name="reuse_recorder", daemon=True)
        self._thread.start()

    def __enter__(self) -> "ReuseRecorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- callbacks
    def _on_frame(self, message: Image) -> None:
        try:
            frame = image_to_rgb(message)
        except ImageConversionError:
            return  # the node rejects (and reports) such frames itself
        with self._lock:
            if self._recording:
                self._frames.append((stamp_seconds(message.header.stamp), frame))

    def _on_latency(self, message: Float32) -> None:
        with self._lock:
            self._latency_ms = float(message.data)

    def _on_mask(self, message: Image) -> None:
        stamp_s = stamp_seconds(message.header.stamp)
        try:
            mask = image_to_mask(message)
        except ImageConversionError:
            return
        with self._lock:
            if not self._recording:
                return
            frame = next((f for s, f in reversed(self._frames) if abs(s - stamp_s) <= STAMP_TOLERANCE_S), None)
            if frame is None:
                self.unmatched += 1
                return
            self._steps.append(RecordedStep(stamp_s, frame, mask, self._latency_ms))

    # ------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Forget everything heard so far and record from now on."""
        with self._lock:
            self._frames.clear()
            self._steps = []
            self.unmatched = 0
            self._recording = True

    def stop(self) -> list[RecordedStep]:
        """Stop recording; returns the steps heard since :meth:`start`, in arrival order."""
        with self._lock:
            self._recording = False
            steps, self._steps = self._steps, []
            self._frames.clear()
        return steps

    def close(self) -> None:
        """Stop spinning, then destroy the node and the context."""
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
