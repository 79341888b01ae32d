"""``vla-cache bench``: uncached vs every cache mode, per stage, measured in one run.

For each model (the miniature checkpoint, the ``midsize`` preset, or an OpenVLA-7B-shaped random
model on a GPU) the same frame sequence (static textured scene with a moving block) is fed to one
``CachedVLAPolicy`` per mode by :class:`vla_cache_ros.runs.ModeRunner`, interleaved frame by frame
so that background load hits all modes alike. Reported per mode: median per-stage wall times over
the measured steps (the first, cold step after reset, and ``--warmup`` more excluded), speedup
against ``off`` (ratio of medians from this run), the FLOPs ratio (analytic, from the config), the
FLOPs-implied prefill speedup and the fraction of it the measured prefill speedup reached. The
uncached reference ``predict_action`` path (stock transformers forward) is timed beside them.
Writes JSON and a markdown table.

Registering the subcommand imports no torch; the model stack is imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla_cache_ros.apps.options import (
    add_cache_policy_argument,
    add_drafter_argument,
    checked_cache_policy,
    checked_drafter,
)
from vla_cache_ros.cache.modes import PREPACK_CHOICES, default_sweep, parse_mode_list, parse_prepack
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.stages import STAGES, device_sync
from vla_cache_ros.synthetic import SyntheticScene

if TYPE_CHECKING:
    import torch

    from vla_cache_ros.cache.engine import KVReuseEngine
    from vla_cache_ros.models.vla import OpenVLA

BENCH_INSTRUCTION = "push the red block to the green square"


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
    mean_accepted_draft_tokens: float = 0.0
    mean_decode_passes: float = 0.0
    full_draft_acceptance: float = 0.0
    per_step_total_s: list[float] = field(default_factory=list)
    prefill_isolated_s: float = 0.0
    speedup_prefill_isolated: float = 1.0
    fraction_of_implied_isolated: float = 1.0
    head_screened: float = 0.0  # share of LM-head rows whose greedy token the bf16 screen decided
    head_recomputed: float = 0.0  # float32 rows recomputed per screened row (the screen's candidates)


def isolated_prefill_s(model: OpenVLA, engine: KVReuseEngine, frame: np.ndarray, reuse: np.ndarray,
                       repeats: int) -> float:
    """Median time of back-to-back prefills of ``frame`` reusing ``reuse`` (nothing else between).

    The step-context medians include whatever the previous stages (vision, the last step's
    decode) left in caches and thread pools; this isolates the engine's own prefill cost.
    """
    import torch

    sync = device_sync(model.device)
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
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(model: OpenVLA, label: str, modes: list[str], steps: int, warmup: int,
                unnorm_key: str | None, seed: int = 11, prepack: bool | None = None,
                decodes: Sequence[str] = ("greedy",), cache_policy: Path | None = None,
                drafter: Path | None = None, lm_heads: Sequence[str] = ("screened",)) -> dict[str, Any]:
    """Run every mode (with each decode setting) over the same frames, interleaved, and summarise.

    ``prepack`` is the engine's CPU weight-prepacking choice; every mode, ``off`` included, runs
    the same kernels. When the weights are prepacked, the uncached prefill is also timed with the
    plain weights, so the report shows that the baseline was not slowed down by packing.
    ``lm_heads``: LM-head settings each run is repeated with (``screened``, ``full``), the
    baseline's first; the full and the screened head are also timed alone on the baseline's last
    final hidden state.
    """
    import torch

    from vla_cache_ros.cache.engine import KVReuseEngine
    from vla_cache_ros.runs import ModeRunner

    head_dtype = model.language_model.lm_head.weight.dtype
    head_note = ",".join(lm_heads)
    if head_dtype != torch.float32 and "screened" in lm_heads:
        # the screen applies to float32 heads: a "screened" run would repeat the full head's
        lm_heads = ["full"]
        head_note = f"full ({str(head_dtype).replace('torch.', '')} head: the screen applies to float32 heads)"
    # the first step computes every token; `warmup` more steps follow before measuring
    runner = ModeRunner(model, modes, unnorm_key=unnorm_key, warmup=warmup + 1, prepack=prepack, decodes=decodes,
                        cache_policy=cache_policy, drafter=drafter, lm_heads=lm_heads)
    sync = device_sync(model.device)
    frames = SyntheticScene(seed=seed, height=240, width=320, speed_px=3.0).frames(warmup + steps + 1)
    reference_times = []
    for frame in frames:
        if runner.step_frame(frame, BENCH_INSTRUCTION)[0].timed:
            start = time.perf_counter()
            model.predict_action_tokens(frame, BENCH_INSTRUCTION)
            sync()
            reference_times.append(time.perf_counter() - start)
    repeats = max(3, steps // 2)
    results = [_mode_result(runner, key, frames[-1], repeats) for key in runner.keys]
    projections = runner.policies[runner.baseline].engine.projections
    plain_off_s = None
    if projections.prepacked:
        plain_off_s = isolated_prefill_s(model, KVReuseEngine(model.language_model, prepack=False), frames[-1],
                                         runner.steps[runner.baseline][-1].stats.reuse_indices, repeats)
    base = results[0]
    for result in results:
        result.speedup_prefill_isolated = base.prefill_isolated_s / result.prefill_isolated_s
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
        "draft": (None if runner.decodes == ["greedy"] else
                  f"learned drafter {runner.drafter_source}" if runner.drafter_source else "previous step's tokens"),
        "cache_policy": runner.cache_policy_source,
        "lm_head": head_note,
        "lm_head_isolated_s": isolated_head_s(model, runner.policies[runner.baseline], repeats),
        "modes": [result.__dict__ for result in results],
    }


def _mode_result(runner: Any, spec: str, last_frame: np.ndarray, repeats: int) -> ModeResult:
    """One mode's measurements from a finished :class:`~vla_cache_ros.runs.ModeRunner` run (steps
    after the warm-up), with the isolated prefill timed on ``last_frame``."""
    measured = [step.stats for step in runner.timed_steps(spec)]
    counters = runner.policies[spec].engine.counters
    return ModeResult(
        spec=spec,
        median_s=runner.median_s(spec),
        mean_reused=float(np.mean([stats.reused_tokens for stats in measured])),
        flops_ratio=float(np.mean([stats.flops_ratio for stats in measured])),
        prefill_flops_ratio=float(np.mean([stats.prefill_flops_ratio for stats in measured])),
        speedup_total=runner.speedup(spec, "total"),
        speedup_prefill=runner.speedup(spec, "prefill"),
        action_token_agreement=runner.token_agreement(spec, timed_only=True),
        mean_accepted_draft_tokens=float(np.mean([stats.accepted_draft_tokens for stats in measured])),
        mean_decode_passes=float(np.mean([stats.decode_passes for stats in measured])),
        full_draft_acceptance=float(np.mean([stats.draft_tokens > 0 and stats.accepted_draft_tokens
                                             == stats.draft_tokens for stats in measured])),
        per_step_total_s=[stats.times_s["total"] for stats in measured],
        prefill_isolated_s=isolated_prefill_s(runner.model, runner.policies[spec].engine, last_frame,
                                              measured[-1].reuse_indices, repeats),
        head_screened=counters.head_screened_rows / counters.head_rows if counters.head_rows else 0.0,
        head_recomputed=(counters.head_recomputed_rows / counters.head_screened_rows
                         if counters.head_screened_rows else 0.0))


def isolated_head_s(model: OpenVLA, policy: Any, repeats: int) -> dict[str, float]:
    """Median seconds of one LM-head row, full and screened, on ``policy``'s last final hidden
    state (the row that predicts the first action token): what the head costs per decode pass."""
    import torch

    from vla_cache_ros.cache.lm_head import shared_screened_head

    hidden = policy.last_hidden
    if hidden is None:
        return {}
    row = hidden.reshape(1, -1)
    head = model.language_model.lm_head
    screened = shared_screened_head(head)
    if screened is None:  # not a float32 head: nothing to screen
        return {}
    sync = device_sync(model.device)
    timings = {}
    for name, run in (("full", lambda: int(torch.argmax(head(row)))), ("screened", lambda: screened(row).tokens)):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        timings[name] = statistics.median(times[1:])
    return timings


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
           if report.get("prefill_off_plain_weights_isolated_s") else "")
        + (f"; speculative draft: {report['draft']}" if report.get("draft") else "")
        + (f"; learned cache policy: {report['cache_policy']}" if report.get("cache_policy") else "")
        + _head_note(report),
        "",
        "| mode | reused | preprocess | vision | select | prefill | decode | total (ms) | speedup total | "
        "speedup prefill | prefill FLOPs-implied | reached | isolated prefill (ms) | reached, isolated | "
        "FLOPs ratio (step) | tokens = off | decode passes | draft accepted | full draft | head screened |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in report["modes"]:
        m = mode["median_s"]
        lines.append(
            f"| {mode['spec']} | {mode['mean_reused']:.0f} | " + " | ".join(f"{1000 * m[s]:.1f}" for s in STAGES)
            + f" | {mode['speedup_total']:.2f}x | {mode['speedup_prefill']:.2f}x"
            f" | {mode['implied_prefill_speedup']:.2f}x"
            f" | {100 * mode['fraction_of_implied']:.0f}% | {1000 * mode['prefill_isolated_s']:.1f}"
            f" | {100 * mode['fraction_of_implied_isolated']:.0f}% | {mode['flops_ratio']:.3f}"
            f" | {100 * mode['action_token_agreement']:.0f}% | {mode['mean_decode_passes']:.2f}"
            f" | {mode['mean_accepted_draft_tokens']:.2f} | {100 * mode['full_draft_acceptance']:.0f}%"
            f" | {100 * mode.get('head_screened', 0.0):.0f}% |")
    return "\n".join(lines)


def _head_note(report: dict[str, Any]) -> str:
    """The header's LM-head clause: the setting and the isolated per-row times."""
    if "lm_head" not in report:
        return ""
    timed = report.get("lm_head_isolated_s") or {}
    times = (f" (one row alone: full {1000 * timed['full']:.2f} ms, screened {1000 * timed['screened']:.2f} ms)"
             if {"full", "screened"} <= set(timed) else "")
    return f"; LM head: {report['lm_head']}{times}"


