"""Commands users run, above the library: the ``vla-cache`` CLI and its subcommands.

``cli`` (the entry point), ``model_commands`` (make-tiny, predict), ``demo``, ``bench``,
``bag_commands`` (bag-info, synthetic-bag, play, record, replay), ``replay`` (cache modes side by
side over a bag) and ``sim_commands`` (sim-collect, sim-eval). Nothing in the library or in
``ros/`` imports this package (a test holds the layer order; see docs/architecture.md).
"""
