"""Task families of the tabletop: language instructions, per-seed layouts, success detection.

A seed fixes everything random about an episode: the task family (unless given), the target
object, where every object lies and how the cubes are turned. Success is judged from the
physics state through the small :class:`SceneQueries` interface, so the same rules serve the
expert, data collection, the ROS node and closed-loop evaluation.

Families:
- ``pick``:  "pick up the red cube"            -> the object is held >= 5 cm above its rest height;
- ``place``: "put the blue cube on the green square" -> the object rests on the square, released;
- ``touch``: "touch the yellow ball"           -> the gripper is in contact with the object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla_cache_ros.errors import UnknownTaskError
from vla_cache_ros.sim.scene import OBJECTS, OBJECTS_BY_NAME

WORKSPACE_X = (0.16, 0.32)
WORKSPACE_Y = (-0.16, 0.16)
MIN_OBJECT_SEPARATION_M = 0.09
MIN_PAD_SEPARATION_M = 0.11
PAD_NAME = "green_square"
LIFT_SUCCESS_HEIGHT_M = 0.05


class SceneQueries(Protocol):
    """What success detection needs to know about the physics state."""

    def object_position(self, name: str) -> np.ndarray: ...

    def gripper_touches(self, name: str) -> bool: ...


@dataclass(frozen=True)
class Task:
    """One episode's task: its family, the object it concerns and the instruction given."""

    family: str
    target: str
    instruction: str
    destination: str | None = None


@dataclass(frozen=True)
class Layout:
    """Initial object placement: (x, y) per object on the table and yaw per movable object."""

    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    yaws: dict[str, float] = field(default_factory=dict)


class TaskFamily:
    """A kind of task: which objects it applies to, how it is worded, when it is solved."""

    name: str = ""
    targets: tuple[str, ...] = ()
    template: str = ""

    def make_task(self, target: str) -> Task:
        return Task(self.name, target, self.template.format(obj=OBJECTS_BY_NAME[target].phrase))

    def is_success(self, task: Task, scene: SceneQueries) -> bool:
        raise NotImplementedError


class PickFamily(TaskFamily):
    name = "pick"
    targets = ("red_cube", "blue_cube")
    template = "pick up the {obj}"

    def is_success(self, task: Task, scene: SceneQueries) -> bool:
        height = scene.object_position(task.target)[2] - OBJECTS_BY_NAME[task.target].rest_height
        return bool(height >= LIFT_SUCCESS_HEIGHT_M and scene.gripper_touches(task.target))


class PlaceFamily(TaskFamily):
    name = "place"
    targets = ("red_cube", "blue_cube")
    template = "put the {obj} on the green square"

    def make_task(self, target: str) -> Task:
        task = super().make_task(target)
        return Task(task.family, task.target, task.instruction, destination=PAD_NAME)

    def is_success(self, task: Task, scene: SceneQueries) -> bool:
        position = scene.object_position(task.target)
        pad = scene.object_position(PAD_NAME)
        inside = bool(np.all(np.abs(position[:2] - pad[:2]) <= OBJECTS_BY_NAME[PAD_NAME].half_size))
        resting = position[2] <= OBJECTS_BY_NAME[task.target].rest_height + 0.01
        return inside and resting and not scene.gripper_touches(task.target)


class TouchFamily(TaskFamily):
    name = "touch"
    targets = ("red_cube", "blue_cube", "yellow_ball")
    template = "touch the {obj}"

    def is_success(self, task: Task, scene: SceneQueries) -> bool:
        return scene.gripper_touches(task.target)


FAMILIES: dict[str, TaskFamily] = {family.name: family for family in (PickFamily(), PlaceFamily(), TouchFamily())}


def family_of(task: Task) -> TaskFamily:
    return FAMILIES[task.family]


def sample_task(rng: np.random.Generator, family: str | None = None, target: str | None = None) -> Task:
    """A task of ``family`` (random if None) about ``target`` (random among the family's)."""
    if family is None:
        family = str(rng.choice(sorted(FAMILIES)))
    if family not in FAMILIES:
        raise UnknownTaskError(f"unknown task family {family!r}; choose from {sorted(FAMILIES)}")
    kind = FAMILIES[family]
    if target is None:
        target = str(rng.choice(kind.targets))
    if target not in kind.targets:
        raise UnknownTaskError(f"family {family!r} has no target {target!r}; choose from {list(kind.targets)}")
    return kind.make_task(target)


def sample_layout(rng: np.random.Generator, max_tries: int = 1000) -> Layout:
    """Random non-overlapping placement of every object inside the reachable workspace."""
    for _ in range(max_tries):
        positions: dict[str, tuple[float, float]] = {}
        for obj in OBJECTS:
            xy = (float(rng.uniform(*WORKSPACE_X)), float(rng.uniform(*WORKSPACE_Y)))
            clear = all(
                np.hypot(xy[0] - other[0], xy[1] - other[1])
                >= (MIN_PAD_SEPARATION_M if PAD_NAME in (obj.name, name) else MIN_OBJECT_SEPARATION_M)
                for name, other in positions.items())
            if not clear:
                break
            positions[obj.name] = xy
        if len(positions) == len(OBJECTS):
            yaws = {obj.name: float(rng.uniform(-np.pi / 4, np.pi / 4)) for obj in OBJECTS if obj.movable}
            return Layout(positions, yaws)
    raise RuntimeError("could not place the objects without overlap")  # geometry bug, not user input


def sample_episode(seed: int, family: str | None = None, target: str | None = None) -> tuple[Task, Layout]:
    """Task and layout for ``seed``: the same seed always gives the same episode."""
    # Separate streams: the layout of a seed does not depend on whether the family was given.
    task = sample_task(np.random.default_rng([seed, 0]), family, target)
    return task, sample_layout(np.random.default_rng([seed, 1]))
