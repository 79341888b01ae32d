"""The certified greedy LM head: the same argmax as the full head, proven without it where it can."""
from __future__ import annotations

import copy

import pytest
import torch

from vla_cache_ros.cache.lm_head import BACKOFF_AFTER, BACKOFF_EVERY, CertifiedGreedyHead, subspace_rank
from vla_cache_ros.policy import CachedVLAPolicy, greedy_candidates
from vla_cache_ros.synthetic import SyntheticScene

HIDDEN, VOCAB = 64, 4096
LOW, HIGH = 3000, 3256
INSTRUCTION = "pick up the red cube"


def separated_head(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Linear, torch.Tensor]:
    """A head whose candidate rows lean along a direction u and the others away from it, as a
    trained VLA's action rows score high; and u (what a hidden state leaning that way gives)."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    u = torch.randn(HIDDEN, generator=generator)
    u /= u.norm()
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(VOCAB, HIDDEN, generator=generator))
        head.weight[LOW:HIGH] += 0.6 * u
        head.weight[:LOW] -= 0.4 * u
        head.weight[HIGH:] -= 0.4 * u
    return head.to(dtype), u


def hidden_states(u: torch.Tensor, rows: int, seed: int = 1, lean: float = 4.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, HIDDEN, generator=generator) + lean * u


def test_certified_rows_give_the_full_heads_tokens_and_candidate_logits():
    head, u = separated_head()
    certified = CertifiedGreedyHead(head, (LOW, HIGH))
    states = hidden_states(u, 40)
    output = certified(states)
    full = head(states)
    assert output.tokens == full.argmax(dim=1).tolist()
    assert output.certified == 40  # the bound proves every row here
    torch.testing.assert_close(output.logits[:, LOW:HIGH], full[:, LOW:HIGH], rtol=0, atol=1e-5)
    assert torch.isinf(output.logits[:, :LOW]).all() and (output.logits[:, :LOW] < 0).all()
    assert certified.rows == certified.certified_rows == 40


def test_a_row_outside_the_candidates_that_wins_is_never_missed():
    """A non-candidate row made to beat the best candidate by a hair: its token comes out."""
    head, u = separated_head()
    states = hidden_states(u, 8)
    with torch.no_grad():
        best = head(states[:1])[0, LOW:HIGH].max()
        # row 5 gets w = a * h0 / ||h0||^2, so w . h0 = a: just above the best candidate.
        head.weight[5] = (best + 1e-3) * states[0] / states[0].dot(states[0])
    certified = CertifiedGreedyHead(head, (LOW, HIGH))
    output = certified(states)
    assert output.tokens[0] == 5
    assert output.tokens == head(states).argmax(dim=1).tolist()
    assert output.certified < 8  # row 0 fell back to the full head
    torch.testing.assert_close(output.logits[0], head(states[:1])[0], rtol=0, atol=1e-5)


def test_a_row_just_below_the_best_candidate_keeps_the_candidate():
    head, u = separated_head()
    states = hidden_states(u, 4)
    with torch.no_grad():
        best = head(states[:1])[0, LOW:HIGH].max()
        head.weight[7] = (best - 1e-4) * states[0] / states[0].dot(states[0])
    output = CertifiedGreedyHead(head, (LOW, HIGH))(states)
    assert output.tokens == head(states).argmax(dim=1).tolist()
    assert LOW <= output.tokens[0] < HIGH


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_heads_give_the_same_tokens(dtype):
    head, u = separated_head(seed=3, dtype=dtype)
    states = hidden_states(u, 32, seed=4).to(dtype)
    output = CertifiedGreedyHead(head, (LOW, HIGH))(states)
    assert output.tokens == head(states).float().argmax(dim=1).tolist()
    assert output.certified > 0


def test_isotropic_weights_fall_back_and_then_back_off():
    """Random weights give the bound nothing to separate: every row takes the full head (same
    tokens), and after BACKOFF_AFTER failed calls the bound is tried once per BACKOFF_EVERY."""
    generator = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(VOCAB, HIDDEN, generator=generator))
    certified = CertifiedGreedyHead(head, (LOW, HIGH))
    calls = BACKOFF_AFTER + 3 * BACKOFF_EVERY
    for _ in range(calls):
        state = torch.randn(1, HIDDEN, generator=generator) * 8
        output = certified(state)
        assert output.tokens == head(state).argmax(dim=1).tolist()
        assert output.certified == 0
    assert certified.rows == calls and certified.certified_rows == 0
    assert certified.attempts == BACKOFF_AFTER + 3  # then one per BACKOFF_EVERY calls


def test_invalid_heads_and_ranges_are_refused():
    head, _ = separated_head()
    with pytest.raises(ValueError, match="range"):
        CertifiedGreedyHead(head, (10, 10))
    with pytest.raises(ValueError, match="range"):
        CertifiedGreedyHead(head, (0, VOCAB + 1))
    with pytest.raises(ValueError, match="rank"):
        CertifiedGreedyHead(head, (LOW, HIGH), rank=HIDDEN + 1)
    with pytest.raises(ValueError, match="bias"):
        CertifiedGreedyHead(torch.nn.Linear(HIDDEN, VOCAB), (LOW, HIGH))
    assert subspace_rank(128) == 16 and subspace_rank(4096) == 64 and subspace_rank(16) == 4


def trained_like(model, scene: SyntheticScene):
    """A copy of ``model`` whose LM head separates the action rows as a trained VLA's does: the
    action rows moved towards, every other row away from, the direction of the final hidden
    state at the prompt's last position (what predicts the first action token)."""
    model = copy.deepcopy(model)
    probe = CachedVLAPolicy(model, mode="off", unnorm_key="tiny_sim", lm_head="full")
    states = []
    for index in range(3):
        probe.step(scene.frame(index), INSTRUCTION)
        states.append(probe._previous_hidden.float())
    direction = torch.stack(states).mean(dim=0)
    direction /= direction.norm() ** 2  # w . h = 1 for h along it
    low, high = greedy_candidates(model)
    head = model.language_model.lm_head.weight
    with torch.no_grad():
        head[:low] -= 3.0 * direction
        head[high:] -= 3.0 * direction
        head[low:high] += 3.0 * direction
    return model


@pytest.mark.parametrize("decode", ["greedy", "speculative"])
def test_the_policy_acts_identically_with_the_certified_head(tiny_model, decode):
    """Through the real policy, with reuse and with speculative drafts, the certified head gives
    the full head's tokens step by step, and certifies some rows of a model that separates them."""
    scene = SyntheticScene(seed=3, height=200, width=260)
    for model in (tiny_model, trained_like(tiny_model, scene)):
        runs = {}
        for head in ("full", "certified"):
            policy = CachedVLAPolicy(model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim",
                                     decode=decode, lm_head=head)
            runs[head] = [policy.step(scene.frame(index), INSTRUCTION)[1].action_tokens.tolist()
                          for index in range(4)]
            if head == "full":
                assert policy.engine.greedy_head is None
            else:
                counters = policy.engine.counters
                assert counters.head_rows > 0
        assert runs["full"] == runs["certified"]
    assert counters.head_certified_rows > 0  # the separated copy, last run


def test_an_unknown_lm_head_setting_is_refused(tiny_model):
    from vla_cache_ros.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="lm_head"):
        CachedVLAPolicy(tiny_model, lm_head="fast", unnorm_key="tiny_sim")