def load_bench_model(name: str, device: str, dtype: torch.dtype, work_dir: Path
                     ) -> tuple[OpenVLA, str, str | None, Path | None]:
    """(model, label, its norm_stats key or None, its directory or None) for a ``--models`` entry.

    ``tiny`` / ``midsize``: random presets written to disk and loaded like a real checkpoint;
    ``openvla-7b``: built randomly in memory; ``sim_policy``: the trained policy of
    ``models.catalog`` (once shipped); anything else: a checkpoint directory.
    """
    from vla_cache_ros.models.catalog import SHORT_NAMES, resolve_model
    from vla_cache_ros.models.tiny import make_tiny_checkpoint, random_model
    from vla_cache_ros.models.vla import load_vla

    if name in ("tiny", "midsize"):
        directory = work_dir / f"{name}-seed0"
        if not (directory / "config.json").is_file():
            make_tiny_checkpoint(directory, seed=0, preset=name)
        return (load_vla(directory, device=device, dtype=dtype), f"{name} preset (random weights)", "tiny_sim",
                directory)
    if name == "openvla-7b":
        return (random_model("openvla-7b", device=device, dtype=dtype), "OpenVLA-7B-shaped random model", "tiny_sim",
                None)
    resolved = resolve_model(name)
    label = f"{name} (trained, shipped)" if name in SHORT_NAMES else f"checkpoint {name}"
    return load_vla(resolved.path, device=device, dtype=dtype), label, resolved.unnorm_key, Path(resolved.path)


