"""Behaviour cloning of miniature OpenVLA-format policies on the simulator's expert data.

One job per module: ``data`` (episodes -> frames, the seed-wise train/validation split, action
normalisation and tokens, batches), ``model`` (presets, building, the action-token loss,
exporting the OpenVLA-format checkpoint), ``state`` (resumable training state in safetensors +
JSON, never pickle), ``curves`` (PNG learning curves) and ``loop`` (the run itself:
``TrainConfig`` and ``train``). The recipe and why: docs/training.md.

Layer: with ``runs``/``runtime``/``sim`` (docs/architecture.md); imports ``models``, ``sim``
(its dataset), ``compute`` and ``errors`` only. ``vla-cache train-policy`` (apps) drives it.
"""
