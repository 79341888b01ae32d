"""``vla-cache cache-eval`` on synthetic bags with the miniature checkpoint and an untrained cache policy."""
from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest

from vla_cache_ros.apps.cache_eval import parse_caps, parse_variants, run_cache_eval
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("cache_eval")
    spec = SyntheticBagSpec(num_frames=5, height=60, width=80)
    bags = [write_synthetic_bag(root / f"bag{i}", "mcap", spec).path for i in range(2)]
    return {"model": make_tiny_checkpoint(root / "tiny", seed=0), "bags": bags,
            "policy": save_cache_policy(root / "cp", CacheSelectorNet(CachePolicyConfig(width=4))),
            "other": save_cache_policy(root / "cp2", CacheSelectorNet(CachePolicyConfig(width=4, ratios=(0.5,))))}


def _args(setup: dict, out: Path, **overrides) -> Namespace:
    fields = dict(bags=setup["bags"], model=str(setup["model"]), cache_policy=str(setup["policy"]),
                  variant=[f"one_ratio={setup['other']}"], caps="0.5,0.9", cap=None, out=out, unnorm_key="tiny_sim",
                  instruction=None, every=1, max_frames=None, warmup=1, threads=1, device="cpu")
    return Namespace(**{**fields, **overrides})


def test_baselines_run_at_the_ratio_the_learned_cache_reached(setup, tmp_path: Path) -> None:
    report = run_cache_eval(_args(setup, tmp_path / "out"), log=lambda _: None)
    rows = {row.name: row for row in report.rows}
    learned = rows["learned (cap 0.9)"]
    assert report.frames_per_bag == [5, 5] and learned.frames == 10
    # the first of each bag's 5 steps computes every token in every mode: fixed is set to the
    # learned mean ratio / (4/5), so that its mean over all steps matches the learned one
    matched = f"{max(0.01, round(min(1.0, learned.mean_ratio / 0.8), 2)):g}"
    assert rows["fixed at the same mean ratio"].spec == f"fixed:{matched}"
    assert rows["vla_cache capped at that ratio"].spec == f"vla_cache:{matched}"
    assert abs(rows["fixed at the same mean ratio"].mean_ratio - learned.mean_ratio) < 0.02
    assert {"ablation: no recovery", "ablation: one_ratio"} <= set(rows)
    for row in report.rows:
        assert 0.0 <= row.token_agreement <= 1.0 and row.all_tokens_agree <= row.token_agreement + 1e-9
        assert row.speedup_total > 0.0 and row.select_ms >= 0.0
    assert len(report.curve["learned"]) == len(report.curve["fixed"]) == 2
    saved = json.loads((tmp_path / "out" / "cache_eval.json").read_text())
    assert saved["cap"] == 0.9 and len(saved["rows"]) == len(report.rows)
    assert "| learned (cap 0.9) |" in (tmp_path / "out" / "cache_eval.md").read_text()
    assert (tmp_path / "out" / "cache_eval_curve.png").stat().st_size > 0


def test_the_no_recovery_variant_recovers_nothing(setup, tmp_path: Path) -> None:
    """With recovery probability 0.5 in the saved policy, the main rows recover tokens (reuse
    less than the cap's share) while the derived variant reuses exactly what it predicts."""
    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    policy = save_cache_policy(tmp_path / "cp_rec", CacheSelectorNet(CachePolicyConfig(
        width=4, ratios=(0.8,), recovery_probability=0.5)))
    report = run_cache_eval(_args(setup, tmp_path / "out", cache_policy=str(policy), variant=[], caps="0.8"),
                            log=lambda _: None)
    rows = {row.name: row for row in report.rows}
    # 4 of 5 steps per bag reuse (the first computes every token): 0.8 * 4/5 = 0.64 without recovery
    assert rows["ablation: no recovery"].mean_ratio == pytest.approx(0.8 * 4 / 5, abs=0.01)
    assert rows["learned (cap 0.8)"].mean_ratio < 0.5


