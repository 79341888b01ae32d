"""Expert data collection: episodes -> training dataset (npz) and rosbag2 recordings; resumable.

Episode ``i`` of a collection uses seed ``seed + i`` and task family ``families[i % len]``, so a
collection is a deterministic function of its settings and can be extended or resumed: an
episode whose ``.npz`` exists is skipped; a bag without its ``.npz`` (the run stopped between
the two) is discarded and the episode re-recorded. Settings are kept in ``manifest.json`` and a
resume with different settings is refused. Norm stats are recomputed at the end over every
successful episode in the directory.

Timing per step: the observation (image, proprio, joints) is taken, the expert acts, and the
action is executed over one control period, during which joint states and the end-effector
pose are recorded at ``joint_state_hz``.

States off the expert's path: in a ``noise_fraction`` of the episodes (spread evenly over the
indices) the *executed* action is the expert's plus Gaussian noise on translation and rotation,
while the *recorded* label stays the expert's clean action for the state it saw. A cloned policy
then sees how the expert corrects drift, instead of only its own perfect path (the idea of
DART, Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning"). The noise of
episode ``i`` is seeded by ``(seed, i)``, so a collection stays deterministic and resumable.

Larger excursions (``excursion_fraction``): Gaussian noise of a few millimetres keeps the arm
near the expert's path, while a cloned policy fails centimetres away from it (measured on
policy-driven episodes: it descends 1-3 cm beside the cube and stands still). In excursion
episodes the executed action is now and then replaced, for 1 to ``excursion_max_steps`` steps,
by a random move of up to ``excursion_step_m`` per step (sideways, and more often down than up),
and the expert labels by state (``expert_labels="state"``, required): every label answers the
state the arm is in, whatever history brought it there, as in a DAgger round, but without a
policy in the loop, so such data can be collected before any policy exists.

States the *policy* reaches (DAgger, Ross et al. 2011, "A Reduction of Imitation Learning and
Structured Prediction to No-Regret Online Learning"): with ``policy`` set, a trained checkpoint
drives the arm (at each step, with probability ``expert_mix``, the expert's action instead: the
paper's mixture ``beta pi* + (1 - beta) pi``) while every frame is labelled with the expert's
action for the state the policy reached. Such labels are right whether or not the episode
succeeds, so training keeps a policy collection's failed episodes too
(``training.data.load_training_data``). An episode whose arm stays within ``STALL_DISTANCE_M`` for
``stall_steps`` steps ends early: a stalled policy would otherwise fill the timeout with copies of
one state. Policy collections write no bags (the executed commands are not the labels).
"""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.sim.dataset import (
    ACTION_MASK,
    EpisodeRecord,
    compute_norm_stats,
    episode_files,
    episode_path,
    read_episode,
    write_episode,
    write_norm_stats,
)
from vla_cache_ros.sim.env import SimConfig, TabletopSim
from vla_cache_ros.sim.expert import ExpertSettings, ScriptedExpert
from vla_cache_ros.sim.recording import EpisodeBagRecorder
from vla_cache_ros.sim.scene import OBJECTS
from vla_cache_ros.sim.tasks import FAMILIES

MANIFEST_FILE = "manifest.json"
BAGS_DIR = "bags"
PARTIAL_DIR = ".partial"
FORMAT = "vla_cache_sim_dataset/1"
STALL_DISTANCE_M = 0.01
"""A policy-driven episode has stalled once its tcp stayed this close to where it was
``stall_steps`` steps before (the expert never stands still that long: its longest pause, the
grasp, lasts 4-5 steps)."""

EXPERT_LABELS = ("state", "history")
"""How the expert labels a policy-driven collection (:class:`PolicyDriving`)."""

Predict = Callable[[np.ndarray, str], np.ndarray]
"""A policy: (image (224, 224, 3) uint8, instruction) -> 7-D action in robot units."""


