"""Sessions on one replica, without Ray: isolation, equality with local policies, /act, idle
expiry, eviction bookkeeping, refused settings."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from test.serving.conftest import UNNORM_KEY, stream
from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.serving.sessions import SessionLimits, build_replica
from vla_cache_ros.serving.wire import SessionSettings, StepRequest


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replica(tiny_model):
    clock = FakeClock()
    replica = build_replica(tiny_model, UNNORM_KEY, SessionLimits(max_sessions=4, idle_timeout_s=10.0))
    replica.clock = clock
    return replica, clock


def request(frame: np.ndarray, instruction: str, **settings) -> StepRequest:
    return StepRequest(instruction, frame, SessionSettings(**settings), reset=False)


def test_interleaved_sessions_match_their_own_local_policies(replica, tiny_model) -> None:
    """Two robots with different instructions and camera streams, steps interleaved on one
    replica: each gets exactly the actions of its own local policy, and both reuse tokens."""
    replica, _ = replica
    robots = {"a": (stream(1), "pick up the red block"), "b": (stream(2), "push the blue block left")}
    sessions = {name: replica.new_session(name) for name in robots}
    local = {name: CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key=UNNORM_KEY)
             for name in robots}
    for step in range(4):
        for name, (frames, instruction) in robots.items():
            answer = replica.step(sessions[name], request(frames[step], instruction, mode="fixed", cache_ratio=0.5))
            expected, stats = local[name].step(frames[step], instruction)
            assert answer["action"] == [float(value) for value in expected]
            assert answer["stats"]["reused_tokens"] == stats.reused_tokens
            assert answer["stats"]["reuse_indices"] == stats.reuse_indices.tolist()
            assert answer["session"]["restarted"] == ("new" if step == 0 else None)
            assert (answer["stats"]["reused_tokens"] > 0) == (step > 0)


def test_act_equals_an_uncached_local_step(replica, tiny_model) -> None:
    replica, _ = replica
    frame = stream(3)[0]
    local = CachedVLAPolicy(tiny_model, mode="off", unnorm_key=UNNORM_KEY)
    for _ in range(2):  # stateless: the same answer twice
        assert np.array_equal(replica.act(frame, "pick up the block", None), local.step(frame, "pick up the block")[0])
    with pytest.raises(InvalidInputError, match="no_such_key"):
        replica.act(frame, "pick up the block", "no_such_key")


def test_idle_session_restarts_with_a_full_recompute(replica) -> None:
    replica, clock = replica
    frames = stream(4)
    session = replica.new_session("robot")
    replica.step(session, request(frames[0], "go"))
    clock.now = 11.0
    assert replica.health()["counters"]["idle_expired"] == 1
    assert not session.holds_cache
    answer = replica.step(session, request(frames[1], "go"))
    assert answer["session"]["restarted"] == "idle" and answer["stats"]["cache_reset"]
    assert answer["stats"]["reused_tokens"] == 0


def test_eviction_is_counted_once(replica) -> None:
    """Serve's multiplexer calls ``__del__`` on the session it evicts."""
    replica, _ = replica
    session = replica.new_session("old")
    session.__del__()
    session.__del__()
    del session
    gc.collect()
    health = replica.health()
    assert health["counters"]["evictions"] == 1 and health["sessions"] == []


def test_refused_settings_leave_the_session_as_it_was(replica) -> None:
    replica, _ = replica
    frames = stream(5)
    session = replica.new_session("robot")
    replica.step(session, request(frames[0], "go", mode="fixed", cache_ratio=0.5))
    for settings, reason in [({"mode": "telepathy"}, "telepathy"), ({"cache_ratio": 2.0}, r"\[0, 1\]"),
                             ({"max_token_age": 0}, "max_token_age"),
                             ({"decode": "beam"}, "unknown decode setting"),
                             ({"mode": "off", "decode": "beam"}, "unknown decode setting"),
                             ({"mode": "off", "cache_ratio": 0.1, "max_token_age": 0}, "max_token_age")]:
        with pytest.raises(InvalidInputError, match=reason):
            replica.step(session, request(frames[1], "go", **settings))
    answer = replica.step(session, request(frames[1], "go"))
    assert answer["session"]["restarted"] is None and answer["stats"]["reused_tokens"] > 0
    assert (answer["stats"]["mode"], answer["stats"]["target_ratio"]) == ("fixed", 0.5)  # nothing half-applied
    fast = replica.step(session, request(frames[2], "go", decode="speculative"))  # the session's policy decodes
    assert fast["stats"]["decode"] == "speculative" and fast["stats"]["draft_tokens"] == 7
    assert fast["stats"]["decode_passes"] == 6 - min(6, fast["stats"]["accepted_draft_tokens"])