def test_option_errors_name_what_was_wrong(setup, tmp_path: Path) -> None:
    assert parse_caps("0.9,0.3,0.3") == (0.3, 0.9)
    with pytest.raises(ConfigurationError, match="--caps must lie in"):
        parse_caps("0,0.5")
    with pytest.raises(ConfigurationError, match="--caps must be comma-separated"):
        parse_caps("half")
    assert parse_variants(["a=/x", "b=/y"]) == {"a": "/x", "b": "/y"}
    with pytest.raises(ConfigurationError, match="NAME=DIR"):
        parse_variants(["/x"])
    with pytest.raises(ConfigurationError, match="repeated or reserved"):
        parse_variants(["learned=/x"])
    with pytest.raises(ConfigurationError, match="--cache-policy none"):
        run_cache_eval(_args(setup, tmp_path, cache_policy="none"), log=lambda _: None)


def test_inputs_are_checked_before_any_work(setup, tmp_path: Path) -> None:
    """From a new user's trial: a typo in the second bag, --out naming a file, --max-frames 1 or a
    bag without an instruction were reported only after the first bags had been replayed (or, for
    --out, as a traceback after all of them)."""
    from vla_cache_ros.errors import BagError

    calls: list[str] = []

    def run(**overrides) -> None:
        run_cache_eval(_args(setup, **{"out": tmp_path / "out", **overrides}), log=calls.append)

    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigurationError, match="--out .*afile is a file"):
        run(out=tmp_path / "afile")
    with pytest.raises(BagError, match="missing_bag"):
        run(bags=[setup["bags"][0], tmp_path / "missing_bag"])
    with pytest.raises(ConfigurationError, match="--max-frames must be >= 2"):
        run(max_frames=1)
    with pytest.raises(ConfigurationError, match="--warmup 5 leaves no timed step"):
        run(warmup=5)
    with pytest.raises(ConfigurationError, match="--every must be >= 1"):
        run(every=0)
    bare = write_synthetic_bag(tmp_path / "bare", "mcap", SyntheticBagSpec(num_frames=3, height=60, width=80,
                                                                          instruction=None)).path
    with pytest.raises(ConfigurationError, match="records no instruction.*pass --instruction"):
        run(bags=[bare])
    with pytest.raises(ConfigurationError, match="--variant gone: .*nope is not a directory"):
        run(variant=[f"gone={tmp_path / 'nope'}"])
    assert calls == []  # nothing was replayed
    report = run_cache_eval(_args(setup, tmp_path / "out", bags=[bare], instruction="push the block", variant=[],
                                  caps="0.5"), log=lambda _: None)
    assert [point["cap"] for point in report.curve["learned"]] == [0.5]
    text = (tmp_path / "out" / "cache_eval.md").read_text()
    assert "1 bag (3 frames)" in text and "| 0.5 |" in text


def test_a_broken_cache_policy_is_one_error_before_any_replay(setup, tmp_path: Path) -> None:
    """The cache policy is read right after the model, before any bag is replayed."""
    from vla_cache_ros.errors import CheckpointError

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    calls: list[str] = []
    expected = re.escape(f"cache policy {tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON")
    with pytest.raises(CheckpointError, match=expected):
        run_cache_eval(_args(setup, tmp_path / "out", cache_policy=str(tmp_path / "bad"), variant=[]),
                       log=calls.append)
    assert calls == [] and not (tmp_path / "out").exists()


def test_command_line(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vla_cache_ros.apps.cli import main

    code = main(["cache-eval", *map(str, setup["bags"][:1]), "--model", str(setup["model"]), "--unnorm-key",
                 "tiny_sim", "--cache-policy", str(setup["policy"]), "--caps", "0.5", "--max-frames", "3",
                 "--threads", "1", "--out", str(tmp_path / "cli")])
    printed = capsys.readouterr().out
    assert code == 0 and "| learned (cap 0.5) |" in printed and "fixed at the same mean ratio" in printed