@dataclass(frozen=True)
class PolicyDriving:
    """A trained policy that drives the arm while the expert labels (DAgger).

    Attributes:
        model: OpenVLA-format checkpoint directory (``load_vla``) or a short model name.
        unnorm_key: its norm-stats key (None: the checkpoint's only one).
        expert_mix: per-step probability of executing the expert's action instead, in [0, 1]
            (DAgger's beta; 0: the policy alone).
        stall_steps: end an episode once the tcp moved less than ``STALL_DISTANCE_M`` over this
            many steps (0: never; the episode runs to success or its timeout).
        expert_labels: ``state`` (default): the expert chooses each label's phase from the scene
            alone (``ExpertSettings.state_based``); ``history``: it steps through its plan as when
            it drives, which told a policy at the object to go back up to the hover point (how
            collections were labelled before; kept to resume them).
    """

    model: str
    unnorm_key: str | None = None
    expert_mix: float = 0.0
    stall_steps: int = 30
    expert_labels: str = "state"

    def __post_init__(self) -> None:
        if not 0.0 <= self.expert_mix <= 1.0:
            raise UserFacingError(f"--expert-mix must lie in [0, 1], got {self.expert_mix}")
        if self.stall_steps < 0:
            raise UserFacingError(f"--stall-steps must be >= 0, got {self.stall_steps}")
        if self.expert_labels not in EXPERT_LABELS:
            raise UserFacingError(f"--expert-labels must be one of {', '.join(EXPERT_LABELS)}, "
                                  f"got {self.expert_labels!r}")

    def manifest(self) -> dict:
        labels = {} if self.expert_labels == "history" else {"expert_labels": self.expert_labels}  # absent: older
        return {"model": self.model, "unnorm_key": self.unnorm_key, "expert_mix": self.expert_mix,
                "stall_steps": self.stall_steps, **labels}

    def expert(self) -> ScriptedExpert:
        """The expert that labels (and, at ``expert_mix``, acts in) this collection."""
        return ScriptedExpert(ExpertSettings(state_based=self.expert_labels == "state"))


class PolicyDriver:
    """Chooses each step's executed action: the policy's, or with probability ``expert_mix`` the
    expert's (seeded per episode, so a collection stays deterministic)."""

    def __init__(self, predict: Predict, expert_mix: float, rng: np.random.Generator) -> None:
        self.predict = predict
        self.expert_mix = expert_mix
        self.rng = rng
        self.policy_steps = 0

    def __call__(self, image: np.ndarray, instruction: str, expert_action: np.ndarray) -> np.ndarray:
        """The action to execute for this frame (the label stays ``expert_action``)."""
        if self.expert_mix > 0.0 and self.rng.random() < self.expert_mix:
            return expert_action
        self.policy_steps += 1
        return np.asarray(self.predict(image, instruction), dtype=np.float64)


