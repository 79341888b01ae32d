"""The policy server and its client: many robots share GPU replicas, each keeps its own cache.

- :mod:`~vla_cache_ros.serving.wire`: the request/response format (JSON; images as base64 raw
  uint8, PNG or JPEG; json-numpy for ``/act``), the size limits and their checks. No Ray, no
  torch.
- :mod:`~vla_cache_ros.serving.sessions`: one robot's session (its own ``CachedVLAPolicy``
  state over a model shared by the replica) and the replica's session bookkeeping. No Ray.
- :mod:`~vla_cache_ros.serving.server`: the Ray Serve deployment (``POST /act``, ``POST
  /step``, ``GET /health``), sessions routed by Serve's model multiplexing.
- :mod:`~vla_cache_ros.serving.client`: :class:`RemotePolicy`, the HTTP client the node's
  runtime uses in place of a local ``CachedVLAPolicy`` (``inference_backend: remote``).

Layer: beside ``runtime`` (which may import the client); imports the policy and below. Never
imports rclpy.
"""
