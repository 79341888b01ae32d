"""Packaging for vla_cache_ros: ament_python for colcon, and a plain pip install."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_cache_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/*", "data/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/hook", glob("resource/hook/*")),
    ],
    # Humble runs Python 3.10, Jazzy and Kilted 3.12; requirements/ pins each (tools/bootstrap.sh).
    python_requires=">=3.10",
    # The dependencies are not listed here: they come pinned from requirements/base.in with the
    # constraints file for the interpreter's Python, so `pip install -e .` installs none of them.
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="vla_cache_ros maintainers",
    maintainer_email="maintainers@vla-cache-ros.invalid",
    description="Adaptive visual-token KV caching for VLA policies on ROS 2 arms",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vla-cache = vla_cache_ros.apps.cli:main",
            "vla_cache_node = vla_cache_ros.ros.node:main",
            "sim_arm_node = vla_cache_ros.ros.sim_node:main",
        ],
    },
)
