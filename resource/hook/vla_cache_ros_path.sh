# Puts lib/vla_cache_ros (vla-cache, vla_cache_node, sim_arm_node) on PATH when the workspace is
# sourced; colcon's package scripts define _colcon_prepend_unique_value and COLCON_CURRENT_PREFIX.
_colcon_prepend_unique_value PATH "$COLCON_CURRENT_PREFIX/lib/vla_cache_ros"
