"""Behaviour cloning of miniature OpenVLA-format policies on the simulator's expert data.

One job per module: ``data`` (episodes -> frames, the seed-wise train/validation split, action
normalisation and tokens, batches), ``model`` (presets, building, the action-token loss,
exporting the OpenVLA-format checkpoint), ``state`` (resumable training state in safetensors +
JSON, never pickle), ``curves`` (PNG learning curves) and ``loop`` (the run itself:
``TrainConfig`` and ``train``). The recipe and why: docs/training.md.

What rides along with a frozen VLA, trained by self-distillation: ``pairs`` (consecutive frame
pairs of ``sim-collect`` data or rosbag2 recordings), ``teacher`` (the frozen model's embeddings
and greedy tokens), ``lac`` (the learned cache, ``train-cache``) and ``drafter`` (the learned
drafter, ``train-drafter``).

Layer: with ``runs``/``runtime``/``sim`` (docs/architecture.md); imports ``models``, ``cache``,
``sim`` (its dataset), ``replay`` (bags), ``compute`` and ``errors`` only. ``vla-cache
train-policy``, ``train-cache`` and ``train-drafter`` (apps) drive it.
"""
