"""The scene loads, renders non-trivial images, and lays out episodes deterministically per seed."""
from __future__ import annotations

import numpy as np

from vla_cache_ros.sim.env import TabletopSim
from vla_cache_ros.sim.scene import ARM_JOINTS, IMAGE_SIZE, OBJECTS, project_to_image
from vla_cache_ros.sim.tasks import FAMILIES, MIN_OBJECT_SEPARATION_M, WORKSPACE_X, WORKSPACE_Y


def _pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 60) -> int:
    return int((np.abs(image.astype(int) - np.array(rgb)).sum(-1) < tolerance).sum())


def test_scene_has_the_arm_and_objects(sim: TabletopSim) -> None:
    assert sim.model.nu == len(ARM_JOINTS) + 1  # + gripper
    for obj in OBJECTS:
        assert sim.model.body(obj.name).id > 0


def test_render_is_a_non_trivial_rgb_image(sim: TabletopSim) -> None:
    sim.reset(seed=1)
    image = sim.render()
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    assert image.std() > 20  # not a blank frame
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500
    # The coloured objects are visible: strongly red, blue, green and yellow pixels exist.
    for colour in ((217, 31, 26), (26, 77, 230), (38, 179, 64), (242, 204, 26)):
        assert _pixels_near(image, colour) > 15, colour


def test_same_seed_same_episode_other_seed_other_layout(sim: TabletopSim) -> None:
    task_a = sim.reset(seed=5)
    image_a, red_a = sim.render(), sim.object_position("red_cube")
    sim.reset(seed=6)
    image_b, red_b = sim.render(), sim.object_position("red_cube")
    task_c = sim.reset(seed=5)
    assert task_c == task_a
    np.testing.assert_array_equal(sim.render(), image_a)
    np.testing.assert_allclose(sim.object_position("red_cube"), red_a)
    assert np.linalg.norm(red_a - red_b) > 1e-3
    assert np.abs(image_a.astype(int) - image_b).sum() > 0


def test_layouts_stay_in_the_workspace_without_overlap(sim: TabletopSim) -> None:
    for seed in range(10):
        sim.reset(seed)
        positions = {obj.name: sim.object_position(obj.name) for obj in OBJECTS}
        for name, position in positions.items():
            assert WORKSPACE_X[0] - 0.01 <= position[0] <= WORKSPACE_X[1] + 0.01, (seed, name)
            assert WORKSPACE_Y[0] - 0.01 <= position[1] <= WORKSPACE_Y[1] + 0.01, (seed, name)
        names = sorted(positions)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                distance = np.linalg.norm(positions[first][:2] - positions[second][:2])
                assert distance >= MIN_OBJECT_SEPARATION_M - 0.005, (seed, first, second)


def test_every_family_has_instructions_naming_the_target(sim: TabletopSim) -> None:
    for family in FAMILIES:
        task = sim.reset(seed=3, family=family)
        assert task.family == family
        phrase = task.target.replace("_", " ")
        assert phrase in task.instruction


def test_projection_lands_on_each_object_as_rendered(sim: TabletopSim) -> None:
    for seed in (1, 2, 3):
        sim.reset(seed=seed)
        image = sim.render().astype(int)
        for obj in OBJECTS:
            column, row = np.round(project_to_image(sim.object_position(obj.name))).astype(int)
            # The top-centre of a cube or ball faces the camera a little above its centre.
            patch = image[max(row - 3, 0):row + 4, max(column - 3, 0):column + 4].reshape(-1, 3)
            expected = 255 * np.array(obj.rgba[:3])
            assert (np.abs(patch - expected).sum(-1) < 150).any(), (seed, obj.name, row, column)
    # Every point of the workspace, on the table and at carrying height, is in view.
    for x in WORKSPACE_X:
        for y in WORKSPACE_Y:
            for z in (0.0, 0.2):
                pixel = project_to_image(np.array([x, y, z]))
                assert np.all((pixel >= 0) & (pixel < IMAGE_SIZE)), (x, y, z)
    assert np.isnan(project_to_image(np.array([2.0, -1.2, 1.0]))).all()  # behind the camera