def run_bench(models: list[str], modes: str, steps: int, warmup: int, device: str, dtype_name: str | None,
              threads: int | None, out_dir: Path, unnorm_key: str | None,
              prepack: bool | None = None, decodes: Sequence[str] = ("greedy",),
              cache_policy: str | None = None, drafter: str | None = None,
              lm_heads: Sequence[str] = ("screened",)) -> list[dict[str, Any]]:
    """Benchmark each model; write bench.json and bench.md to ``out_dir``; return the reports.

    ``modes``: comma-separated specs, ``off`` first; ``decodes``: decode settings each mode runs
    with, ``greedy`` first; ``dtype_name`` None: bfloat16 on CUDA, float32 elsewhere; ``threads``
    None: torch's default; ``cache_policy``, ``drafter``: ``--cache-policy``, ``--drafter`` (see
    ``apps.options``).

    Raises:
        ConfigurationError: bad modes (first not ``off``, unknown, repeated), device, dtype,
            thread count or step counts; CheckpointError: an unreadable checkpoint directory,
            cache policy or drafter (a named one before anything is written).
    """
    from vla_cache_ros.cache.drafter import resolve_drafter
    from vla_cache_ros.cache.learned import resolve_cache_policy
    from vla_cache_ros.runs import check_decode_list, check_lm_head_list, machine_description, prepare_compute

    parsed = parse_mode_list(modes)
    mode_list = [spec.text for spec in parsed]
    check_decode_list(decodes)
    check_lm_head_list(lm_heads)
    if parsed[0].name != "off":
        raise ConfigurationError("the first mode must be 'off' (the baseline every ratio is measured against)")
    if steps < 1 or warmup < 0:
        raise ConfigurationError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    _, dtype = prepare_compute(device, dtype_name, threads)
    # A named cache policy or drafter is read before any model is written or benchmarked.
    checked_cache_policy(cache_policy, None)
    checked_drafter(drafter, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for name in models:
        model, label, model_key, directory = load_bench_model(name, device, dtype, out_dir / "models")
        report = bench_model(model, label, mode_list, steps, warmup, unnorm_key or model_key, prepack=prepack,
                             decodes=decodes, cache_policy=resolve_cache_policy(cache_policy, directory),
                             drafter=resolve_drafter(drafter, directory), lm_heads=lm_heads)
        report["machine"] = machine_description(device)
        reports.append(report)
        print(markdown_table(report) + "\n", flush=True)
        del model
    (out_dir / "bench.json").write_text(json.dumps(reports, indent=2))
    (out_dir / "bench.md").write_text("\n\n".join(markdown_table(r) for r in reports) + "\n")
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")
    return reports


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser("bench", help="uncached vs each cache mode, per stage, in one run")
    parser.add_argument("--models", default="tiny,midsize",
                        help="comma-separated: tiny, midsize (random presets), sim_policy (the trained policy, "
                             "once shipped), openvla-7b (GPU, in memory) or checkpoint dirs (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(default_sweep()),
                        help="comma-separated modes, first must be off (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=12, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps after the cold first step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--unnorm-key", default=None,
                        help="norm_stats key for decoding actions (default: each model's own)")
    parser.add_argument("--prepack", choices=list(PREPACK_CHOICES), default="auto",
                        help="CPU: prepacked decoder weights for every mode, off included (default: %(default)s)")
    parser.add_argument("--decode", default="greedy",
                        help="comma-separated decode settings each mode runs with, greedy first: greedy, "
                             "speculative (a draft -- the --drafter's, else the previous step's tokens -- verified "
                             "inside the prefill; same tokens) (default: %(default)s)")
    parser.add_argument("--lm-head", default="screened",
                        help="comma-separated LM-head settings each mode runs with, the baseline's first: "
                             "screened (a bf16 pass, float32 only for the rows that could be the maximum; same "
                             "tokens), full (the whole vocabulary; the model's own greedy decoding) "
                             "(default: %(default)s)")
    add_cache_policy_argument(parser)
    add_drafter_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    parser.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    run_bench([m.strip() for m in args.models.split(",") if m.strip()], args.modes, args.steps, args.warmup,
              args.device, args.dtype, args.threads, args.out, args.unnorm_key,
              prepack=parse_prepack(args.prepack),
              decodes=[name.strip() for name in args.decode.split(",") if name.strip()],
              cache_policy=args.cache_policy, drafter=args.drafter,
              lm_heads=[name.strip() for name in args.lm_head.split(",") if name.strip()])
    return 0
