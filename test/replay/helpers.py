"""Small synthetic bags for the bag tests: both storages, 12 frames of 48x64, rosbags only."""
from __future__ import annotations

from pathlib import Path

from vla_cache_ros.replay.synthetic_bag import SyntheticBagInfo, SyntheticBagSpec, write_synthetic_bag

STORAGES = ("mcap", "sqlite3")
SMALL = dict(height=48, width=64, num_frames=12)


def write_small_bag(tmp_path: Path, name: str, storage: str, **spec_fields: object) -> SyntheticBagInfo:
    """A synthetic bag ``tmp_path/name`` with the SMALL spec, overridden by ``spec_fields``."""
    fields = {**SMALL, **spec_fields}
    return write_synthetic_bag(tmp_path / name, storage, SyntheticBagSpec(**fields))


def seconds_since_start(spec: SyntheticBagSpec, time_ns: int) -> float:
    """Bag time ``time_ns`` as seconds after the spec's first frame."""
    return (time_ns - spec.start_time_ns) / 1e9
