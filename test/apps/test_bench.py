"""The benchmark command runs end to end and reports consistent fields (timings are not asserted)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from vla_cache_ros.apps.bench import bench_model, markdown_table, run_bench
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models.tiny import random_model


def test_bench_model_on_an_in_memory_random_model():
    """The path the GPU benchmark takes (random model built in memory), here on the CPU."""
    torch.set_num_threads(1)
    model = random_model("tiny", device="cpu", dtype=torch.float32)
    report = bench_model(model, "tiny in memory", ["off", "fixed:0.5", "vla_cache"], steps=2, warmup=0,
                         unnorm_key="tiny_sim", prepack=True)
    modes = {mode["spec"]: mode for mode in report["modes"]}
    assert list(modes) == ["off", "fixed:0.5", "vla_cache"]
    assert modes["off"]["mean_reused"] == 0 and modes["off"]["speedup_total"] == 1.0
    assert modes["fixed:0.5"]["mean_reused"] == 128
    assert modes["fixed:0.5"]["prefill_flops_ratio"] < 1.0 < modes["fixed:0.5"]["implied_prefill_speedup"]
    assert modes["fixed:0.5"]["fraction_of_implied"] == pytest.approx(
        modes["fixed:0.5"]["speedup_prefill"] / modes["fixed:0.5"]["implied_prefill_speedup"])
    for mode in modes.values():
        assert set(mode["median_s"]) == {"preprocess", "vision", "select", "prefill", "decode", "total"}
        assert all(value > 0 for value in mode["median_s"].values())
    table = markdown_table(report)
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 3  # header + one row per mode
    # prepacked weights for every mode, and the plain-weight baseline timed beside them
    assert "prepacked" in report["decoder_weights"] and report["prefill_off_plain_weights_isolated_s"] > 0
    assert "uncached prefill with plain weights" in table


def test_bench_without_prepacking_reports_plain_weights():
    model = random_model("tiny", device="cpu", dtype=torch.float32)
    report = bench_model(model, "tiny", ["off", "fixed:0.5"], steps=1, warmup=0, unnorm_key="tiny_sim")
    assert "below 512" in report["decoder_weights"]  # auto leaves the narrow miniature decoder plain
    assert report["prefill_off_plain_weights_isolated_s"] is None
    assert "plain weights" not in markdown_table(report)


def test_run_bench_writes_json_and_markdown(tmp_path):
    reports = run_bench(["tiny"], "off,fixed:0.75", steps=1, warmup=0, device="cpu", dtype_name="float32",
                        threads=1, out_dir=tmp_path, unnorm_key="tiny_sim")
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved[0]["modes"][1]["spec"] == "fixed:0.75" and saved[0]["modes"][1]["mean_reused"] == 192
    assert "fixed:0.75" in (tmp_path / "bench.md").read_text()
    assert reports[0]["machine"]


def test_bench_option_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="first mode must be 'off'"):
        run_bench(["tiny"], "fixed:0.5", 1, 0, "cpu", "float32", 1, tmp_path, "tiny_sim")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA GPU"):
            run_bench(["tiny"], "off", 1, 0, "cuda", "bfloat16", None, tmp_path, "tiny_sim")


def test_bench_compares_decode_settings(tmp_path):
    """`--decode greedy,speculative` (issue 14): every mode runs both ways on the same frames; the
    speculative rows report draft acceptance and decode passes, and their tokens equal off's."""
    reports = run_bench(["tiny"], "off,fixed:0.75", steps=3, warmup=0, device="cpu", dtype_name="float32",
                        threads=1, out_dir=tmp_path, unnorm_key="tiny_sim", decodes=["greedy", "speculative"])
    modes = {mode["spec"]: mode for mode in reports[0]["modes"]}
    assert list(modes) == ["off", "off speculative", "fixed:0.75", "fixed:0.75 speculative"]
    for key in ("off speculative", "fixed:0.75 speculative"):
        assert modes[key]["action_token_agreement"] == 1.0  # exact: the greedy tokens
        passes, accepted = modes[key]["mean_decode_passes"], modes[key]["mean_accepted_draft_tokens"]
        assert 6 - accepted <= passes <= 6  # per step: 6 - min(6, accepted); 6 right -> the 7th comes free
        assert 0.0 <= modes[key]["full_draft_acceptance"] <= 1.0
    assert modes["off"]["mean_decode_passes"] == 6 and modes["off"]["mean_accepted_draft_tokens"] == 0
    assert "| off speculative |" in (tmp_path / "bench.md").read_text()
    with pytest.raises(ConfigurationError, match="start with greedy"):
        run_bench(["tiny"], "off", 1, 0, "cpu", "float32", 1, tmp_path / "refused", "tiny_sim",
                  decodes=["speculative"])
    assert not (tmp_path / "refused").exists()  # refused before any model is written
    with pytest.raises(ConfigurationError, match="unknown decode setting"):
        run_bench(["tiny"], "off", 1, 0, "cpu", "float32", 1, tmp_path, "tiny_sim", decodes=["greedy", "beam"])


