#!/usr/bin/env python3
"""Measure the peak resident memory of ``load_vla`` against the size of the weights it loads.

Writes a large random OpenVLA-format checkpoint (bf16, >= 1 GB by default; a Llama text config
far bigger than the ``midsize`` preset), then loads it with ``load_vla(dir, dtype=torch.bfloat16)``
(or ``--dtype float32``) in a fresh Python process and reports

    ratio = (peak RSS - RSS just before the load) / bytes of the loaded weights

when the loader returns, after every weight byte has been read once, and optionally after one
``predict_action``; peak RSS from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, current RSS
from ``/proc/self/statm``. A loader that materialises the weights once gives a ratio near 1.0;
one that initialises the modules and then copies a state dict into them (``--naive``, for
comparison) gives ~2.0. Results and the machine they came from: docs/memory.md.

Usage::

    .venv/bin/python tools/measure_load_memory.py --predict         # single-file checkpoint
    .venv/bin/python tools/measure_load_memory.py --shard-mb 500    # sharded, with an index
    .venv/bin/python tools/measure_load_memory.py --dtype float32   # bf16 file -> fp32 weights
    .venv/bin/python tools/measure_load_memory.py --naive           # the pattern load_vla avoids

The checkpoint is written under /tmp and removed afterwards unless ``--keep`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside the measured subprocess only
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_NAME = "memtest"


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_checkpoint(directory: Path, hidden: int, layers: int, intermediate: int, shard_mb: float | None) -> None:
    """Write a seeded random bf16 checkpoint with a custom (large) Llama text config."""
    import torch

    from vla_cache_ros.models.tiny import PRESETS, make_tiny_checkpoint

    heads = max(1, hidden // 128)
    PRESETS[PRESET_NAME] = {
        "vision": {"depth": 4, "embed_dim": 192, "num_heads": 3},
        "text": {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                 "num_attention_heads": heads, "num_key_value_heads": heads},
    }
    shard = int(shard_mb * 1e6) if shard_mb else None
    make_tiny_checkpoint(directory, seed=0, preset=PRESET_NAME, dtype=torch.bfloat16, max_shard_bytes=shard)


def measure_load(directory: Path, predict: bool, dtype_name: str, naive: bool, prepack: bool = False
                 ) -> dict[str, Any]:
    """Load the checkpoint in this (fresh) process and return the memory figures."""
    import torch

    from vla_cache_ros.models import load_vla

    torch.set_num_threads(1)
    rss_before = _rss_bytes()
    peak_before = _peak_rss_bytes()
    start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    model = naive_load(directory, dtype) if naive else load_vla(directory, dtype=dtype)
    seconds = time.perf_counter() - start
    peak_after = _peak_rss_bytes()
    rss_after = _rss_bytes()
    tensors = list(model.parameters()) + list(model.buffers())
    loaded = sum(t.numel() * t.element_size() for t in tensors)
    dtypes = sorted({str(t.dtype) for t in model.parameters()})
    # Read every weight byte once: memory-mapped weights only become resident when touched,
    # so the peak after this is what inference will hold.
    with torch.no_grad():
        for tensor in tensors:
            tensor.sum()
    figures = {"rss_before": rss_before, "peak_before": peak_before, "peak_after": peak_after,
               "rss_after": rss_after, "peak_touched": _peak_rss_bytes(), "loaded_bytes": loaded,
               "param_dtypes": dtypes, "load_seconds": seconds}
    if prepack:  # the engine's CPU-prepacked copy of the decoder projections (cache/prepack.py)
        from vla_cache_ros.cache.prepack import decoder_projections, projection_bytes

        figures["rss_before_pack"] = _rss_bytes()
        start = time.perf_counter()
        decoder_projections(model.language_model, prepack=True)
        figures["pack_seconds"] = time.perf_counter() - start
        figures["rss_after_pack"] = _rss_bytes()
        figures["peak_after_pack"] = _peak_rss_bytes()
        figures["projection_bytes"] = projection_bytes(list(model.language_model.model.layers))
    if predict:
        import numpy as np

        frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        start = time.perf_counter()
        model.predict_action(frame, "pick up the red cube", unnorm_key="tiny_sim")
        figures["predict_seconds"] = time.perf_counter() - start
        figures["peak_predict"] = _peak_rss_bytes()
    return figures


def naive_load(directory: Path, dtype: "torch.dtype") -> "torch.nn.Module":
    """The pattern the loader avoids, for comparison: build initialised modules, then copy a state dict in."""
    import torch
    from safetensors.torch import load_file

    from vla_cache_ros.models.checkpoint import weight_files
    from vla_cache_ros.models.config import load_config
    from vla_cache_ros.models.processor import ImageProcessor
    from vla_cache_ros.models.vision import checkpoint_key_to_module_key
    from vla_cache_ros.models.vla import OpenVLA, load_tokenizer

    config = load_config(directory)
    processor = ImageProcessor.from_checkpoint(directory, config.timm_model_ids, config.image_sizes[0])
    torch.set_default_dtype(dtype)
    model = OpenVLA(config, load_tokenizer(directory), processor)
    state = {}
    for path in weight_files(directory):
        state.update({checkpoint_key_to_module_key(k): v for k, v in load_file(str(path)).items()})
    model.load_state_dict(state, strict=False)
    return model


def _run_child(*args: str) -> str:
    """Run this script in a fresh interpreter (so peak RSS covers only what that step did)."""
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"child step {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    """Write the checkpoint, measure the load in a fresh process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vla_cache_memtest"), help="checkpoint directory")
    parser.add_argument("--hidden", type=int, default=2048, help="Llama hidden size (default 2048)")
    parser.add_argument("--layers", type=int, default=16, help="Llama layers (default 16)")
    parser.add_argument("--intermediate", type=int, default=5504, help="Llama MLP size (default 5504)")
    parser.add_argument("--shard-mb", type=float, default=None, help="write shards of at most this many MB")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="dtype load_vla loads into (the file is always bf16)")
    parser.add_argument("--predict", action="store_true",
                        help="also run one predict_action and report the peak after it")
    parser.add_argument("--naive", action="store_true",
                        help="measure a naive loader instead (initialised modules + load_state_dict), for comparison")
    parser.add_argument("--prepack", action="store_true",
                        help="also build the engine's CPU-prepacked decoder weights and report what they add")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--child-write", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_write:
        write_checkpoint(args.dir, args.hidden, args.layers, args.intermediate, args.shard_mb)
        return 0
    if args.child_load:
        print(json.dumps(measure_load(args.dir, args.predict, args.dtype, args.naive, args.prepack)))
        return 0

    if args.dir.exists():
        shutil.rmtree(args.dir)
    shape = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--intermediate", str(args.intermediate)]
    if args.shard_mb:
        shape += ["--shard-mb", str(args.shard_mb)]
    try:
        start = time.perf_counter()
        _run_child("--child-write", "--dir", str(args.dir), *shape)
        files = sorted(args.dir.glob("*.safetensors"))
        file_bytes = sum(f.stat().st_size for f in files)
        print(f"wrote {len(files)} safetensors file(s), {file_bytes / 1e9:.3f} GB, "
              f"in {time.perf_counter() - start:.1f} s to {args.dir}")
        load_args = ["--child-load", "--dir", str(args.dir), "--dtype", args.dtype]
        load_args += (["--predict"] if args.predict else []) + (["--naive"] if args.naive else [])
        load_args += ["--prepack"] if args.prepack else []
        figures = json.loads(_run_child(*load_args).strip().splitlines()[-1])
    finally:
        if not args.keep and args.dir.exists():
            shutil.rmtree(args.dir)
    loaded = figures["loaded_bytes"]
    base = figures["rss_before"]
    print("loader:                " + ("naive (initialised modules + load_state_dict)" if args.naive else "load_vla"))
    print(f"loaded weights:        {loaded / 1e9:.3f} GB ({', '.join(figures['param_dtypes'])})")
    print(f"RSS before loading:    {figures['rss_before'] / 1e9:.3f} GB "
          f"(peak so far {figures['peak_before'] / 1e9:.3f} GB, imports)")
    print(f"peak RSS after load:   {figures['peak_after'] / 1e9:.3f} GB "
          f"(current {figures['rss_after'] / 1e9:.3f} GB), load took {figures['load_seconds']:.1f} s")
    print(f"peak after touching every weight: {figures['peak_touched'] / 1e9:.3f} GB")
    rows = [("the loader returned", figures["peak_after"]), ("every weight read", figures["peak_touched"])]
    if "projection_bytes" in figures:
        added = figures["rss_after_pack"] - figures["rss_before_pack"]
        print(f"prepacked decoder copy: RSS +{added / 1e9:.3f} GB for {figures['projection_bytes'] / 1e9:.3f} GB "
              f"of projection weights ({added / figures['projection_bytes']:.3f}x), "
              f"packing took {figures['pack_seconds']:.1f} s, peak {figures['peak_after_pack'] / 1e9:.3f} GB")
    if "peak_predict" in figures:
        print(f"one predict_action took {figures['predict_seconds']:.1f} s, "
              f"peak after it {figures['peak_predict'] / 1e9:.3f} GB")
        rows.append(("one predict_action", figures["peak_predict"]))
    for label, peak in rows:
        print(f"ratio (peak - RSS before) / weights, {label + ':':<20} "
              f"{(peak - base) / 1e9:.3f} / {loaded / 1e9:.3f} GB = {(peak - base) / loaded:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
