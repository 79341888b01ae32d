"""Bags without ROS: streaming rosbag2 reading (``bag_reader``), camera frames aligned with joint
states, instructions and commands (``frames``), writing (``bag_writer``) and the messages to
write (``messages``); synthetic demo bags (``synthetic_bag``) and the offline cache-mode
comparison (``compare``). Live play / record over ROS 2 is ``vla_cache_ros.ros.bag_live``.
Importing this package needs neither ROS nor torch."""
