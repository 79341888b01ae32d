"""Bags without ROS: streaming rosbag2 reading (``bag_reader``), camera frames aligned with joint
states, instructions and commands (``frames``), writing (``bag_writer``) and the messages to
write (``messages``) and synthetic demo bags (``synthetic_bag``). The offline cache-mode
comparison over a bag is the app ``vla_cache_ros.apps.replay``; live play / record over ROS 2 is
``vla_cache_ros.ros.bag_live``.
Importing this package needs neither ROS nor torch."""