@dataclass(frozen=True)
class CollectConfig:
    """What to collect and where.

    Attributes:
        out_dir: dataset directory (created; may already hold a partial collection).
        episodes: total number of episodes the directory should hold.
        seed: seed of episode 0.
        families: task families, cycled over episodes.
        dataset_name: key of the norm stats (OpenVLA's ``unnorm_key``).
        record_bags: also write one rosbag2 per episode under ``bags/``.
        joint_state_hz: rate of joint states / EE poses in the bags.
        noise_fraction: fraction of episodes executed with action noise (0: none).
        noise_translation_m: standard deviation of the noise on each of dx, dy, dz (metres).
        noise_rotation_rad: standard deviation of the noise on each of droll, dpitch, dyaw.
        policy: a trained policy drives the arm while the expert labels (DAgger); None: the
            expert drives.
        expert_labels: how the expert chooses its phase when it drives (``EXPERT_LABELS``):
            ``history`` (default) or ``state``; a policy-driven collection uses
            ``policy.expert_labels`` instead.
        excursion_fraction: fraction of episodes executed with excursions (0: none; needs
            ``expert_labels="state"``).
        excursion_rate: per-step probability that an excursion starts (when none runs).
        excursion_step_m: largest translation of one excursion step (metres).
        excursion_max_steps: longest excursion (steps).
    """

    out_dir: Path
    episodes: int
    seed: int = 0
    families: tuple[str, ...] = tuple(sorted(FAMILIES))
    dataset_name: str = "vla_cache_sim"
    record_bags: bool = True
    joint_state_hz: float = 50.0
    noise_fraction: float = 0.0
    noise_translation_m: float = 0.005
    noise_rotation_rad: float = 0.02
    policy: PolicyDriving | None = None
    expert_labels: str = "history"
    excursion_fraction: float = 0.0
    excursion_rate: float = 0.1
    excursion_step_m: float = 0.02
    excursion_max_steps: int = 4
    sim: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise UserFacingError(f"--episodes must be at least 1, got {self.episodes}")
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown or not self.families:
            raise UserFacingError(f"unknown task families {unknown}; choose from {sorted(FAMILIES)}")
        if self.joint_state_hz * self.sim.control_period_s < 1:
            raise UserFacingError("joint_state_hz must give at least one joint state per control period")
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise UserFacingError(f"--noise-fraction must lie in [0, 1], got {self.noise_fraction}")
        if not (self.noise_translation_m >= 0.0 and self.noise_rotation_rad >= 0.0):
            raise UserFacingError("--noise-translation and --noise-rotation must be >= 0")
        if self.policy is not None and self.record_bags:
            raise UserFacingError("a collection driven by --policy writes no rosbag2 (its executed commands are "
                                  "the policy's, its labels the expert's): pass --no-bags")
        if self.policy is not None and (self.noise_fraction > 0 or self.excursion_fraction > 0):
            raise UserFacingError("--noise-fraction and --excursion-fraction apply to expert-driven collections; "
                                  "with --policy, --expert-mix sets how often the expert's action is executed")
        if self.expert_labels not in EXPERT_LABELS:
            raise UserFacingError(f"--expert-labels must be one of {', '.join(EXPERT_LABELS)}, "
                                  f"got {self.expert_labels!r}")
        if not 0.0 <= self.excursion_fraction <= 1.0:
            raise UserFacingError(f"--excursion-fraction must lie in [0, 1], got {self.excursion_fraction}")
        if self.excursion_fraction > 0:
            if self.expert_labels != "state":
                raise UserFacingError("--excursion-fraction needs --expert-labels state: after an excursion the "
                                      "plan-stepping expert would label by the phase it was in, not by where the "
                                      "arm is")
            if not (0.0 < self.excursion_rate <= 1.0 and self.excursion_step_m > 0.0
                    and self.excursion_max_steps >= 1):
                raise UserFacingError("excursions need a rate in (0, 1], a step > 0 m and at least one step; got "
                                      f"{self.excursion_rate}, {self.excursion_step_m}, {self.excursion_max_steps}")

    def driver(self, index: int, predict: Predict) -> PolicyDriver:
        """The per-step choice of executed action in episode ``index`` (needs ``policy``)."""
        assert self.policy is not None
        return PolicyDriver(predict, self.policy.expert_mix, np.random.default_rng([self.seed, index, 1]))

    def noisy(self, index: int) -> bool:
        """Whether episode ``index`` is executed with action noise (an exact share of
        ``noise_fraction`` of every run of consecutive indices)."""
        return _picked(index, self.noise_fraction)

    def perturbation(self, index: int) -> "Perturbation | None":
        """What episode ``index`` executes in place of the expert's clean action (None: that
        action): Gaussian noise, excursions, or both, each seeded by ``(seed, index)``."""
        noise = ActionNoise(self.noise_translation_m, self.noise_rotation_rad,
                            np.random.default_rng([self.seed, index])) if self.noisy(index) else None
        excursions = Excursions(self.excursion_rate, self.excursion_step_m, self.excursion_max_steps,
                                np.random.default_rng([self.seed, index, 2])) \
            if _picked(index, self.excursion_fraction) else None
        if noise is None or excursions is None:
            return noise or excursions
        return lambda action: excursions(noise(action))

    def expert(self) -> ScriptedExpert:
        """The expert that labels (and, unless a policy drives, acts in) this collection."""
        if self.policy is not None:
            return self.policy.expert()
        return ScriptedExpert(ExpertSettings(state_based=self.expert_labels == "state"))

    def manifest(self) -> dict:
        """The settings that define the episodes (a resume must not change them)."""
        noise = {} if self.noise_fraction == 0.0 else {  # absent: collections made before noise
            "noise_fraction": self.noise_fraction, "noise_translation_m": self.noise_translation_m,
            "noise_rotation_rad": self.noise_rotation_rad}
        policy = {} if self.policy is None else {"policy": self.policy.manifest()}
        labels = {} if self.expert_labels == "history" else {"expert_labels": self.expert_labels}
        excursions = {} if self.excursion_fraction == 0.0 else {"excursions": {
            "fraction": self.excursion_fraction, "rate": self.excursion_rate, "step_m": self.excursion_step_m,
            "max_steps": self.excursion_max_steps}}
        return {**noise, **policy, **labels, **excursions,
            "format": FORMAT,
            "dataset_name": self.dataset_name,
            "seed": self.seed,
            "families": list(self.families),
            "control_period_s": self.sim.control_period_s,
            "episode_timeout_s": self.sim.episode_timeout_s,
            "action": "dx dy dz (m), droll dpitch dyaw (rad, extrinsic xyz Euler of R_next R_cur^T, "
                      "base frame), gripper (0 close, 1 open)",
            "action_mask": list(ACTION_MASK),
            "proprio": "x y z (m), roll pitch yaw (rad), gripper opening (0..1)",
        }


