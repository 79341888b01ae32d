"""The screened greedy LM head: the full float32 head's argmax through a bfloat16 screen."""
from __future__ import annotations

import pytest
import torch

from vla_cache_ros.cache.lm_head import ScreenedGreedyHead, shared_screened_head
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

HIDDEN, VOCAB = 64, 4096
INSTRUCTION = "pick up the red cube"


def random_head(seed: int = 0, hidden: int = HIDDEN) -> torch.nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(VOCAB, hidden, generator=generator))
    return head


def states(rows: int, seed: int = 1, hidden: int = HIDDEN, scale: float = 8.0) -> torch.Tensor:
    return scale * torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hidden", [64, 1024])
def test_the_screen_gives_the_full_heads_tokens_and_exact_logits_where_it_computes(hidden):
    head = random_head(hidden=hidden)
    screened = ScreenedGreedyHead(head)
    hidden_states = states(64, hidden=hidden)
    output = screened(hidden_states)
    full = head(hidden_states)
    assert output.tokens == full.argmax(dim=1).tolist()
    assert output.screened == 64 and output.recomputed < 64 * VOCAB // 50  # a few candidate rows each
    computed = torch.isfinite(output.logits)
    assert computed.sum(dim=1).min() >= 1
    torch.testing.assert_close(output.logits[computed], full[computed], rtol=2e-6, atol=1e-5)  # summation order
    assert screened.rows == screened.screened_rows == 64


def near_ties(head: torch.nn.Linear, hidden_state: torch.Tensor, gaps: list[float]) -> torch.nn.Linear:
    """Rows 10, 11, ... get logits max + gap on ``hidden_state`` (w = a h / ||h||^2 gives w . h = a)."""
    with torch.no_grad():
        best = float(head(hidden_state).max())
        for offset, gap in enumerate(gaps):
            head.weight[10 + offset] = (best + gap) * hidden_state / hidden_state.dot(hidden_state)
    return head


@pytest.mark.parametrize("gaps", [[1e-4], [-1e-4], [1e-3, 1.2e-3], [2e-6, 1e-6], [0.0]])
def test_rows_within_a_hair_of_the_maximum_are_decided_in_float32(gaps):
    """Rows built to beat, trail or tie the best row by far less than bf16 can resolve: the
    token is still the full head's (ties: the lowest index, as torch.argmax)."""
    hidden_state = states(1, seed=3)[0]
    head = near_ties(random_head(seed=2), hidden_state, gaps)
    output = ScreenedGreedyHead(head)(hidden_state[None])
    assert output.tokens == [int(head(hidden_state).argmax())]
    assert output.screened == 1 and output.recomputed >= 2  # the near-tied rows were recomputed


def test_equal_logits_everywhere_take_the_full_head():
    """A degenerate head (every row equal) leaves every row possible: the full head is used."""
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        head.weight.fill_(0.01)
    output = ScreenedGreedyHead(head)(states(2))
    assert output.tokens == [0, 0] and output.screened == 0
    assert torch.isfinite(output.logits).all()


def test_heads_the_screen_does_not_apply_to():
    with pytest.raises(ValueError, match="bias"):
        ScreenedGreedyHead(torch.nn.Linear(HIDDEN, VOCAB))
    with pytest.raises(ValueError, match="float32"):
        ScreenedGreedyHead(random_head().to(torch.bfloat16))
    assert shared_screened_head(random_head().to(torch.bfloat16)) is None
    head = random_head()
    assert shared_screened_head(head) is shared_screened_head(head)  # built once per head


@pytest.mark.parametrize("decode", ["greedy", "speculative"])
def test_the_policy_acts_identically_with_the_screened_head(tiny_model, decode):
    """Through the real policy, with reuse and with speculative drafts, the screened head gives
    the full head's tokens step by step and decides every row without the full head."""
    scene = SyntheticScene(seed=3, height=200, width=260)
    runs = {}
    for head in ("full", "screened"):
        policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim",
                                 decode=decode, lm_head=head)
        runs[head] = [policy.step(scene.frame(index), INSTRUCTION)[1].action_tokens.tolist() for index in range(4)]
        counters = policy.engine.counters
        assert counters.head_rows > 0
        if head == "full":
            assert policy.engine.screened_head is None and counters.head_screened_rows == 0
        else:
            assert counters.head_screened_rows == counters.head_rows
    assert runs["full"] == runs["screened"]


def test_an_unknown_lm_head_setting_is_refused(tiny_model):
    with pytest.raises(ConfigurationError, match="lm_head"):
        CachedVLAPolicy(tiny_model, lm_head="fast", unnorm_key="tiny_sim")


def test_the_engine_says_which_head_it_runs():
    """Logs and /diagnostics name the head: a bfloat16 model asked to screen runs the full head
    and says why."""
    from vla_cache_ros.cache.engine import KVReuseEngine
    from vla_cache_ros.models.tiny import random_model

    model = random_model("tiny")
    assert KVReuseEngine(model.language_model, screened_head=True).head_setting == "screened"
    assert KVReuseEngine(model.language_model).head_setting == "full"
    bf16 = random_model("tiny", dtype=torch.bfloat16)
    engine = KVReuseEngine(bf16.language_model, screened_head=True)
    assert engine.screened_head is None
    assert engine.head_setting == "full (bfloat16 head: the screen applies to float32 heads)"
