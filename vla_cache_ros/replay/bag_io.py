"""Transitional: bag I/O is split into ``bag_reader``, ``frames``, ``bag_writer`` and ``messages``.

Only ``vla_cache_ros/demo.py`` (``describe_bag``) still imports :class:`BagReader` from here;
delete this file in the commit that changes that import to
``from vla_cache_ros.replay.bag_reader import BagReader``. Nothing else may import it.
"""
from vla_cache_ros.replay.bag_reader import BagReader

__all__ = ["BagReader"]
