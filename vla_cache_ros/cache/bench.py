"""``vla-cache bench``: uncached vs every cache mode, per stage, measured in one run.

For each model (the miniature checkpoint, the ``midsize`` preset, or an OpenVLA-7B-shaped random
model on a GPU) the same frame sequence (static textured scene with a moving block) is fed to one
``CachedVLAPolicy`` per mode, interleaved frame by frame so that background load hits all modes
alike. Reported per mode: median per-stage wall times over the measured steps (the first, cold
step after reset excluded), speedup against ``off`` (ratio of medians from this run), the FLOPs
ratio (analytic, from the config), the FLOPs-implied prefill speedup and the fraction of it the
measured prefill speedup reached. The uncached reference ``predict_action`` path (stock
transformers forward) is timed beside them. Writes JSON and a markdown table.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.cache.modes import parse_mode_spec
from vla_cache_ros.compute import resolve_device, resolve_dtype, set_cpu_threads
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models.tiny import make_tiny_checkpoint, random_model
from vla_cache_ros.models.vla import OpenVLA, load_vla
from vla_cache_ros.policy import STAGES, CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

BENCH_INSTRUCTION = "push the red block to the green square"
DEFAULT_MODES = "off,fixed:0.5,fixed:0.75,vla_cache"


@dataclass
class ModeResult:
    """Measurements of one mode on one model."""

    spec: str
    median_s: dict[str, float]
    mean_reused: float
    flops_ratio: float
    prefill_flops_ratio: float
    speedup_total: float = 1.0
    speedup_prefill: float = 1.0
    implied_prefill_speedup: float = 1.0
    fraction_of_implied: float = 1.0
    action_token_agreement: float = 1.0
    per_step_total_s: list[float] = field(default_factory=list)
    prefill_isolated_s: float = 0.0
    speedup_prefill_isolated: float = 1.0
    fraction_of_implied_isolated: float = 1.0


def machine_description(device: str) -> str:
    """One line naming the hardware the numbers come from."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def isolated_prefill_s(model: OpenVLA, engine: KVReuseEngine, frame: np.ndarray, reuse: np.ndarray,
                       repeats: int) -> float:
    """Median time of back-to-back prefills of ``frame`` reusing ``reuse`` (nothing else between).

    The step-context medians include whatever the previous stages (vision, the last step's
    decode) left in caches and thread pools; this isolates the engine's own prefill cost.
    """
    prepared = model.preprocess(frame)
    embeddings = model.assemble_embeddings(model.encode_image(prepared.pixel_values),
                                           model.prompt_ids(BENCH_INSTRUCTION))
    num_visual = model.num_visual_tokens
    cache = engine.prefill(embeddings, num_visual).prompt_kv
    indices = torch.from_numpy(np.asarray(reuse, dtype=np.int64))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.prefill(embeddings, num_visual, indices, cache)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(model: OpenVLA, label: str, modes: list[str], steps: int, warmup: int,
                unnorm_key: str | None, seed: int = 11, prepack: bool | None = None) -> dict[str, Any]:
    """Run every mode over the same frames, interleaved, and summarise.

    ``prepack`` is the engine's CPU weight-prepacking choice; every mode, ``off`` included, runs
    the same kernels. When the weights are prepacked, the uncached prefill is also timed with the
    plain weights, so the report shows that the baseline was not slowed down by packing.
    """
    policies = {}
    for spec in modes:
        name, ratio = parse_mode_spec(spec)
        policies[spec] = CachedVLAPolicy(model, mode=name, cache_ratio=ratio, unnorm_key=unnorm_key,
                                         prepack=prepack)
    scene = SyntheticScene(seed=seed, height=240, width=320, speed_px=3.0)
    frames = scene.frames(warmup + steps + 1)
    samples: dict[str, list] = {spec: [] for spec in modes}
    reference_times = []
    for index, frame in enumerate(frames):
        for spec, policy in policies.items():
            _, stats = policy.step(frame, BENCH_INSTRUCTION)
            if index > warmup:  # index 0 is the cold full step; then warmup steps
                samples[spec].append(stats)
        if index > warmup:
            start = time.perf_counter()
            model.predict_action_tokens(frame, BENCH_INSTRUCTION)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            reference_times.append(time.perf_counter() - start)
    results = []
    baseline_spec = modes[0]
    for spec in modes:
        stats_list = samples[spec]
        results.append(ModeResult(
            spec=spec,
            median_s={stage: statistics.median(s.times_s[stage] for s in stats_list) for stage in STAGES},
            mean_reused=float(np.mean([s.reused_tokens for s in stats_list])),
            flops_ratio=float(np.mean([s.flops / s.flops_uncached for s in stats_list])),
            prefill_flops_ratio=float(np.mean([s.prefill_flops / s.prefill_flops_uncached for s in stats_list])),
            action_token_agreement=float(np.mean([
                np.mean(s.action_tokens == b.action_tokens) for s, b in zip(stats_list, samples[baseline_spec])])),
            per_step_total_s=[s.times_s["total"] for s in stats_list]))
    repeats = max(3, steps // 2)
    for result in results:
        result.prefill_isolated_s = isolated_prefill_s(model, policies[result.spec].engine, frames[-1],
                                                       samples[result.spec][-1].reuse_indices, repeats)
    projections = policies[baseline_spec].engine.projections
    plain_off_s = None
    if projections.prepacked:
        plain_off_s = isolated_prefill_s(model, KVReuseEngine(model.language_model, prepack=False), frames[-1],
                                         samples[baseline_spec][-1].reuse_indices, repeats)
    base = results[0]
    for result in results:
        result.speedup_prefill_isolated = base.prefill_isolated_s / result.prefill_isolated_s
        result.speedup_total = base.median_s["total"] / result.median_s["total"]
        result.speedup_prefill = base.median_s["prefill"] / result.median_s["prefill"]
        result.implied_prefill_speedup = (base.prefill_flops_ratio / result.prefill_flops_ratio)
        implied_gain = result.implied_prefill_speedup - 1.0
        result.fraction_of_implied = (result.speedup_prefill / result.implied_prefill_speedup)
        result.fraction_of_implied_isolated = result.speedup_prefill_isolated / result.implied_prefill_speedup
        if implied_gain <= 0:
            result.fraction_of_implied = result.fraction_of_implied_isolated = 1.0
    config = model.llama_config
    return {
        "model": label,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "decoder": {"hidden": config.hidden_size, "layers": config.num_hidden_layers,
                    "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads},
        "visual_tokens": model.num_visual_tokens,
        "sequence_length": int(1 + model.num_visual_tokens + model.prompt_ids(BENCH_INSTRUCTION).numel() - 1),
        "measured_steps": steps,
        "reference_predict_action_median_s": statistics.median(reference_times),
        "decoder_weights": projections.reason,
        "prefill_off_plain_weights_isolated_s": plain_off_s,
        "modes": [result.__dict__ for result in results],
    }


def markdown_table(report: dict[str, Any]) -> str:
    """A markdown table of one model's results."""
    lines = [
        f"**{report['model']}** — {report['device']}, {report['dtype']}, decoder {report['decoder']}, "
        f"{report['visual_tokens']} visual tokens, sequence {report['sequence_length']}, "
        f"{report['measured_steps']} measured steps; uncached reference `predict_action` median "
        f"{1000 * report['reference_predict_action_median_s']:.1f} ms",
        "",
        f"Decoder weights: {report['decoder_weights']}"
        + (f"; uncached prefill with plain weights (isolated): "
           f"{1000 * report['prefill_off_plain_weights_isolated_s']:.1f} ms"
           if report.get("prefill_off_plain_weights_isolated_s") else ""),
        "",
        "| mode | reused | preprocess | vision | select | prefill | decode | total (ms) | speedup total | "
        "speedup prefill | prefill FLOPs-implied | reached | isolated prefill (ms) | reached, isolated | "
        "FLOPs ratio (step) | tokens = off |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in report["modes"]:
        m = mode["median_s"]
        lines.append(
            f"| {mode['spec']} | {mode['mean_reused']:.0f} | " + " | ".join(f"{1000 * m[s]:.1f}" for s in STAGES)
            + f" | {mode['speedup_total']:.2f}x | {mode['speedup_prefill']:.2f}x"
            f" | {mode['implied_prefill_speedup']:.2f}x"
            f" | {100 * mode['fraction_of_implied']:.0f}% | {1000 * mode['prefill_isolated_s']:.1f}"
            f" | {100 * mode['fraction_of_implied_isolated']:.0f}% | {mode['flops_ratio']:.3f}"
            f" | {100 * mode['action_token_agreement']:.0f}% |")
    return "\n".join(lines)


def load_bench_model(name: str, device: str, dtype: torch.dtype, work_dir: Path) -> tuple[OpenVLA, str]:
    """``tiny`` / ``midsize``: written to disk and loaded like a real checkpoint; ``openvla-7b``:
    built randomly in memory; anything else: a checkpoint directory."""
    if name in ("tiny", "midsize"):
        directory = work_dir / f"{name}-seed0"
        if not (directory / "config.json").is_file():
            make_tiny_checkpoint(directory, seed=0, preset=name)
        return load_vla(directory, device=device, dtype=dtype), f"{name} preset (random weights)"
    if name == "openvla-7b":
        return random_model("openvla-7b", device=device, dtype=dtype), "OpenVLA-7B-shaped random model"
    return load_vla(name, device=device, dtype=dtype), f"checkpoint {name}"


def run_bench(models: list[str], modes: str, steps: int, warmup: int, device: str, dtype_name: str,
              threads: int | None, out_dir: Path, unnorm_key: str | None,
              prepack: bool | None = None) -> list[dict[str, Any]]:
    """Benchmark each model; write bench.json and bench.md to ``out_dir``; return the reports."""
    resolve_device(device)
    set_cpu_threads(threads)
    dtype = resolve_dtype(dtype_name)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if not mode_list or parse_mode_spec(mode_list[0])[0] != "off":
        raise ConfigurationError("the first mode must be 'off' (the baseline every ratio is measured against)")
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in models:
        model, label = load_bench_model(name, device, dtype, out_dir / "models")
        report = bench_model(model, label, mode_list, steps, warmup, unnorm_key, prepack=prepack)
        report["machine"] = machine_description(device)
        reports.append(report)
        print(markdown_table(report) + "\n", flush=True)
        del model
    (out_dir / "bench.json").write_text(json.dumps(reports, indent=2))
    (out_dir / "bench.md").write_text("\n\n".join(markdown_table(r) for r in reports) + "\n")
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")
    return reports
