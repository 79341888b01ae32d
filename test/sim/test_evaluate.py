"""sim-eval's ROS-free part: mode parsing, the interleaved schedule with its warm-up, statistics (latency
without warm-up steps, paired speedup against off) and the written reports; a fake runner stands in for ROS."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.sim.evaluate import (
    EpisodeResult,
    EvalConfig,
    EvalMode,
    markdown_notes,
    markdown_table,
    method_notes,
    parse_modes,
    round_order,
    run_evaluation,
    schedule,
    summarize,
    wilson_interval,
    write_reports,
)
from vla_cache_ros.stages import STAGES, StepRecord


def test_modes_parse_with_ratios_and_the_expert() -> None:
    modes = parse_modes("off, fixed:0.5,vla_cache,learned:0.7,expert")
    assert [m.label for m in modes] == ["off", "fixed:0.5", "vla_cache", "learned:0.7", "expert"]
    assert modes[1] == EvalMode("fixed:0.5", "fixed", 0.5)
    assert modes[2].cache_ratio is None and modes[4].is_expert and not modes[0].is_expert


@pytest.mark.parametrize("text, message", [
    ("turbo", "unknown mode 'turbo'; available: off, fixed, vla_cache, learned .* or expert"),
    ("fixed:lots", "must be a number"), ("fixed:1.5", r"\[0, 1\]"),
    ("off,off", "repeats"), ("", "no mode"), ("expert:0.5", "no ratio"),
])
def test_bad_modes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_modes(text)


def test_config_needs_a_model_for_cache_modes_and_plans_the_same_episodes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--model"):
        EvalConfig(modes=parse_modes("off"), episodes=2, out_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="not a directory"):
        EvalConfig(modes=parse_modes("off"), episodes=2, out_dir=tmp_path, model_path=tmp_path / "missing")
    config = EvalConfig(modes=parse_modes("expert"), episodes=4, out_dir=tmp_path, seed=10,
                        families=("touch", "pick"))
    assert config.episode_plan() == [(0, 10, "touch"), (1, 11, "pick"), (2, 12, "touch"), (3, 13, "pick")]
    with pytest.raises(ConfigurationError, match="unknown decode setting 'beam'"):
        EvalConfig(modes=parse_modes("expert"), episodes=1, out_dir=tmp_path, decode="beam")


def test_wilson_interval() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(10, 10)[0] > wilson_interval(2, 2)[0]  # more trials, tighter


def _steps(totals: list[float], ratio: float = 0.0, mode: str = "off") -> list[StepRecord]:
    """Step records whose stages split each total 10/30/5/40/15 %."""
    shares = dict(zip(STAGES, (0.1, 0.3, 0.05, 0.4, 0.15, 1.0)))
    return [StepRecord(mode, 0.5, ratio, {stage: share * total for stage, share in shares.items()}) for total in totals]


def _result(mode: str, family: str, success: bool, latencies: list[float], ratio: float,
            index: int = 0) -> EpisodeResult:
    return EpisodeResult(mode=mode, index=index, seed=index, family=family, instruction="x", success=success,
                         timed_out=not success, length_s=2.0 if success else 10.0, wall_s=1.0,
                         steps=_steps(latencies, ratio, mode.partition(":")[0]))


def test_summary_and_reports(tmp_path: Path) -> None:
    modes = parse_modes("off,fixed:0.5")
    results = [
        _result("off", "pick", True, [40.0, 42.0], 0.0), _result("off", "touch", False, [41.0], 0.0, index=1),
        _result("fixed:0.5", "pick", True, [30.0, 32.0], 0.5),
        _result("fixed:0.5", "touch", True, [31.0], 0.4, index=1),
    ]
    summary = summarize(results, modes, warmup_steps=0)
    off, fixed = summary["off"], summary["fixed:0.5"]
    assert off["overall"]["successes"] == 1 and off["overall"]["success_rate"] == 0.5
    assert off["overall"]["ci95"] == pytest.approx(list(wilson_interval(1, 2)))
    assert off["families"]["touch"]["success_rate"] == 0.0
    assert off["overall"]["mean_length_s"] == pytest.approx(6.0)
    assert off["latency_ms_mean"] == pytest.approx(41.0) and off["inference_hz"] == pytest.approx(1.5)
    assert off["latency_ms_p50"] == pytest.approx(41.0) and off["latency_ms_p90"] == pytest.approx(41.8)
    assert off["stage_latency_ms"]["prefill"]["p50"] == pytest.approx(0.4 * 41.0)
    assert set(off["stage_latency_ms"]) == set(STAGES)
    assert fixed["cache_ratio_mean"] == pytest.approx((0.5 * 2 + 0.4) / 3)
    # Per seed: 41/31 and 41/31 -> 1.32; off against itself is 1.
    assert fixed["speedup_vs_off"] == pytest.approx(41.0 / 31.0) and fixed["speedup_pairs"] == 2
    assert off["speedup_vs_off"] == pytest.approx(1.0)
    config = EvalConfig(modes=modes, episodes=2, out_dir=tmp_path / "report", model_path=tmp_path,
                        warmup_steps=0)
    paths = write_reports(config, results, summary)
    assert {p.name for p in paths} == {"results.json", "results.md", "success_by_family.png", "latency.png"}
    document = json.loads((tmp_path / "report" / "results.json").read_text())
    assert document["summary"]["fixed:0.5"]["overall"]["successes"] == 2 and len(document["episodes"]) == 4
    assert document["episodes"][0]["latency_ms_p50"] == pytest.approx(41.0)
    assert document["episodes"][0]["inference_steps"] == 2 and "steps" not in document["episodes"][0]
    assert set(document["method"]) == {"order", "warmup", "latency", "speedup", "decode", "lm_head", "rates"}
    assert document["decode"] == "greedy" and document["method"]["decode"].startswith("greedy decoding")
    assert document["lm_head"] == "screened" and "the screened LM head" in document["method"]["lm_head"]
    assert document["warmup_steps"] == 0 and document["warmup_episodes"] == 1
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| fixed:0.5 | 100 % (" in table and "| off | 50 % (" in table
    assert "| 1.32× (2 seeds) |" in table
    assert (tmp_path / "report" / "success_by_family.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_says_what_the_latency_figures_include(tmp_path: Path) -> None:
    config = EvalConfig(modes=parse_modes("off,fixed:0.5,vla_cache,expert"), episodes=4, out_dir=tmp_path,
                        model_path=tmp_path, seed=7, warmup_episodes=2, warmup_steps=3)
    results = [_result(mode, "touch", True, [20.0] * 5, 0.3) for mode in ("off", "fixed:0.5", "vla_cache")]
    results.append(EpisodeResult("expert", 0, 7, "touch", "x", True, False, 3.0, 1.0))
    summary = summarize(results, config.modes, config.warmup_steps)
    table = markdown_table(summary, config.families)
    header = table.splitlines()[0]
    for column in ("success (95 % CI)", "mean length s", "step ms p50 (p90)", "preprocess ms", "vision ms",
                   "select ms", "prefill ms", "decode ms", "Hz", "cache ratio", "speedup vs off"):
        assert f"| {column} |" in header
    assert "| expert | 100 % (" in table and table.splitlines()[-1].endswith("| – |")
    notes = method_notes(config)
    assert "2 uncounted warm-up round(s)" in notes["warmup"] and "seeds 11.." in notes["warmup"]
    assert "first 3 inference step(s)" in notes["warmup"]
    assert all(stage in notes["latency"] for stage in ("preprocess", "vision", "select", "prefill", "decode"))
    assert "p50 and p90" in notes["latency"] and "'total' is the whole step" in notes["latency"]
    assert "off → fixed:0.5 → vla_cache; fixed:0.5 → vla_cache → off; ..." in notes["order"]
    assert "median over the seeds both ran" in notes["speedup"] and "per seed" in notes["speedup"]
    assert markdown_notes(config).startswith("- order: one policy node")
    write_reports(config, results, summary)
    report = (tmp_path / "results.md").read_text()
    assert "- latency: the node's own wall time" in report and "- speedup: per seed, off's median" in report


def test_the_report_names_the_draft_of_speculative_decoding(tmp_path: Path) -> None:
    """The decode note says where the node's draft comes from, as its drafter_path selects it;
    greedy decoding names no draft (a drafter given with it is simply unused)."""
    def note(**fields: str) -> str:
        config = EvalConfig(modes=parse_modes("off"), episodes=1, out_dir=tmp_path, model_path=tmp_path, **fields)
        return method_notes(config)["decode"]

    assert note(drafter_path="/d/drafter") == "greedy decoding of the action tokens in every cache mode"
    assert note(decode="speculative", drafter_path="/d/drafter").endswith("draft: learned drafter /d/drafter")
    assert note(decode="speculative", drafter_path="none").endswith("draft: the previous step's tokens")
    assert note(decode="speculative").endswith("draft: the model directory's own drafter/ if it has one, "
                                                "else the previous step's tokens")
    config = EvalConfig(modes=parse_modes("off"), episodes=1, out_dir=tmp_path, model_path=tmp_path,
                        decode="speculative", drafter_path="/d/drafter")
    assert "- decode: speculative decoding in every cache mode" in markdown_notes(config)


def test_warmup_steps_are_left_out_of_the_latency_figures_but_not_the_counts() -> None:
    modes = parse_modes("off")
    # Each episode: two slow start-up steps, then steady 40 ms.
    results = [_result("off", "touch", False, [900.0, 300.0, 40.0, 40.0, 40.0], 0.0, index=i) for i in range(3)]
    summary = summarize(results, modes, warmup_steps=2)["off"]
    assert summary["latency_ms_p50"] == summary["latency_ms_p90"] == summary["latency_ms_mean"] == pytest.approx(40.0)
    assert summary["stage_latency_ms"]["vision"]["p90"] == pytest.approx(12.0)
    assert summary["inference_steps"] == 15 and summary["latency_steps"] == 9
    assert summary["inference_hz"] == pytest.approx(5.0)  # rates count every step
    included = summarize(results, modes, warmup_steps=0)["off"]
    assert included["latency_ms_p90"] > 300.0 and included["latency_steps"] == 15
    # An episode shorter than the warm-up has no timed steps: it adds nothing, breaks nothing.
    short = summarize([_result("off", "touch", True, [900.0], 0.0)], modes, warmup_steps=2)["off"]
    assert short["latency_ms_p50"] is None and short["stage_latency_ms"] == {} and short["inference_steps"] == 1


def test_warmup_options_are_checked(tmp_path: Path) -> None:
    for option in ("warmup_episodes", "warmup_steps"):
        with pytest.raises(ConfigurationError, match=f"--{option.replace('_', '-')} must be 0 or more"):
            EvalConfig(modes=parse_modes("expert"), episodes=1, out_dir=tmp_path, **{option: -1})


def test_the_schedule_interleaves_cache_modes_in_rotating_rounds_after_the_warmup(tmp_path: Path) -> None:
    config = EvalConfig(modes=parse_modes("off,expert,fixed:0.5,vla_cache"), episodes=4, out_dir=tmp_path,
                        model_path=tmp_path, seed=100, families=("touch", "pick"), warmup_episodes=1)
    planned = schedule(config)
    runs = [(p.mode.label, p.index, p.seed, p.counted) for p in planned]
    assert runs[:3] == [("off", -1, 104, False), ("fixed:0.5", -1, 104, False), ("vla_cache", -1, 104, False)]
    assert [r[0] for r in runs[3:15]] == ["off", "fixed:0.5", "vla_cache", "fixed:0.5", "vla_cache", "off",
                                          "vla_cache", "off", "fixed:0.5", "off", "fixed:0.5", "vla_cache"]
    assert [r[1] for r in runs[3:15]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert runs[15:] == [("expert", i, 100 + i, True) for i in range(4)]  # no node: last, no warm-up
    counted = [p for p in planned if p.counted]
    for mode in config.modes:  # every mode runs exactly the plan's episodes
        assert [(p.index, p.seed, p.family) for p in counted if p.mode == mode] == config.episode_plan()
    firsts = [runs[3 + 3 * r][0] for r in range(3)]
    assert sorted(firsts) == ["fixed:0.5", "off", "vla_cache"]  # each mode opens a round once per cycle
    assert round_order([], 3) == []
    only_expert = EvalConfig(modes=parse_modes("expert"), episodes=2, out_dir=tmp_path)
    assert [(p.index, p.counted) for p in schedule(only_expert)] == [(0, True), (1, True)]


class FakeRunner:
    """An EpisodeRunner whose step latency depends on when an episode runs, not only on its mode.

    ``base_ms``: each mode's true steady step latency. The machine is ``slow_factor`` times slower
    for the first ``slow_episodes`` episodes run (another job finishing, the simulator starting),
    and the first ``startup_steps`` steps of every episode take ``startup_ms``.
    """

    def __init__(self, base_ms: dict[str, float], slow_episodes: int = 0, slow_factor: float = 5.0,
                 startup_steps: int = 0, startup_ms: float = 1000.0, steps: int = 8) -> None:
        self.base_ms, self.slow_episodes, self.slow_factor = base_ms, slow_episodes, slow_factor
        self.startup_steps, self.startup_ms, self.steps = startup_steps, startup_ms, steps
        self.calls: list[tuple] = []
        self.current: EvalMode | None = None

    def switch_mode(self, mode: EvalMode) -> None:
        self.calls.append(("switch", mode.label))
        self.current = mode

    def run_episode(self, mode: EvalMode, index: int, seed: int, family: str) -> EpisodeResult:
        assert mode == self.current, "an episode must run in the mode switched to"
        episodes_run = sum(call[0] == "episode" for call in self.calls)
        self.calls.append(("episode", mode.label, index))
        factor = self.slow_factor if episodes_run < self.slow_episodes else 1.0
        totals = [self.startup_ms if step < self.startup_steps else self.base_ms[mode.label] * factor
                  for step in range(self.steps)] if not mode.is_expert else []
        return EpisodeResult(mode.label, index, seed, family, "x", index % 2 == 0, index % 2 == 1, 5.0, 1.0,
                             steps=_steps(totals, 0.5 if mode.cache_mode == "fixed" else 0.0,
                                          mode.cache_mode or "expert"))

    def stop_mode(self) -> None:
        self.calls.append(("stop",))


def _evaluate(tmp_path: Path, modes: str, runner: FakeRunner, **options: int) -> tuple[list[EpisodeResult], dict]:
    config = EvalConfig(modes=parse_modes(modes), episodes=5, out_dir=tmp_path, model_path=tmp_path, **options)
    return run_evaluation(config, runner, progress=False)


def test_warmup_episodes_run_but_are_not_counted(tmp_path: Path) -> None:
    runner = FakeRunner({"off": 40.0, "fixed:0.5": 20.0}, startup_steps=2)
    results, summary = _evaluate(tmp_path, "off,fixed:0.5,expert", runner, warmup_episodes=1, warmup_steps=2)
    episodes = [call for call in runner.calls if call[0] == "episode"]
    assert episodes[:2] == [("episode", "off", -1), ("episode", "fixed:0.5", -1)]
    assert len(episodes) == 2 + 2 * 5 + 5 and len(results) == 3 * 5
    assert all(r.index >= 0 for r in results)
    assert runner.calls[-1] == ("stop",) and sum(call == ("stop",) for call in runner.calls) == 1
    assert [call[1] for call in runner.calls if call[0] == "switch"][-1] == "expert"
    # The 1000 ms start-up steps are in no latency figure; the speedup is the true 2x.
    assert summary["off"]["latency_ms_p90"] == pytest.approx(40.0)
    assert summary["fixed:0.5"]["latency_ms_p50"] == pytest.approx(20.0)
    assert summary["fixed:0.5"]["speedup_vs_off"] == pytest.approx(2.0)
    assert summary["expert"]["latency_ms_p50"] is None and summary["expert"]["speedup_vs_off"] is None


@pytest.mark.parametrize("modes", ["off,fixed:0.5", "fixed:0.5,off"])
def test_a_mode_that_runs_while_the_machine_is_slow_does_not_skew_the_speedup(tmp_path: Path, modes: str) -> None:
    # The machine is 5x slower for the first 4 episodes run: run mode by mode, the first mode's
    # whole first round of episodes would be slow (off at 200 ms against 20 ms: the observed fault).
    # Warm-up and interleaving spread the spell over both modes: the speedup stays 2.
    runner = FakeRunner({"off": 40.0, "fixed:0.5": 20.0}, slow_episodes=4)
    _, summary = _evaluate(tmp_path, modes, runner, warmup_episodes=1, warmup_steps=0)
    assert summary["fixed:0.5"]["speedup_vs_off"] == pytest.approx(2.0)
    assert summary["fixed:0.5"]["speedup_pairs"] == 5
    # Even without a warm-up round the paired median holds (the slow round is one seed of five).
    runner = FakeRunner({"off": 40.0, "fixed:0.5": 20.0}, slow_episodes=3)
    _, summary = _evaluate(tmp_path, modes, runner, warmup_episodes=0, warmup_steps=0)
    assert summary["fixed:0.5"]["speedup_vs_off"] == pytest.approx(2.0)
    assert summary["off"]["latency_ms_p50"] == pytest.approx(40.0)
