"""A serialisable snapshot of the privileged simulator state, for driving the expert remotely.

The scripted expert reads object poses and contacts that a camera-based policy never sees.
To evaluate the expert through the same ROS harness as a policy, the sim node can publish
this snapshot (as JSON); :class:`SceneSnapshot` offers the same query methods as
:class:`~vla_cache_ros.sim.env.TabletopSim`, so :class:`~vla_cache_ros.sim.expert.ScriptedExpert`
acts on either.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.sim.env import EpisodeStatus, TabletopSim
from vla_cache_ros.sim.scene import OBJECTS


@dataclass(frozen=True)
class SceneSnapshot:
    """End-effector pose, object poses and gripper contacts at one instant, plus the episode."""

    episode_status: EpisodeStatus
    time_s: float
    ee_position_m: tuple[float, ...]
    ee_rotation_matrix: tuple[float, ...]  # row-major 3x3
    object_positions: dict[str, tuple[float, ...]]
    object_rotations: dict[str, tuple[float, ...]]
    touching: dict[str, bool]

    @classmethod
    def capture(cls, sim: TabletopSim) -> "SceneSnapshot":
        names = [obj.name for obj in OBJECTS]
        return cls(
            episode_status=sim.status(), time_s=sim.time,
            ee_position_m=tuple(sim.ee_position().tolist()),
            ee_rotation_matrix=tuple(sim.ee_rotation().ravel().tolist()),
            object_positions={n: tuple(sim.object_position(n).tolist()) for n in names},
            object_rotations={n: tuple(sim.object_rotation(n).ravel().tolist()) for n in names},
            touching={n: sim.gripper_touches(n) for n in names})

    # The query interface of TabletopSim that the expert uses.
    def status(self) -> EpisodeStatus:
        return self.episode_status

    def ee_position(self) -> np.ndarray:
        return np.array(self.ee_position_m)

    def ee_rotation(self) -> np.ndarray:
        return np.array(self.ee_rotation_matrix).reshape(3, 3)

    def object_position(self, name: str) -> np.ndarray:
        return np.array(self.object_positions[name])

    def object_rotation(self, name: str) -> np.ndarray:
        return np.array(self.object_rotations[name]).reshape(3, 3)

    def gripper_touches(self, name: str) -> bool:
        return self.touching[name]

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["episode_status"] = self.episode_status.to_dict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "SceneSnapshot":
        try:
            data: dict[str, Any] = json.loads(text)
            status = {k: v for k, v in data.pop("episode_status").items() if k != "done"}
            return cls(episode_status=EpisodeStatus(**status), **{
                key: (tuple(value) if isinstance(value, list) else value) for key, value in data.items()})
        except (ValueError, TypeError, KeyError) as error:
            raise UserFacingError(f"malformed scene snapshot: {error}") from None
