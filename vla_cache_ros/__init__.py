"""vla_cache_ros: VLA policies on ROS 2 arms, accelerated by adaptive visual-token KV caching.

Layers, from the bottom up (docs/architecture.md; ``test/test_layers.py`` holds the order):
``errors``; small shared modules (``compute``, ``stages``, ``stamps``, ``topics``, ``geometry``,
``synthetic``, ``image_conversion``, ``subprocesses``); ``models`` (OpenVLA-format checkpoints);
``cache`` (K/V reuse engine, mode registry, selectors); ``policy`` and ``control`` (safe commands,
watchdog); ``runs`` (modes side by side), ``runtime`` (the ROS-free control loop), ``replay``
(bags without ROS), ``sim`` (MuJoCo arm) and ``training`` (behaviour cloning); ``ros`` (the only
layer that touches rclpy); and ``apps`` (the ``vla-cache`` commands). Imports only point down.
"""

__version__ = "0.1.0"