def test_a_cache_policy_makes_learned_available_to_every_session(tiny_model, tmp_path) -> None:
    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    plain = build_replica(tiny_model, UNNORM_KEY)
    assert "learned" not in plain.health()["modes"]
    torch.manual_seed(0)
    directory = save_cache_policy(tmp_path / "cp", CacheSelectorNet(CachePolicyConfig(width=4)))
    replica = build_replica(tiny_model, UNNORM_KEY, cache_policy=directory)
    assert "learned" in replica.health()["modes"]
    local = CachedVLAPolicy(tiny_model, mode="learned", cache_ratio=0.5, unnorm_key=UNNORM_KEY, cache_policy=directory)
    session = replica.new_session("robot")
    for frame in stream(4)[:3]:
        answer = replica.step(session, request(frame, "go", mode="learned", cache_ratio=0.5))
        assert answer["stats"]["reuse_indices"] == local.step(frame, "go")[1].reuse_indices.tolist()


def test_a_drafter_drafts_for_every_session_that_decodes_speculatively(tiny_model, tmp_path) -> None:
    """build_replica(drafter=DIR): a speculative session drafts with it from its first step, as a
    local policy with that drafter does (its previous-step draft cannot: no previous step yet);
    the actions stay the greedy ones; /health names the drafter."""
    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter
    from vla_cache_ros.errors import CheckpointError

    torch.manual_seed(0)
    directory = save_drafter(tmp_path / "drafter", DrafterNet(DrafterConfig(
        hidden_size=tiny_model.llama_config.hidden_size, num_visual=tiny_model.num_visual_tokens,
        token_offset=tiny_model.action_tokenizer.first_action_token, width=8)))
    plain = build_replica(tiny_model, UNNORM_KEY)
    replica = build_replica(tiny_model, UNNORM_KEY, drafter=directory)
    assert plain.health()["drafter"] is None and replica.health()["drafter"] == str(directory)
    local = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key=UNNORM_KEY, decode="speculative",
                            drafter=directory)
    drafted, previous, greedy = (replica.new_session("drafted"), plain.new_session("previous"),
                                 plain.new_session("greedy"))
    for step, frame in enumerate(stream(5)[:3]):
        answer = replica.step(drafted, request(frame, "go", decode="speculative"))
        expected, stats = local.step(frame, "go")
        assert answer["action"] == [float(value) for value in expected]
        assert (answer["stats"]["accepted_draft_tokens"], answer["stats"]["decode_passes"]) == (
            stats.accepted_draft_tokens, stats.decode_passes)
        assert answer["stats"]["draft_tokens"] == 7
        undrafted = plain.step(previous, request(frame, "go", decode="speculative"))
        assert undrafted["stats"]["draft_tokens"] == (0 if step == 0 else 7)
        assert answer["action"] == undrafted["action"] == plain.step(greedy, request(frame, "go"))["action"]
    (directory / "drafter.safetensors").write_bytes(b"broken")
    unreadable = f"drafter {directory / 'drafter.safetensors'}: not a readable safetensors file"
    with pytest.raises(CheckpointError, match=unreadable):
        build_replica(tiny_model, UNNORM_KEY, drafter=directory)


def test_a_replica_runs_the_lm_head_it_is_given_and_names_it(tiny_model) -> None:
    """build_replica(lm_head=...) / serve --lm-head: the shared engine's head, named in /health;
    the same actions either way."""
    from vla_cache_ros.errors import ConfigurationError

    screened, full = build_replica(tiny_model, UNNORM_KEY), build_replica(tiny_model, UNNORM_KEY, lm_head="full")
    assert screened.health()["lm_head"] == "screened" and full.health()["lm_head"] == "full"
    image = np.full((224, 224, 3), 90, np.uint8)
    np.testing.assert_array_equal(screened.act(image, "pick up the red cube", None),
                                  full.act(image, "pick up the red cube", None))
    with pytest.raises(ConfigurationError, match="lm_head"):
        build_replica(tiny_model, UNNORM_KEY, lm_head="fast")
