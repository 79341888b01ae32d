"""Bags: streaming rosbag2 I/O (``bag_io``), synthetic demo bags (``synthetic_bag``), live
play / record over ROS 2 (``live``, rclpy imported lazily) and the offline cache-mode
comparison (``compare``). Importing this package needs neither ROS nor torch."""