@dataclass
class CollectSummary:
    """Outcome of a collection over the whole directory (resumed episodes included)."""

    episodes: int
    newly_recorded: int
    successes_by_family: dict[str, int]
    episodes_by_family: dict[str, int]
    stats_path: Path | None

    def success_rate(self, family: str) -> float:
        total = self.episodes_by_family.get(family, 0)
        return self.successes_by_family.get(family, 0) / total if total else float("nan")


OPTIONAL_SETTINGS = ("noise_fraction", "noise_translation_m", "noise_rotation_rad", "policy", "expert_labels",
                     "excursions")
"""Manifest keys present only when their feature is used: a resume that leaves one out changes them too."""


def _check_manifest(out_dir: Path, config: CollectConfig) -> None:
    path = out_dir / MANIFEST_FILE
    wanted = config.manifest()
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserFacingError(f"{path} is not valid JSON ({error}); remove it or use another --out") from None
        if not isinstance(existing, dict):
            raise UserFacingError(f"{path} is not a collection manifest; remove it or use another --out")
        compared = set(wanted) | (set(existing) & set(OPTIONAL_SETTINGS))
        differing = sorted(key for key in compared if existing.get(key) != wanted.get(key))
        if differing:
            details = ", ".join(f"{key}: {existing.get(key)!r} there, {wanted.get(key)!r} now" for key in differing)
            raise UserFacingError(f"{out_dir} holds a collection with other settings ({details}); "
                                  "resume with the same settings or choose another --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=2) + "\n")


@dataclass
class ActionNoise:
    """Gaussian noise added to executed actions (not to the recorded labels).

    Attributes:
        translation_m: standard deviation on each of dx, dy, dz (metres).
        rotation_rad: standard deviation on each of droll, dpitch, dyaw (radians).
        rng: the episode's generator.
    """

    translation_m: float
    rotation_rad: float
    rng: np.random.Generator

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """``action`` (7-D) with noise on its first six values; the gripper is left alone."""
        noisy = np.array(action, dtype=np.float64, copy=True)
        noisy[:3] += self.rng.normal(0.0, self.translation_m, 3)
        noisy[3:6] += self.rng.normal(0.0, self.rotation_rad, 3)
        return noisy


@dataclass
class Excursions:
    """Random moves that now and then replace the executed translation (not the labels).

    When no excursion runs, one starts with probability ``rate`` per step; it lasts 1 to
    ``max_steps`` steps (uniform) and moves the tcp by one fixed vector per step: horizontal
    length uniform in [0.4, 1] x ``step_m`` in a uniform direction, vertical uniform in
    [-0.8, 0.4] x ``step_m`` (down more often than up, as a cloned policy errs near the table).
    Rotation and gripper stay the given action's.

    Attributes:
        rate: per-step start probability, in (0, 1].
        step_m: largest horizontal translation per step (metres).
        max_steps: longest excursion (steps).
        rng: the episode's generator.
    """

    rate: float
    step_m: float
    max_steps: int
    rng: np.random.Generator
    remaining: int = 0
    move: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """``action`` (7-D) with its translation replaced while an excursion runs."""
        if self.remaining == 0 and self.rng.random() < self.rate:
            self.remaining = int(self.rng.integers(1, self.max_steps + 1))
            heading = self.rng.uniform(0.0, 2.0 * np.pi)
            horizontal = self.rng.uniform(0.4, 1.0) * self.step_m
            self.move = np.array([horizontal * np.cos(heading), horizontal * np.sin(heading),
                                  self.rng.uniform(-0.8, 0.4) * self.step_m])
        if self.remaining == 0:
            return action
        self.remaining -= 1
        moved = np.array(action, dtype=np.float64, copy=True)
        moved[:3] = self.move
        return moved


Perturbation = Callable[[np.ndarray], np.ndarray]
"""The executed action for the expert's clean one (:class:`ActionNoise`, :class:`Excursions`)."""


def _picked(index: int, fraction: float) -> bool:
    """Whether episode ``index`` is among an exact share ``fraction`` of every run of indices."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def record_episode(sim: TabletopSim, expert: ScriptedExpert, seed: int, family: str,
                   bag: EpisodeBagRecorder | None, joint_state_hz: float,
                   noise: Perturbation | None = None, driver: PolicyDriver | None = None,
                   stall_steps: int = 0) -> EpisodeRecord:
    """Run one episode, recording observations and the expert's actions (and the bag, if given).

    The arm executes the expert's action, or with ``noise`` the perturbed action, or with ``driver``
    what the driver chooses (a policy's action); the label is always the expert's clean action.
    With ``stall_steps`` > 0 the episode ends once the tcp moved less than ``STALL_DISTANCE_M``
    over that many steps.
    """
    task = sim.reset(seed, family)
    expert.reset(sim)
    period = sim.config.control_period_s
    substeps = max(1, int(round(joint_state_hz * period)))
    images, actions, proprio, joints, objects = [], [], [], [], []
    tcp: list[np.ndarray] = []
    if bag is not None:
        bag.instruction(sim.time, task.instruction)
        bag.robot_state(sim)
    while not sim.status().done:
        tcp.append(sim.ee_position())
        if stall_steps > 0 and len(tcp) > stall_steps and \
                np.linalg.norm(tcp[-1] - tcp[-1 - stall_steps]) < STALL_DISTANCE_M:
            break
        image = sim.render()
        action = expert.act(sim)
        images.append(image)
        actions.append(action)
        proprio.append(sim.proprio())
        joints.append(sim.joint_positions())
        objects.append([sim.object_position(obj.name) for obj in OBJECTS])
        if bag is not None:
            bag.camera(sim.time, image)
            bag.action(sim.time, action, period)
        if driver is not None:
            executed = driver(image, task.instruction, action)
        else:
            executed = action if noise is None else noise(action)
        sim.command_action(executed)
        for _ in range(substeps):
            sim.advance(period / substeps)
            if bag is not None:
                bag.robot_state(sim)
    status = sim.status()
    if bag is not None:
        bag.status(sim.time, status)
    return EpisodeRecord(
        images=np.stack(images), actions=np.array(actions, np.float32), proprio=np.array(proprio, np.float32),
        joint_positions=np.array(joints, np.float32), instruction=task.instruction, family=task.family,
        target=task.target, seed=seed, success=status.success,
        object_positions=np.array(objects, np.float32))


def load_policy(driving: PolicyDriving) -> Predict:
    """The driving policy as ``predict(image, instruction)``: ``load_vla`` of the checkpoint
    (a short name through ``models.catalog.resolve_model``), greedy ``predict_action``.

    Raises:
        UserFacingError (ModelLoadError, ConfigurationError): an unusable checkpoint or key.
    """
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.models.vla import load_vla

    resolved = resolve_model(driving.model, driving.unnorm_key)
    model = load_vla(resolved.path)
    unnorm_key = resolved.unnorm_key

    def predict(image: np.ndarray, instruction: str) -> np.ndarray:
        return model.predict_action(image, instruction, unnorm_key)

    return predict


def collect(config: CollectConfig, progress: bool = True) -> CollectSummary:
    """Collect (or complete) ``config.episodes`` expert episodes in ``config.out_dir``."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"--out {out_dir} exists and is not a directory")
    # The policy is loaded before anything is written: a bad checkpoint leaves --out as it was.
    predict = load_policy(config.policy) if config.policy is not None else None
    _check_manifest(out_dir, config)
    bags_dir = out_dir / BAGS_DIR
    todo = [i for i in range(config.episodes) if not episode_path(out_dir, i).exists()]
    newly = 0
    with TabletopSim(config.sim) as sim, tqdm(total=config.episodes, initial=config.episodes - len(todo),
                                              desc="sim-collect", unit="ep", disable=not progress) as bar:
        expert = config.expert()
        for index in todo:
            family = config.families[index % len(config.families)]
            seed = config.seed + index
            bag = None
            if config.record_bags:
                final_bag = bags_dir / f"episode_{index:06d}"
                # Written under .partial/ first, keeping its final name (rosbag2 names the
                # storage file after the directory), and moved into place when complete.
                partial_bag = bags_dir / PARTIAL_DIR / final_bag.name
                for stale in (final_bag, partial_bag):  # leftovers of an interrupted run
                    if stale.exists():
                        shutil.rmtree(stale)
                partial_bag.parent.mkdir(parents=True, exist_ok=True)
                with EpisodeBagRecorder(partial_bag) as bag:
                    record = record_episode(sim, expert, seed, family, bag, config.joint_state_hz,
                                            config.perturbation(index))
                partial_bag.rename(final_bag)
            elif predict is not None:
                assert config.policy is not None
                record = record_episode(sim, expert, seed, family, None, config.joint_state_hz,
                                        driver=config.driver(index, predict),
                                        stall_steps=config.policy.stall_steps)
            else:
                record = record_episode(sim, expert, seed, family, None, config.joint_state_hz,
                                        config.perturbation(index))
            write_episode(episode_path(out_dir, index), record)
            newly += 1
            bar.update(1)
            bar.set_postfix(family=family, success=record.success)
    partial_dir = bags_dir / PARTIAL_DIR
    if partial_dir.is_dir() and not any(partial_dir.iterdir()):
        partial_dir.rmdir()
    counts: Counter[str] = Counter()
    successes: Counter[str] = Counter()
    for path in episode_files(out_dir):
        record = read_episode(path, images=False)
        counts[record.family] += 1
        successes[record.family] += int(record.success)
    stats_path = write_norm_stats(out_dir, compute_norm_stats(out_dir, config.dataset_name)) \
        if sum(successes.values()) else None
    return CollectSummary(sum(counts.values()), newly, dict(successes), dict(counts), stats_path)