def test_bench_drafts_with_a_drafter(tmp_path):
    """``--drafter``: the speculative rows draft with it (tokens still equal off's); the report
    names the draft."""
    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter

    torch.manual_seed(0)
    drafter = save_drafter(tmp_path / "drafter", DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8)))
    reports = run_bench(["tiny"], "off,fixed:0.75", steps=2, warmup=0, device="cpu", dtype_name="float32",
                        threads=1, out_dir=tmp_path / "out", unnorm_key="tiny_sim",
                        decodes=["greedy", "speculative"], drafter=str(drafter))
    assert reports[0]["draft"] == f"learned drafter {drafter}"
    assert f"speculative draft: learned drafter {drafter}" in (tmp_path / "out" / "bench.md").read_text()
    for mode in reports[0]["modes"]:
        assert mode["action_token_agreement"] == 1.0
    plain = run_bench(["tiny"], "off", steps=1, warmup=0, device="cpu", dtype_name="float32", threads=1,
                      out_dir=tmp_path / "plain", unnorm_key="tiny_sim", decodes=["greedy", "speculative"],
                      drafter="none")
    assert plain[0]["draft"] == "previous step's tokens"


def test_bench_compares_lm_head_settings(tmp_path):
    """`--lm-head full,screened`: every mode runs with both heads on the same frames, the full
    head's `off` the baseline; the screened runs' tokens equal it; the report times one row through
    each head alone and gives each run's share of screened rows. A bad setting is refused before
    any model is written."""
    report = run_bench(["tiny"], "off,fixed:0.5", steps=2, warmup=0, device="cpu", dtype_name="float32",
                       threads=1, out_dir=tmp_path, unnorm_key="tiny_sim", lm_heads=["full", "screened"])[0]
    modes = {mode["spec"]: mode for mode in report["modes"]}
    assert list(modes) == ["off", "off screened head", "fixed:0.5", "fixed:0.5 screened head"]
    assert report["lm_head"] == "full,screened"
    assert modes["off"]["head_screened"] == modes["fixed:0.5"]["head_screened"] == 0.0
    for key in ("off screened head", "fixed:0.5 screened head"):
        assert modes[key]["action_token_agreement"] == 1.0
        assert modes[key]["head_screened"] == 1.0 and modes[key]["head_recomputed"] >= 1.0
    assert set(report["lm_head_isolated_s"]) == {"full", "screened"}
    assert all(seconds > 0 for seconds in report["lm_head_isolated_s"].values())
    assert "LM head: full,screened (one row alone: full" in markdown_table(report)
    for refused in (["fast"], ["full", "full"]):
        with pytest.raises(ConfigurationError, match="lm_head|LM-head"):
            run_bench(["tiny"], "off", 1, 0, "cpu", "float32", 1, tmp_path / "refused", "tiny_sim", lm_heads=refused)
    assert not (tmp_path / "refused").exists()


def test_a_broken_cache_policy_is_one_error_before_any_measurement(tmp_path):
    """A named ``--cache-policy`` or ``--drafter`` is read before anything is written: CheckpointError
    naming the file (one line from the CLI), no model and no report in ``--out``."""
    from vla_cache_ros.errors import CheckpointError

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    expected = re.escape(f"cache policy {tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON")
    with pytest.raises(CheckpointError, match=expected):
        run_bench(["tiny"], "off,learned:0.5", steps=1, warmup=0, device="cpu", dtype_name="float32", threads=1,
                  out_dir=tmp_path / "out", unnorm_key="tiny_sim", cache_policy=str(tmp_path / "bad"))
    (tmp_path / "bad" / "drafter.json").write_text("{")
    with pytest.raises(CheckpointError, match="drafter"):
        run_bench(["tiny"], "off", steps=1, warmup=0, device="cpu", dtype_name="float32", threads=1,
                  out_dir=tmp_path / "out", unnorm_key="tiny_sim", drafter=str(tmp_path / "bad"),
                  decodes=["greedy", "speculative"])
    assert not (tmp_path / "out").exists()


def test_a_bfloat16_model_is_benchmarked_with_the_full_head_and_says_why(tmp_path):
    """The screen applies to float32 heads: on a bfloat16 model `--lm-head full,screened` runs
    each mode once, with the full head, and the report says why (it listed duplicate "screened"
    rows that ran the full head). An empty setting list names the problem."""
    model = random_model("tiny", device="cpu", dtype=torch.bfloat16)
    report = bench_model(model, "tiny bf16", ["off", "fixed:0.5"], steps=1, warmup=0, unnorm_key="tiny_sim",
                         lm_heads=["full", "screened"])
    assert [mode["spec"] for mode in report["modes"]] == ["off", "fixed:0.5"]
    assert report["lm_head"] == "full (bfloat16 head: the screen applies to float32 heads)"
    assert report["lm_head_isolated_s"] == {}
    assert "LM head: full (bfloat16 head" in markdown_table(report)
    with pytest.raises(ConfigurationError, match="no LM-head setting given"):
        run_bench(["tiny"], "off", 1, 0, "cpu", "float32", 1, tmp_path / "refused", "tiny_sim", lm_heads=[])
